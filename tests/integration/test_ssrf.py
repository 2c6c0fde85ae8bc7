"""SSRF (issue 7, Security): private, loopback, link-local and metadata addresses are refused by
default, at creation time (``check_endpoint``) and at connect time (``check_connect_host`` for IP
literals, ``PublicOnlyResolver`` for names), including a DNS answer that changes in between
(rebinding) and a redirect (redirects are never followed).

"Nothing reached the receiver" is proved without sleeping: after the refused attempt, a control
request is sent to the same listener with private networks allowed; once the control request has
arrived, any earlier connection would have been accepted before it (the accept queue is FIFO).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

import hookstream.sender.http as sender_http
from hookstream.core.model import Failed, Succeeded
from hookstream.core.netguard import PublicOnlyResolver, UnsafeEndpointError, check_endpoint
from hookstream.sender.http import make_session
from tests.integration.test_hostile_endpoints import RawServer, answer_ok, attempt
from tests.support import wait_for

PUBLIC_IP = "93.184.215.14"  # a global unicast address; never connected to in these tests


@pytest.fixture
async def guarded() -> AsyncIterator[aiohttp.ClientSession]:
    """The production default: private networks not allowed."""
    async with make_session(allow_private_networks=False) as s:
        yield s


@pytest.fixture
async def open_session() -> AsyncIterator[aiohttp.ClientSession]:
    async with make_session(allow_private_networks=True) as s:
        yield s


@pytest.fixture
async def receiver() -> AsyncIterator[RawServer]:
    async with RawServer(answer_ok) as server:
        yield server


async def assert_nothing_reached(server: RawServer, open_session: aiohttp.ClientSession) -> None:
    """Only the control request (sent now, private networks allowed) ever reached ``server``."""
    result, _ = await attempt(open_session, server.url("/control"), allow_private_networks=True)
    assert isinstance(result, Succeeded), result
    await wait_for(lambda: server.requests, timeout_s=5, message="the control request")
    assert server.connections == 1, f"{server.connections - 1} refused attempt(s) still connected"
    assert [r.path for r in server.requests] == ["/control"]


def assert_refused(result: Succeeded | Failed) -> Failed:
    assert isinstance(result, Failed), result
    assert result.error.startswith("unsafe endpoint"), result.error
    assert result.sent is False and result.retryable is False and result.http_status is None
    return result


def addrinfo(address: str, port: int = 0) -> tuple:
    if ":" in address:
        return (socket.AF_INET6, socket.SOCK_STREAM, 6, "", (address, port, 0, 0))
    return (socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))


class FakeDns:
    """Replaces the running loop's ``getaddrinfo`` for names under ``.hookstream.test``.

    Both the creation-time check (``loop.getaddrinfo``) and the connect-time resolver (aiohttp's
    ThreadedResolver, which calls ``loop.getaddrinfo``) see these answers; each name has a list of
    answers, one per lookup (the last one repeats), so an answer can change between lookups.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch, answers: dict[str, list[list[str]]]) -> None:
        self.answers = answers
        self.lookups: list[str] = []
        loop = asyncio.get_running_loop()
        self._real = loop.getaddrinfo
        monkeypatch.setattr(loop, "getaddrinfo", self.getaddrinfo)

    async def getaddrinfo(self, host: Any, port: Any, *args: Any, **kwargs: Any) -> list[tuple]:
        name = host.decode() if isinstance(host, bytes) else str(host)
        if name.rstrip(".").endswith(".hookstream.test"):
            self.lookups.append(name)
            script = self.answers[name]
            addresses = script.pop(0) if len(script) > 1 else script[0]
            return [addrinfo(a, int(port or 0)) for a in addresses]
        return await self._real(host, port, *args, **kwargs)


# --- creation time -------------------------------------------------------------------------------


