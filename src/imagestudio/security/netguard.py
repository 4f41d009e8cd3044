"""SSRF policy: which URLs and addresses the service may fetch from.

Used for source image URLs and for provider ``api_base`` URLs. Loopback, private, link-local
(the cloud metadata address 169.254.169.254 included), multicast, reserved, unspecified and
carrier-grade NAT (100.64.0.0/10) addresses are refused, in IPv4 and IPv6 (unique-local,
link-local, site-local) and in IPv6 forms that embed an IPv4 address (``::ffff:a.b.c.d``,
NAT64 ``64:ff9b::/96``, 6to4 ``2002::/16``), unless an operator allow-lists them with
``IMAGESTUDIO_ALLOW_PRIVATE_URLS`` (hostnames, IP addresses or CIDRs).

``is_address_allowed`` is pure. ``ensure_public_url`` resolves the host and checks every
address it resolves to; a host that resolves to one public and one private address is refused.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from imagestudio.errors import SourceUnavailable, UnsafeURL

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

ALLOWED_SCHEMES = frozenset({"http", "https"})
_DEFAULT_PORTS = {"http": 80, "https": 443}
_CGNAT = ipaddress.IPv4Network("100.64.0.0/10")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


@dataclass(frozen=True, slots=True)
class AllowList:
    """A parsed allow-list: lower-case hostnames and networks (a bare IP is a /32 or /128)."""

    hosts: frozenset[str]
    networks: tuple[IPNetwork, ...]

    @classmethod
    def parse(cls, entries: Iterable[str]) -> AllowList:
        hosts: set[str] = set()
        networks: list[IPNetwork] = []
        for raw in entries:
            entry = raw.strip().strip("[]").rstrip(".").lower()
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                hosts.add(entry)
        return cls(frozenset(hosts), tuple(networks))

    def has_host(self, host: str) -> bool:
        return _normal_host(host) in self.hosts

    def has_address(self, ip: IPAddress) -> bool:
        candidates = [ip, *_embedded_ipv4(ip)]
        return any(
            c in net for c in candidates for net in self.networks if c.version == net.version
        )


def _normal_host(host: str) -> str:
    return host.strip().strip("[]").rstrip(".").lower()


def _embedded_ipv4(ip: IPAddress) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses carried inside an IPv6 address (mapped, NAT64, 6to4)."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return []
    found = [v4 for v4 in (ip.ipv4_mapped, ip.sixtofour) if v4 is not None]
    if ip in _NAT64:
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return found


def _is_special(ip: IPAddress) -> bool:
    """True for every address that is not a plain public unicast address."""
    return (
        ip.is_loopback
        or ip.is_private
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
        or (isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local)
        or (isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT)
        or not ip.is_global
    )


def _is_public(ip: IPAddress) -> bool:
    embedded = _embedded_ipv4(ip)
    if isinstance(ip, ipaddress.IPv6Address) and (ip.ipv4_mapped is not None or ip in _NAT64):
        # The IPv6 wrapper itself is "reserved"; what is reached is the IPv4 inside.
        return not any(_is_special(v4) for v4 in embedded)
    return not _is_special(ip) and not any(_is_special(v4) for v4 in embedded)


def _as_allow_list(allow_list: Sequence[str] | AllowList) -> AllowList:
    return allow_list if isinstance(allow_list, AllowList) else AllowList.parse(allow_list)


def is_address_allowed(ip: str | IPAddress, allow_list: Sequence[str] | AllowList = ()) -> bool:
    """May we connect to ``ip``? Public unicast addresses yes; others only if allow-listed."""
    try:
        address = ip if not isinstance(ip, str) else ipaddress.ip_address(ip.strip("[]"))
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
        address = ipaddress.IPv6Address(str(address).split("%", 1)[0])
    allowed = _as_allow_list(allow_list)
    return allowed.has_address(address) or _is_public(address)


def _host_and_port(url: str) -> tuple[str, int]:
    try:
        parts = urlsplit(url.strip())
        scheme = parts.scheme.lower()
        host = parts.hostname
        port = parts.port
    except ValueError as exc:
        raise UnsafeURL(f"refused URL {url!r}: malformed ({exc})") from exc
    if scheme not in ALLOWED_SCHEMES:
        raise UnsafeURL(f"refused URL {url!r}: scheme {scheme or '(none)'!r} is not http or https")
    if not host:
        raise UnsafeURL(f"refused URL {url!r}: no host")
    return _normal_host(host), port or _DEFAULT_PORTS[scheme]


async def _resolve(host: str, port: int) -> list[str]:
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise SourceUnavailable(f"cannot resolve host {host!r}: {exc}") from exc
    return [str(info[4][0]) for info in infos]


def first_refused(
    addresses: Iterable[str], allow_list: Sequence[str] | AllowList = ()
) -> str | None:
    """The first of ``addresses`` that may not be reached, or None when all may."""
    allowed = _as_allow_list(allow_list)
    return next((a for a in addresses if not is_address_allowed(a, allowed)), None)


async def ensure_public_url(url: str, allow_list: Sequence[str] | AllowList = ()) -> None:
    """Raise ``UnsafeURL`` unless ``url`` is http(s) and every address of its host is allowed.

    A hostname in the allow-list passes without resolving. A host that cannot be resolved
    raises ``SourceUnavailable`` (DNS failures are often transient).
    """
    host, port = _host_and_port(url)
    allowed = _as_allow_list(allow_list)
    if allowed.has_host(host):
        return
    try:
        addresses = [str(ipaddress.ip_address(host))]
    except ValueError:
        addresses = await _resolve(host, port)
    if not addresses:
        raise UnsafeURL(f"refused URL {url!r}: host {host!r} has no address")
    refused = first_refused(addresses, allowed)
    if refused is not None:
        raise UnsafeURL(
            f"refused URL {url!r}: host {host!r} resolves to non-public address {refused}"
            " (allow-list it with IMAGESTUDIO_ALLOW_PRIVATE_URLS)"
        )
