"""Which addresses a callback may reach: the one check of the gateway and the notifier.

A callback is a request the platform makes from inside its network to an
address a third party chose (server-side request forgery). Both the gateway,
when it accepts a ``callbackUrl``, and the notifier, when it connects, refuse
every address that is not on the public internet, and both refuse plain
``http`` outside development.

Python's ``is_global`` alone is not enough: it counts the deprecated IPv6
site-local range (``fec0::/10``) as global, and an IPv6 address can carry an
IPv4 one (mapped ``::ffff:a.b.c.d``, NAT64 ``64:ff9b::a.b.c.d``, 6to4
``2002:AABB:CCDD::``), which is judged by the IPv4 address inside.
"""

from __future__ import annotations

import ipaddress

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

#: The deprecated IPv6 site-local range (RFC 3879), still routed inside some networks.
SITE_LOCAL = ipaddress.IPv6Network("fec0::/10")
#: NAT64's well-known prefix (RFC 6052): the last 32 bits are the IPv4 address reached.
NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
#: NAT64 prefixes for local use (RFC 8215): never on the public internet.
NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")


def carried_ipv4(address: Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for (mapped, NAT64 or 6to4), if any."""
    if isinstance(address, ipaddress.IPv4Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address.sixtofour


def non_public_reason(address: Address) -> str | None:
    """What kind of non-public address ``address`` is (``loopback``, ``private``, ...),
    or None when a callback may reach it."""
    inner = carried_ipv4(address)
    if inner is not None:
        return non_public_reason(inner)
    checks = (
        ("unspecified", address.is_unspecified),
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("site-local", isinstance(address, ipaddress.IPv6Address) and address in SITE_LOCAL),
        ("NAT64 local-use", isinstance(address, ipaddress.IPv6Address) and address in NAT64_LOCAL),
        ("private", address.is_private),
        ("reserved", address.is_reserved),
        ("non-public", not address.is_global),
    )
    return next((name for name, applies in checks if applies), None)


def refusal_reason(address: Address, *, development: bool) -> str | None:
    """Why a callback may not reach ``address``, or None when it may. Development
    allows loopback, so callbacks reach a receiver on the same machine."""
    reason = non_public_reason(address)
    if reason == "loopback" and development:
        return None
    return reason


def described(reason: str) -> str:
    """``reason`` as words: ``a private address``, ``an unspecified address``."""
    return f"{'an' if reason[0] in 'aeiou' else 'a'} {reason} address"


def allowed_schemes(*, development: bool) -> tuple[str, ...]:
    """The URL schemes a callback may use: https, and http in development only."""
    return ("https", "http") if development else ("https",)
