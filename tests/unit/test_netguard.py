"""SSRF defence: which addresses are blocked, URL shape, creation-time and connect-time checks.

No network: every host below is an IP literal or ``localhost`` (refused before any lookup).
"""

from __future__ import annotations

import pytest

from hookstream.core.netguard import (
    MAX_URL_LENGTH,
    UnsafeEndpointError,
    check_connect_host,
    check_endpoint,
    check_url_shape,
    is_blocked_address,
)

BLOCKED = [
    "127.0.0.1",
    "127.255.255.254",
    "127.1.2.3",
    "::1",
    "10.0.0.1",
    "10.255.255.255",
    "172.16.0.1",
    "172.31.255.255",
    "192.168.0.1",
    "192.168.255.255",
    "169.254.169.254",
    "169.254.0.1",
    "fc00::1",
    "fd12:3456:789a::1",
    "fe80::1",
    "fe80::1%eth0",
    "febf::1",
    "0.0.0.0",
    "::",
    "224.0.0.1",
    "239.255.255.250",
    "ff02::1",
    "ff05::1:3",
    "::ffff:10.0.0.1",
    "::ffff:127.0.0.1",
    "::ffff:169.254.169.254",
    "100.64.0.1",  # carrier-grade NAT
    "198.18.0.1",  # benchmarking
    "192.0.0.8",
    "192.0.2.1",  # TEST-NET-1
    "240.0.0.1",  # reserved
    "255.255.255.255",
    "2001:db8::1",  # documentation
]

ALLOWED = [
    "8.8.8.8",
    "1.1.1.1",
    "93.184.216.34",
    "172.15.255.255",  # just below 172.16/12
    "172.32.0.1",  # just above 172.16/12
    "11.0.0.1",
    "2606:4700:4700::1111",
    "2001:4860:4860::8888",
    "::ffff:8.8.8.8",
]


@pytest.mark.parametrize("address", BLOCKED)
def test_non_public_addresses_are_blocked(address: str) -> None:
    assert is_blocked_address(address) is True


@pytest.mark.parametrize("address", ALLOWED)
def test_public_addresses_are_allowed(address: str) -> None:
    assert is_blocked_address(address) is False


def test_is_blocked_address_refuses_non_addresses() -> None:
    with pytest.raises(ValueError):
        is_blocked_address("example.com")


# --------------------------------------------------------------------------------------- URL shape


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("https://example.com/hook", "example.com"),
        ("https://Example.COM:8443/a?b=c", "example.com"),
        ("HTTPS://example.com", "example.com"),
        ("https://[2606:4700::1111]/x", "2606:4700::1111"),
        ("https://93.184.216.34", "93.184.216.34"),
    ],
)
def test_check_url_shape_accepts_https_and_returns_the_host(url: str, host: str) -> None:
    assert check_url_shape(url, allow_http=False) == host


def test_http_refused_unless_allowed() -> None:
    with pytest.raises(UnsafeEndpointError, match="https"):
        check_url_shape("http://example.com/hook", allow_http=False)
    assert check_url_shape("http://example.com/hook", allow_http=True) == "example.com"


@pytest.mark.parametrize("allow_http", [False, True])
@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/x",
        "file:///etc/passwd",
        "example.com/hook",
        "//example.com/hook",
        "javascript:alert(1)",
        "",
    ],
)
def test_other_schemes_and_relative_urls_refused(url: str, allow_http: bool) -> None:
    with pytest.raises(UnsafeEndpointError):
        check_url_shape(url, allow_http=allow_http)


@pytest.mark.parametrize(
    "url",
    ["https://user:pass@example.com/", "https://user@example.com/", "https://:pass@example.com/"],
)
def test_credentials_refused(url: str) -> None:
    with pytest.raises(UnsafeEndpointError, match="credentials"):
        check_url_shape(url, allow_http=False)


@pytest.mark.parametrize("url", ["https:///path", "https://", "https:example.com", "https://:443/"])
def test_missing_host_refused(url: str) -> None:
    with pytest.raises(UnsafeEndpointError, match="host"):
        check_url_shape(url, allow_http=False)


