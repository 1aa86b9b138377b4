"""Which network addresses a webhook may reach. Pure.

Only global unicast addresses, unless the operator allows a range (the local stack allows
loopback). IPv6 forms that carry an IPv4 address (mapped ::ffff:a.b.c.d, NAT64 64:ff9b::/96,
6to4 2002::/16) are judged by the IPv4 address inside, so 127.0.0.1 cannot hide in one.
Decimal and octal spellings (http://2130706433/) are not parsed here: they only exist after
the resolver reads them, and the resolver's answers are what is checked."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from urllib.parse import quote, urlsplit

from yarl import URL

IP = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_6TO4 = ipaddress.ip_network("2002::/16")
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)")
_STRAY_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_URL_SAFE = "!$&'()*+,;=:@/?~-._%"


class Refused(Exception):
    """A URL or an address that webhooks may not reach; the message says why, without
    anything secret (a URL's query can hold a receiver's token: it is never echoed)."""


def parse_networks(text: str) -> tuple[Network, ...]:
    """`127.0.0.0/8,::1/128` -> networks; empty text -> none."""
    try:
        return tuple(ipaddress.ip_network(part.strip(), strict=False)
                     for part in text.split(",") if part.strip())
    except ValueError as exc:
        raise ValueError(f"invalid CIDR list: {exc}") from None


def embedded_ipv4(ip: IP) -> ipaddress.IPv4Address | None:
    if isinstance(ip, ipaddress.IPv4Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip in _6TO4:
        return ip.sixtofour
    return None


def why_refused(ip: IP, allowed: Iterable[Network] = ()) -> str | None:
    """None when a webhook may connect to `ip`, else the reason."""
    for net in allowed:
        if ip.version == net.version and ip in net:
            return None
    inner = embedded_ipv4(ip)
    if inner is not None:
        reason = why_refused(inner, allowed)
        return None if reason is None else f"{reason} (inside an IPv6 address)"
    if ip.is_loopback:
        return "loopback address"
    if ip.is_link_local:
        return "link-local address (cloud metadata lives here)"
    if isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local:
        # fec0::/10: deprecated (RFC 3879), but still routed inside some networks;
        # Python counts it as global
        return "site-local address"
    if isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT:
        return "shared address space (CGNAT)"
    if ip.is_private:
        return "private network address"
    if ip.is_multicast or ip.is_unspecified or ip.is_reserved or not ip.is_global:
        return "not a public unicast address"
    return None


def check_url(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of an acceptable webhook URL, else Refused. The host is
    checked later, by what it resolves to; a name is given in its ASCII (IDNA) form."""
    parsed = _parse(url)
    return parsed.scheme, parsed.raw_host or "", parsed.port or 0


def normalised_url(url: str) -> str:
    """The URL as it goes on the wire: the host in IDNA form, the path and query
    percent-encoded, so that what is accepted at registration is what every attempt
    sends. Escapes already there are kept as written (a token's %2F stays %2F). Refused
    when it cannot be a webhook URL."""
    parsed = _parse(url)
    host = parsed.raw_host or ""
    shown = f"[{host}]" if ":" in host else host
    port = "" if parsed.is_default_port() else f":{parsed.port}"
    raw = urlsplit(url)
    query = f"?{_escaped(raw.query)}" if raw.query or url.endswith("?") else ""
    return f"{parsed.scheme}://{shown}{port}{_escaped(raw.path) or '/'}{query}"


def _escaped(text: str) -> str:
    """Percent-encoded where RFC 3986 asks (non-ASCII as UTF-8, spaces, brackets), its
    reserved characters and existing escapes left alone; a stray % is encoded."""
    return quote(_STRAY_PERCENT.sub("%25", text), safe=_URL_SAFE)


def _parse(url: str) -> URL:
    try:
        parsed = URL(url)
        port = parsed.port
    except (ValueError, UnicodeError):
        raise Refused("not a valid URL") from None
    if parsed.scheme not in ("http", "https"):
        raise Refused("the URL must be http or https")
    if parsed.user is not None or parsed.password is not None:
        raise Refused("credentials in the URL are not accepted; put them in a query token")
    if not parsed.raw_host:
        raise Refused("the URL has no host")
    if parsed.raw_fragment:
        raise Refused("the URL must not have a fragment")
    if not port:
        raise Refused("the URL's port is not valid")
    if not _valid_host(parsed.raw_host):
        raise Refused("the URL's host is not a valid host name or IP address")
    return parsed


def _valid_host(host: str) -> bool:
    """An IP address, or a DNS name of letter-digit-hyphen labels (yarl lets spaces and
    empty labels through; they could never resolve). A name of digits and dots only is
    a spelling of an IPv4 address the resolver would read its own way: refused."""
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    if ":" in host or host.replace(".", "").isdigit():
        return False
    name = host.removesuffix(".").lower()
    return 0 < len(name) <= 253 and all(_LABEL.fullmatch(label) for label in name.split("."))
