"""The SSRF policy as a table of addresses and URLs."""

from __future__ import annotations

import re

import pytest

from imagestudio.errors import SourceUnavailable, UnsafeURL
from imagestudio.security.netguard import (
    AllowList,
    checked_addresses,
    ensure_public_url,
    first_refused,
    is_address_allowed,
    split_port,
)

REFUSED = [
    "127.0.0.1",
    "127.8.9.10",
    "0.0.0.0",
    "10.1.2.3",
    "172.16.0.1",
    "172.31.255.254",
    "192.168.1.1",
    "169.254.169.254",  # cloud metadata
    "169.254.0.1",
    "100.64.0.1",  # carrier-grade NAT
    "100.127.255.254",
    "224.0.0.1",  # multicast
    "239.255.255.250",
    "240.0.0.1",  # reserved
    "255.255.255.255",
    "192.0.2.1",  # documentation
    "::1",
    "::",
    "fc00::1",  # unique local
    "fd12:3456::1",
    "fe80::1",  # link-local
    "fe80::1%eth0",
    "fec0::1",  # site-local
    "ff02::1",  # multicast
    "::ffff:127.0.0.1",  # IPv4-mapped
    "::ffff:169.254.169.254",
    "::ffff:10.0.0.1",
    "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
    "2002:7f00:1::",  # 6to4 of 127.0.0.1
    "::127.0.0.1",  # IPv4-compatible
    "not-an-ip",
]

ALLOWED = [
    "8.8.8.8",
    "1.1.1.1",
    "93.184.216.34",
    "100.128.0.1",  # just outside CGNAT
    "172.32.0.1",  # just outside 172.16/12
    "2606:4700:4700::1111",
    "::ffff:8.8.8.8",
]


@pytest.mark.parametrize("address", REFUSED)
def test_non_public_addresses_are_refused(address: str) -> None:
    assert not is_address_allowed(address, [])


@pytest.mark.parametrize("address", ALLOWED)
def test_public_addresses_are_allowed(address: str) -> None:
    assert is_address_allowed(address, [])


@pytest.mark.parametrize(
    ("address", "allow_list", "expected"),
    [
        ("127.0.0.1", ["127.0.0.1"], True),
        ("127.0.0.2", ["127.0.0.1"], False),
        ("10.1.2.3", ["10.0.0.0/8"], True),
        ("10.1.2.3", ["10.0.0.0/16"], False),
        ("::ffff:10.1.2.3", ["10.0.0.0/8"], True),
        ("fd00::5", ["fd00::/8"], True),
        ("::1", ["[::1]"], True),
        ("169.254.169.254", ["10.0.0.0/8", "minio.internal"], False),
        ("192.168.0.7", [" 192.168.0.0/24 ", ""], True),
    ],
)
def test_allow_list_opens_addresses_and_networks(
    address: str, allow_list: list[str], expected: bool
) -> None:
    assert is_address_allowed(address, allow_list) is expected


def test_allow_list_parses_hosts_and_networks() -> None:
    allowed = AllowList.parse(["MinIO.Internal.", "10.0.0.0/8", "::1"])
    assert allowed.hosts == frozenset({("minio.internal", None)})
    assert len(allowed.networks) == 2
    assert allowed.has_host("minio.internal")
    assert allowed.has_host("minio.internal", 9000)


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("127.0.0.2:19100", ("127.0.0.2", 19100)),
        ("[::1]:8080", ("::1", 8080)),
        ("[::1]", ("::1", None)),
        ("::1", ("::1", None)),
        ("minio.internal:9000", ("minio.internal", 9000)),
        ("10.0.0.0/8", ("10.0.0.0/8", None)),
        ("fd00::/8", ("fd00::/8", None)),
    ],
)
def test_allow_list_entries_may_carry_a_port(entry: str, expected: tuple[str, int | None]) -> None:
    assert split_port(entry) == expected


@pytest.mark.parametrize("entry", ["127.0.0.2:http", "127.0.0.2:0", "host:70000", "[::1]:x"])
def test_a_bad_port_in_the_allow_list_is_refused(entry: str) -> None:
    with pytest.raises(ValueError, match="port"):
        AllowList.parse([entry])


@pytest.mark.parametrize(
    ("address", "port", "expected"),
    [
        ("127.0.0.2", 19100, True),
        ("127.0.0.2", 19101, False),
        ("127.0.0.2", None, False),  # a port-limited entry needs the port to match
        ("127.0.0.1", 19100, False),
        ("10.1.2.3", 5, True),  # a network without a port: every port
    ],
)
def test_a_port_limited_entry_matches_that_port_only(
    address: str, port: int | None, expected: bool
) -> None:
    allowed = AllowList.parse(["127.0.0.2:19100", "10.0.0.0/8"])
    assert is_address_allowed(address, allowed, port=port) is expected