@pytest.mark.parametrize("url", [
    "https://127.0.0.1/",
    "https://127.9.9.9/",
    "https://[::1]/",
    "https://10.0.0.1/",
    "https://172.16.0.1/",
    "https://172.31.255.254/",
    "https://192.168.1.1/",
    "https://169.254.169.254/latest/meta-data",
    "https://[fc00::1]/",
    "https://[fd00:ec2::254]/",  # the AWS IPv6 metadata endpoint
    "https://[fe80::1]/",
    "https://[::ffff:127.0.0.1]/",
    "https://[::ffff:169.254.169.254]/",
    "https://0.0.0.0/",
    "https://[::]/",
    "https://100.64.0.1/",
    "https://localhost/",
    "https://LOCALHOST:8443/",
    "https://api.localhost/",
    "https://2130706433/",  # 127.0.0.1 in decimal: not a literal to ipaddress, but resolves to loopback
    "https://127.1/",
    "https://0x7f.0.0.1/",
])
async def test_check_endpoint_refuses_private_targets(url: str) -> None:
    with pytest.raises(UnsafeEndpointError):
        await check_endpoint(url, allow_http=False, allow_private_networks=False)


@pytest.mark.parametrize("answer", [
    ["127.0.0.1"],
    ["::1"],
    ["10.1.2.3"],
    ["169.254.169.254"],
    ["::ffff:10.0.0.1"],
    ["fc00::5"],
    [PUBLIC_IP, "192.168.0.10"],  # one private answer among public ones is enough to refuse
])
async def test_check_endpoint_refuses_names_resolving_to_private_addresses(monkeypatch, answer) -> None:
    FakeDns(monkeypatch, {"internal.hookstream.test": [answer]})
    with pytest.raises(UnsafeEndpointError):
        await check_endpoint("https://internal.hookstream.test/hook", allow_http=False, allow_private_networks=False)


async def test_check_endpoint_accepts_a_name_resolving_to_a_public_address(monkeypatch) -> None:
    """The control for the test above: the fake resolution is what decides."""
    dns = FakeDns(monkeypatch, {"public.hookstream.test": [[PUBLIC_IP]]})
    await check_endpoint("https://public.hookstream.test/hook", allow_http=False, allow_private_networks=False)
    assert dns.lookups == ["public.hookstream.test"]


# --- connect time: IP literals and names -------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "[::ffff:127.0.0.1]"])
async def test_post_to_a_private_literal_is_refused_before_connecting(guarded, open_session, receiver, host) -> None:
    result, elapsed = await attempt(guarded, receiver.url("/hook", host=host), allow_private_networks=False)
    failed = assert_refused(result)
    assert "non-public address" in failed.error
    assert elapsed < 1.0
    await assert_nothing_reached(receiver, open_session)


@pytest.mark.parametrize("host", ["localhost", "0x7f000001"])
async def test_post_to_a_name_resolving_to_loopback_is_refused_by_the_resolver(guarded, open_session, receiver,
                                                                                host) -> None:
    result, _ = await attempt(guarded, receiver.url("/hook", host=host), allow_private_networks=False)
    failed = assert_refused(result)
    assert "resolves to non-public address" in failed.error, failed.error
    await assert_nothing_reached(receiver, open_session)


@pytest.mark.parametrize("host", ["2130706433", "127.1"])
async def test_post_to_a_non_canonical_loopback_literal_never_connects(guarded, open_session, receiver, host) -> None:
    """yarl refuses these spellings before any lookup ("not a canonical IPv4 address"); whatever
    refuses them, nothing may reach the loopback listener. (check_endpoint refuses them at creation.)"""
    result, _ = await attempt(guarded, receiver.url("/hook", host=host), allow_private_networks=False)
    assert isinstance(result, Failed), result
    await assert_nothing_reached(receiver, open_session)


async def test_private_literal_is_reachable_when_private_networks_are_allowed(open_session, receiver) -> None:
    """The control: the refusals above come from the guard, not from a broken receiver."""
    result, _ = await attempt(open_session, receiver.url("/hook"), allow_private_networks=True)
    assert isinstance(result, Succeeded) and (result.http_status, result.response_excerpt) == (200, "ok")
    assert [r.path for r in receiver.requests] == ["/hook"]


