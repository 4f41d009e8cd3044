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
from collections.abc import Awaitable, Callable, Iterable, Sequence
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
    """A parsed allow-list: lower-case hostnames and networks (a bare IP is a /32 or /128),
    each with the one port it is limited to, or None for every port.

    Entries: ``name``, ``name:PORT``, ``1.2.3.4``, ``1.2.3.4:PORT``, ``10.0.0.0/8``, ``::1``,
    ``[::1]:PORT``, ``fd00::/8``. An entry with a port matches only a connection to that port.
    """

    hosts: frozenset[tuple[str, int | None]]
    networks: tuple[tuple[IPNetwork, int | None], ...]

    @classmethod
    def parse(cls, entries: Iterable[str]) -> AllowList:
        hosts: set[tuple[str, int | None]] = set()
        networks: list[tuple[IPNetwork, int | None]] = []
        for raw in entries:
            entry, port = split_port(raw.strip())
            entry = _normal_host(entry)
            if not entry:
                continue
            try:
                networks.append((ipaddress.ip_network(entry, strict=False), port))
            except ValueError:
                hosts.add((entry, port))
        return cls(frozenset(hosts), tuple(networks))

    def has_host(self, host: str, port: int | None = None) -> bool:
        name = _normal_host(host)
        return (name, None) in self.hosts or (port is not None and (name, port) in self.hosts)

    def has_address(self, ip: IPAddress, port: int | None = None) -> bool:
        candidates = [ip, *_embedded_ipv4(ip)]
        return any(
            c in net
            for c in candidates
            for net, only in self.networks
            if c.version == net.version and (only is None or only == port)
        )


def split_port(entry: str) -> tuple[str, int | None]:
    """``("127.0.0.2", 19100)`` for ``127.0.0.2:19100``; ``[::1]:80`` and ``name:80`` too.
    An entry without a port (a name, an IPv4 or IPv6 address, a CIDR) comes back as it is.
    A port that is not a number from 1 to 65535 raises ``ValueError`` naming the entry."""
    if entry.startswith("["):
        inside, _, rest = entry[1:].partition("]")
        if not rest:
            return inside, None
        text = rest.removeprefix(":")
    elif entry.count(":") == 1:
        inside, _, text = entry.partition(":")
    else:
        return entry, None
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ValueError(f"allow-list entry {entry!r}: port {text!r} is not a number 1-65535")
    return inside, int(text)


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


def is_address_allowed(
    ip: str | IPAddress, allow_list: Sequence[str] | AllowList = (), *, port: int | None = None
) -> bool:
    """May we connect to ``ip`` (on ``port``)? Public unicast addresses yes; others only if
    allow-listed (for that port, when the entry names one)."""
    try:
        address = ip if not isinstance(ip, str) else ipaddress.ip_address(ip.strip("[]"))
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
        address = ipaddress.IPv6Address(str(address).split("%", 1)[0])
    allowed = _as_allow_list(allow_list)
    return allowed.has_address(address, port) or _is_public(address)


def host_and_port(url: str) -> tuple[str, int]:
    """The normalized host and the port (the scheme's default when absent) of an http(s) URL,
    or ``UnsafeURL`` for another scheme, no host or a malformed URL."""
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


Resolver = Callable[[str, int], Awaitable[Sequence[str]]]
"""Resolves ``(host, port)`` to addresses; injectable so tests control DNS (rebinding)."""


async def system_resolve(host: str, port: int) -> list[str]:
    """The addresses the system resolver gives for ``host`` (``SourceUnavailable`` if none)."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise SourceUnavailable(f"cannot resolve host {host!r}: {exc}") from exc
    return [str(info[4][0]) for info in infos]


def first_refused(
    addresses: Iterable[str], allow_list: Sequence[str] | AllowList = (), *, port: int | None = None
) -> str | None:
    """The first of ``addresses`` that may not be reached (on ``port``), or None when all may."""
    allowed = _as_allow_list(allow_list)
    return next((a for a in addresses if not is_address_allowed(a, allowed, port=port)), None)


def _literal(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None


async def checked_addresses(
    host: str,
    port: int,
    allow_list: Sequence[str] | AllowList = (),
    resolver: Resolver = system_resolve,
) -> list[str]:
    """The addresses of ``host`` that a connection to ``port`` may use, resolved once.

    Every address is checked and one refused address refuses the host (``UnsafeURL``): a name
    that resolves to a public and a private address is not trusted with either. A host name in
    the allow-list (for this port) takes whatever it resolves to. The caller connects to these
    addresses, never to the name, so a second answer from DNS cannot change where it goes.
    """
    host = _normal_host(host)
    allowed = _as_allow_list(allow_list)
    literal = _literal(host)
    addresses = [literal] if literal is not None else list(await resolver(host, port))
    if not addresses:
        raise UnsafeURL(f"refused host {host!r}: it has no address")
    if literal is None and allowed.has_host(host, port):
        return addresses
    refused = first_refused(addresses, allowed, port=port)
    if refused is not None:
        what = "is a" if literal is not None else f"resolves to {refused}, a"
        raise UnsafeURL(
            f"refused host {host!r} (port {port}): it {what} non-public address"
            " (allow-list it with IMAGESTUDIO_ALLOW_PRIVATE_URLS)"
        )
    return addresses


async def ensure_public_url(
    url: str, allow_list: Sequence[str] | AllowList = (), resolver: Resolver = system_resolve
) -> None:
    """Raise ``UnsafeURL`` unless ``url`` is http(s) and every address of its host is allowed.

    A hostname in the allow-list passes (its port too, when the entry names one). A host that
    cannot be resolved raises ``SourceUnavailable`` (DNS failures are often transient). This
    is the check at submission; the connection itself is checked again by ``security.http``.
    """
    host, port = host_and_port(url)
    try:
        await checked_addresses(host, port, allow_list, resolver)
    except UnsafeURL as exc:
        raise UnsafeURL(f"refused URL {url!r}: {exc.message.removeprefix('refused ')}") from None