async def test_a_port_limited_host_name_matches_that_port_only() -> None:
    allowed = AllowList.parse(["localhost:19100"])
    await ensure_public_url("http://localhost:19100/v1", allowed)
    with pytest.raises(UnsafeURL, match="port 19101"):
        await ensure_public_url("http://localhost:19101/v1", allowed)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://example.com/a.png", "scheme 'ftp'"),
        ("file:///etc/passwd", "scheme 'file'"),
        ("data:image/png;base64,AAAA", "scheme 'data'"),
        ("gopher://127.0.0.1:6379/_x", "scheme 'gopher'"),
        ("//example.com/a.png", "scheme '(none)'"),
        ("http:///a.png", "no host"),
        ("http://example.com:99999/", "malformed"),
        ("http://127.0.0.1/a.png", "127.0.0.1"),
        ("http://[::1]:8080/a.png", "::1"),
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254"),
        ("https://[::ffff:7f00:1]/x", "::ffff:7f00:1"),
        ("http://localhost/a.png", "localhost"),
        ("http://2130706433/a.png", "127.0.0.1"),  # decimal form of 127.0.0.1
    ],
)
async def test_unsafe_urls_are_refused_with_the_reason(url: str, reason: str) -> None:
    with pytest.raises(UnsafeURL, match=re.escape(reason)):
        await ensure_public_url(url, [])


@pytest.mark.parametrize(
    ("url", "allow_list"),
    [
        ("http://127.0.0.1:9000/a.png", ["127.0.0.1"]),
        ("http://127.0.0.1/a.png", ["127.0.0.0/8"]),
        ("https://localhost/a.png", ["LOCALHOST"]),
        ("http://[::1]/a.png", ["::1"]),
        ("HTTPS://8.8.8.8/a.png", []),
    ],
)
async def test_allowed_urls_pass(url: str, allow_list: list[str]) -> None:
    await ensure_public_url(url, allow_list)


@pytest.mark.parametrize(
    ("addresses", "allow_list", "expected"),
    [
        (["8.8.8.8", "1.1.1.1"], [], None),
        (["8.8.8.8", "10.0.0.1"], [], "10.0.0.1"),  # one private answer is enough to refuse
        (["8.8.8.8", "10.0.0.1"], ["10.0.0.0/8"], None),
        (["127.0.0.1", "::1"], ["127.0.0.1"], "::1"),
        ([], [], None),
    ],
)
def test_every_resolved_address_is_checked(
    addresses: list[str], allow_list: list[str], expected: str | None
) -> None:
    assert first_refused(addresses, allow_list) == expected


async def test_a_resolved_hostname_is_checked() -> None:
    with pytest.raises(UnsafeURL, match=r"resolves to .*, a non-public address"):
        await ensure_public_url("http://localhost/", ["10.0.0.0/8"])
    await ensure_public_url("http://localhost/", ["127.0.0.0/8", "::1"])


async def test_unresolvable_host_is_unavailable() -> None:
    with pytest.raises(SourceUnavailable, match="cannot resolve"):
        await ensure_public_url("http://no-such-host.invalid/a.png", [])


class Resolver:
    """A resolver that answers from a table and logs what it was asked."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.asked: list[str] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.asked.append(host)
        return self.table.get(host, [])


@pytest.mark.parametrize(
    ("host", "port", "allow", "table", "expected"),
    [
        ("cdn.test", 443, [], {"cdn.test": ["8.8.8.8", "1.1.1.1"]}, ["8.8.8.8", "1.1.1.1"]),
        ("8.8.8.8", 80, [], {}, ["8.8.8.8"]),  # a literal is not resolved
        ("127.0.0.2", 19100, ["127.0.0.2:19100"], {}, ["127.0.0.2"]),
        ("minio.test", 9000, ["minio.test:9000"], {"minio.test": ["10.0.0.5"]}, ["10.0.0.5"]),
        ("MinIO.Test.", 9000, ["minio.test"], {"minio.test": ["10.0.0.5"]}, ["10.0.0.5"]),
    ],
)
async def test_checked_addresses_are_what_a_connection_may_use(
    host: str, port: int, allow: list[str], table: dict[str, list[str]], expected: list[str]
) -> None:
    resolver = Resolver(table)
    assert await checked_addresses(host, port, allow, resolver) == expected
    assert resolver.asked == ([] if not table else [host.lower().rstrip(".")])


@pytest.mark.parametrize(
    ("host", "port", "allow", "table", "reason"),
    [
        ("cdn.test", 443, [], {"cdn.test": ["8.8.8.8", "10.0.0.1"]}, "resolves to 10.0.0.1"),
        ("minio.test", 9001, ["minio.test:9000"], {"minio.test": ["10.0.0.5"]}, "port 9001"),
        ("127.0.0.2", 19101, ["127.0.0.2:19100"], {}, "'127.0.0.2' (port 19101): it is a"),
        ("void.test", 80, [], {}, "has no address"),
        ("::1", 80, [], {}, "'::1'"),
    ],
)
async def test_checked_addresses_refuse_with_the_reason(
    host: str, port: int, allow: list[str], table: dict[str, list[str]], reason: str
) -> None:
    with pytest.raises(UnsafeURL, match=re.escape(reason)):
        await checked_addresses(host, port, allow, Resolver(table))
