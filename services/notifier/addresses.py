"""Which network addresses a webhook may reach. Pure.

Only global unicast addresses, unless the operator allows a range (the local stack allows
loopback). IPv6 forms that carry an IPv4 address (mapped ::ffff:a.b.c.d, NAT64 64:ff9b::/96,
6to4 2002::/16) are judged by the IPv4 address inside, so 127.0.0.1 cannot hide in one.
Decimal and octal spellings (http://2130706433/) are not parsed here: they only exist after
the resolver reads them, and the resolver's answers are what is checked."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from urllib.parse import urlsplit

IP = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_6TO4 = ipaddress.ip_network("2002::/16")
_CGNAT = ipaddress.ip_network("100.64.0.0/10")


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
    if isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT:
        return "shared address space (CGNAT)"
    if ip.is_private:
        return "private network address"
    if ip.is_multicast or ip.is_unspecified or ip.is_reserved or not ip.is_global:
        return "not a public unicast address"
    return None


def check_url(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of an acceptable webhook URL, else Refused. The host is
    checked later, by what it resolves to."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise Refused("not a valid URL") from None
    if parts.scheme not in ("http", "https"):
        raise Refused("the URL must be http or https")
    if parts.username is not None or parts.password is not None:
        raise Refused("credentials in the URL are not accepted; put them in a query token")
    if not parts.hostname:
        raise Refused("the URL has no host")
    if parts.fragment:
        raise Refused("the URL must not have a fragment")
    return parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80)
