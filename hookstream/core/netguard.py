"""Where hookstream may send a webhook: HTTPS only, never into private networks (SSRF defence).

Two checks use the same rule: at creation time (the API resolves the URL's host) and at connect
time (the sender's aiohttp resolver refuses private answers, so a DNS answer that changes between
the two — DNS rebinding — is still caught on the address actually connected to).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

MAX_URL_LENGTH = 2048

# Networks that are not covered by ipaddress' is_private/is_loopback/... flags on every version.
_EXTRA_BLOCKED = (
    ipaddress.ip_network("100.64.0.0/10"),  # carrier-grade NAT
    ipaddress.ip_network("192.0.0.0/24"),
    ipaddress.ip_network("198.18.0.0/15"),  # benchmarking
)


class UnsafeEndpointError(ValueError):
    """The endpoint is not allowed; the message says why and is safe to show to the user."""


def is_blocked_address(address: str) -> bool:
    """True for loopback, private, link-local (incl. 169.254.169.254), multicast, reserved and unspecified."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        # IPv4 carried inside IPv6 (mapped, 6to4, Teredo) is judged by the IPv4 address it reaches.
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is not None and is_blocked_address(str(embedded)):
            return True
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
    return (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
        or not ip.is_global
        or any(ip in net for net in _EXTRA_BLOCKED if net.version == ip.version)
    )


def check_url_shape(url: str, *, allow_http: bool) -> str:
    """Validate an endpoint URL without I/O; returns its host. Raises :class:`UnsafeEndpointError`."""
    if len(url) > MAX_URL_LENGTH:
        raise UnsafeEndpointError(f"must be at most {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UnsafeEndpointError(f"is not a valid URL ({exc})") from None
    allowed = ("https", "http") if allow_http else ("https",)
    if parts.scheme not in allowed:
        raise UnsafeEndpointError("must be an absolute https:// URL" if not allow_http
                                  else "must be an absolute http:// or https:// URL")
    if not parts.hostname:
        raise UnsafeEndpointError("must include a host")
    if parts.username is not None or parts.password is not None:
        raise UnsafeEndpointError("must not contain credentials")
    if parts.fragment:
        raise UnsafeEndpointError("must not contain a fragment")
    if port == 0:
        raise UnsafeEndpointError("must not use port 0")
    return parts.hostname


def _literal_ip(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return None


async def check_endpoint(url: str, *, allow_http: bool, allow_private_networks: bool) -> None:
    """Creation-time check: URL shape, then every address the host resolves to must be public."""
    host = check_url_shape(url, allow_http=allow_http)
    if allow_private_networks:
        return
    literal = _literal_ip(host)
    if literal is not None:
        addresses = [literal]
    else:
        if host.lower() == "localhost" or host.lower().endswith(".localhost"):
            raise UnsafeEndpointError("must not point at a private or loopback address")
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError):
            raise UnsafeEndpointError(f"host {host!r} does not resolve") from None
        addresses = [str(info[4][0]) for info in infos]
    if any(is_blocked_address(a) for a in addresses):
        raise UnsafeEndpointError("must not point at a private, loopback, link-local or reserved address")


def check_connect_host(host: str, *, allow_private_networks: bool) -> None:
    """Connect-time check for IP-literal hosts (aiohttp connects to those without a resolver)."""
    if allow_private_networks:
        return
    literal = _literal_ip(host)
    if literal is not None and is_blocked_address(literal):
        raise UnsafeEndpointError(f"refused to connect to non-public address {literal}")


class PublicOnlyResolver(AbstractResolver):
    """aiohttp resolver that fails when a hostname resolves to any non-public address.

    The connector connects only to the addresses this returns, so the check covers the address
    actually connected to, not an earlier lookup.
    """

    def __init__(self, *, allow_private_networks: bool) -> None:
        self._inner = DefaultResolver()
        self._allow_private = allow_private_networks

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        if not self._allow_private:
            for entry in results:
                if is_blocked_address(entry["host"]):
                    raise UnsafeEndpointError(
                        f"refused to connect: {host} resolves to non-public address {entry['host']}"
                    )
        return results

    async def close(self) -> None:
        await self._inner.close()
