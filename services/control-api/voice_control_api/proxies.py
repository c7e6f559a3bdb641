"""The address of the client behind the reverse proxies the operator trusts (pure, no I/O).

A forwarded header (``X-Forwarded-For`` or RFC 7239 ``Forwarded``) is anyone's to write, so it is read only
when the connection comes from a trusted proxy (``TRUSTED_PROXIES``), and then from the right: each trusted
proxy appends the address it received the request from, so the client is the rightmost address that no trusted
proxy sent. Whatever a client writes on the left of that is never believed, and a client that connects
directly is its own peer address whatever headers it sends.

Only one header is read (``FORWARDED_HEADER``): a proxy appends to one and passes the other through
untouched, where a client could have written anything.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
ForwardedHeader = Literal["x-forwarded-for", "forwarded"]


def _ip(value: str) -> IpAddress | None:
    """An address as proxies write it (``1.2.3.4``, ``1.2.3.4:80``, ``[::1]``, ``[::1]:80``, ``::1``)."""
    value = value.strip().strip('"')
    if value.startswith("["):
        value = value[1 : value.find("]")] if "]" in value else ""
    elif value.count(":") == 1:
        value = value.split(":", 1)[0]
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _forwarded_for(values: Iterable[str]) -> list[str]:
    """The ``for=`` of every element of RFC 7239 ``Forwarded`` values, in order ('' where an element has none)."""
    out: list[str] = []
    for element in ",".join(values).split(","):
        pairs = (p.partition("=") for p in element.split(";"))
        out.append(next((v for k, _, v in pairs if k.strip().lower() == "for"), ""))
    return out


@dataclass(frozen=True)
class TrustedProxies:
    networks: tuple[IpNetwork, ...] = ()
    header: ForwardedHeader = "x-forwarded-for"

    @classmethod
    def parse(cls, entries: str, header: ForwardedHeader = "x-forwarded-for") -> TrustedProxies:
        """``entries``: comma-separated IP addresses and CIDR networks. ValueError names a bad entry."""
        networks: list[IpNetwork] = []
        for raw in (e.strip() for e in entries.split(",")):
            if not raw:
                continue
            try:
                networks.append(ipaddress.ip_network(raw, strict=False))
            except ValueError:
                raise ValueError(f"trusted proxy {raw!r} is not an IP address or CIDR network") from None
        return cls(tuple(networks), header)

    def trusts(self, ip: IpAddress) -> bool:
        return any(ip.version == n.version and ip in n for n in self.networks)

    def trusts_peer(self, peer: str | None) -> bool:
        """Whether a connection's address (as the server reports it) is one of the trusted proxies."""
        ip = _ip(peer) if peer else None
        return ip is not None and self.trusts(ip)

    def client_address(self, peer: str | None, header_values: list[str]) -> str:
        """The client's address: ``peer`` (the connection's address) unless it is a trusted proxy, else read
        from ``header_values`` (every value of ``header`` on the request, in order)."""
        if peer is None:
            return "unknown"
        ip = _ip(peer)
        if ip is None or not self.trusts(ip):
            return peer
        if not header_values:
            hops: list[str] = []
        elif self.header == "forwarded":
            hops = _forwarded_for(header_values)
        else:
            hops = ",".join(header_values).split(",")
        client = ip
        for hop in reversed(hops):
            hop_ip = _ip(hop)
            if hop_ip is None:
                break  # unreadable ("unknown", a name, junk): the last proxy that vouched is the client
            client = hop_ip
            if not self.trusts(hop_ip):
                break
        return str(client)