def test_fragment_refused() -> None:
    with pytest.raises(UnsafeEndpointError, match="fragment"):
        check_url_shape("https://example.com/hook#part", allow_http=False)


def test_length_limit() -> None:
    prefix = "https://example.com/"
    at_limit = prefix + "a" * (MAX_URL_LENGTH - len(prefix))
    assert len(at_limit) == 2048
    assert check_url_shape(at_limit, allow_http=False) == "example.com"
    with pytest.raises(UnsafeEndpointError, match="2048"):
        check_url_shape(at_limit + "a", allow_http=False)


@pytest.mark.parametrize("url", ["https://example.com:99999/", "https://example.com:abc/", "https://[::1/"])
def test_invalid_urls_refused(url: str) -> None:
    with pytest.raises(UnsafeEndpointError):
        check_url_shape(url, allow_http=False)


def test_port_zero_refused() -> None:
    with pytest.raises(UnsafeEndpointError, match="port 0"):
        check_url_shape("https://example.com:0/", allow_http=False)


def test_unsafe_endpoint_error_is_a_value_error() -> None:
    assert issubclass(UnsafeEndpointError, ValueError)


# ------------------------------------------------------------------------------ creation-time check

PRIVATE_URLS = [
    "https://127.0.0.1",
    "https://127.0.0.1:8443/hook",
    "https://[::1]",
    "https://[::1]:443/x",
    "https://10.0.0.1",
    "https://169.254.169.254/latest",
    "https://169.254.169.254/latest/meta-data/",
    "https://[::ffff:10.0.0.1]/",
    "https://[fe80::1]/",
    "https://0.0.0.0/",
    "https://localhost",
    "https://localhost:8443/hook",
    "https://LOCALHOST/",
    "https://api.localhost/",
]


@pytest.mark.parametrize("url", PRIVATE_URLS)
async def test_check_endpoint_refuses_private_targets(url: str) -> None:
    with pytest.raises(UnsafeEndpointError):
        await check_endpoint(url, allow_http=False, allow_private_networks=False)


@pytest.mark.parametrize("url", PRIVATE_URLS)
async def test_check_endpoint_accepts_private_targets_when_allowed(url: str) -> None:
    assert await check_endpoint(url, allow_http=False, allow_private_networks=True) is None


@pytest.mark.parametrize("url", ["https://93.184.216.34/hook", "https://[2606:4700:4700::1111]/hook"])
async def test_check_endpoint_accepts_public_literals(url: str) -> None:
    assert await check_endpoint(url, allow_http=False, allow_private_networks=False) is None


async def test_check_endpoint_checks_shape_even_when_private_networks_allowed() -> None:
    with pytest.raises(UnsafeEndpointError, match="https"):
        await check_endpoint("http://127.0.0.1/", allow_http=False, allow_private_networks=True)
    assert await check_endpoint("http://127.0.0.1/", allow_http=True, allow_private_networks=True) is None


async def test_check_endpoint_http_private_refused_for_address_not_scheme() -> None:
    with pytest.raises(UnsafeEndpointError, match="private"):
        await check_endpoint("http://10.1.2.3/", allow_http=True, allow_private_networks=False)


# -------------------------------------------------------------------------------- connect-time check


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "::1", "[::1]", "10.0.0.1", "169.254.169.254", "::ffff:10.0.0.1"]
)
def test_check_connect_host_refuses_private_literals(host: str) -> None:
    with pytest.raises(UnsafeEndpointError, match="non-public"):
        check_connect_host(host, allow_private_networks=False)


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "10.0.0.1"])
def test_check_connect_host_allows_private_literals_when_allowed(host: str) -> None:
    assert check_connect_host(host, allow_private_networks=True) is None


@pytest.mark.parametrize("host", ["8.8.8.8", "2606:4700:4700::1111", "example.com", ""])
def test_check_connect_host_passes_public_literals_and_names(host: str) -> None:
    # Hostnames are left to the resolver (PublicOnlyResolver) which checks the resolved addresses.
    assert check_connect_host(host, allow_private_networks=False) is None
