"""Who the client is: the peer, or the address a trusted reverse proxy names in X-Forwarded-For."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from typing import Any


def in_networks(ip: str, networks: Sequence[Any]) -> bool:
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(addr in net for net in networks)


def client_ip(peer: str, headers: Mapping[str, str], trusted: Sequence[Any]) -> str:
    """The client: the peer, or (from a trusted proxy) the right-most untrusted X-Forwarded-For hop."""
    def is_trusted(ip: str) -> bool:
        return in_networks(ip, trusted)

    if not is_trusted(peer):
        return peer
    hops = [h.strip() for h in headers.get("x-forwarded-for", "").split(",") if h.strip()]
    for hop in reversed(hops):
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            return peer  # a garbled header: trust nothing in it
        if not is_trusted(hop):
            return hop
    return hops[0] if hops else peer