# --- DNS rebinding -----------------------------------------------------------------------------------


@pytest.mark.parametrize("second_answer", [["127.0.0.1"], [PUBLIC_IP, "127.0.0.1"]],
                         ids=["private", "public-and-private"])
async def test_dns_rebinding_between_creation_and_connect_is_refused(monkeypatch, guarded, open_session, receiver,
                                                                     second_answer) -> None:
    name = "rebind.hookstream.test"
    dns = FakeDns(monkeypatch, {name: [[PUBLIC_IP], second_answer]})
    url = receiver.url("/hook", host=name)

    await check_endpoint(url, allow_http=True, allow_private_networks=False)  # passes: public at creation
    result, _ = await attempt(guarded, url, allow_private_networks=False)

    failed = assert_refused(result)
    assert "127.0.0.1" in failed.error
    assert dns.lookups == [name, name], "the connect-time lookup must be a fresh one, checked again"
    await assert_nothing_reached(receiver, open_session)


async def test_rebinding_through_the_resolver_itself_is_refused(monkeypatch, guarded, open_session,
                                                                receiver) -> None:
    """The inner resolver answers public, then loopback: every answer is checked, none is trusted."""
    answers = iter([PUBLIC_IP, "127.0.0.1"])

    class RebindingResolver:
        async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET) -> list[dict[str, Any]]:
            return [{"hostname": host, "host": next(answers), "port": port, "family": socket.AF_INET,
                     "proto": 0, "flags": socket.AI_NUMERICHOST}]

        async def close(self) -> None:
            return None

    resolver = guarded.connector._resolver
    assert isinstance(resolver, PublicOnlyResolver)
    monkeypatch.setattr(resolver, "_inner", RebindingResolver())

    first = await resolver.resolve("rebind2.hookstream.test", 443, socket.AF_UNSPEC)
    assert [r["host"] for r in first] == [PUBLIC_IP]
    result, _ = await attempt(guarded, receiver.url("/hook", host="rebind2.hookstream.test"),
                              allow_private_networks=False)
    assert_refused(result)
    await assert_nothing_reached(receiver, open_session)


# --- redirects to private addresses ------------------------------------------------------------------


class _PretendPublicResolver(PublicOnlyResolver):
    """Resolves ``redirector.hookstream.test`` to the local redirector *as if* it were public,
    so a guarded session can reach it; every other name goes through the real public-only check."""

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET) -> list[dict[str, Any]]:
        if host == "redirector.hookstream.test":
            return [{"hostname": host, "host": "127.0.0.1", "port": port, "family": socket.AF_INET,
                     "proto": 0, "flags": socket.AI_NUMERICHOST}]
        return await super().resolve(host, port, family)


@pytest.mark.parametrize("target", ["http://127.0.0.1:{port}/latest/meta-data", "http://localhost:{port}/admin",
                                    "http://[::ffff:127.0.0.1]:{port}/"])
async def test_redirect_to_a_private_address_is_never_followed(monkeypatch, open_session, receiver, target) -> None:
    location = target.format(port=receiver.port)

    async def redirect(_reader, writer) -> None:
        writer.write(b"HTTP/1.1 302 Found\r\nLocation: " + location.encode()
                     + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()

    monkeypatch.setattr(sender_http, "PublicOnlyResolver", _PretendPublicResolver)
    async with RawServer(redirect) as redirector, make_session(allow_private_networks=False) as guarded:
        result, _ = await attempt(guarded, f"http://redirector.hookstream.test:{redirector.port}/hook",
                                  allow_private_networks=False)
        assert [r.path for r in redirector.requests] == ["/hook"]  # the "public" endpoint was reached
    assert isinstance(result, Failed), result
    assert result.http_status == 302
    assert result.error == "HTTP 302 (redirects are not followed)"
    await assert_nothing_reached(receiver, open_session)
