"""The outbound address guard: every URL a tenant controls (LLM endpoint, webhook, HTTP tool, MCP server, SIP
trunk) is reached only through it.

An address is refused when it is not globally routable (loopback, private, link-local, CGNAT, multicast,
reserved, unspecified, and IPv4 inside IPv6) unless the operator's allow-list names its ``host:port``.

The check happens when the connection is made, on the address actually dialled (the name is resolved once
and the socket connects to the checked address, so a DNS answer that changes between check and connect —
rebinding — cannot slip through), and so on every redirect too, since each hop opens its own connection
through the same guard. Checking a URL when it is saved (``check_url``) only gives the user an early error.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpcore
import httpx

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class BlockedAddress(httpx.ConnectError):
    """A tenant-controlled destination resolved to an internal address that the allow-list does not name."""


def is_internal(ip: IpAddress) -> bool:
    if isinstance(ip, ipaddress.IPv6Address):
        mapped = ip.ipv4_mapped or ip.sixtofour
        if mapped is not None:
            return is_internal(mapped)
    return not ip.is_global or ip.is_multicast


@dataclass(frozen=True)
class EgressPolicy:
    """Operator allow-list of ``host:port`` entries (host: a name as written in URLs, or an IP address)."""

    allow: frozenset[tuple[str, int]] = field(default_factory=frozenset)

    @classmethod
    def parse(cls, entries: str | Iterable[str]) -> EgressPolicy:
        items = entries.split(",") if isinstance(entries, str) else list(entries)
        allow: set[tuple[str, int]] = set()
        for raw in (e.strip() for e in items):
            if not raw:
                continue
            host, sep, port = raw.rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(f"egress allow-list entry {raw!r} is not host:port")
            allow.add((host.strip("[]").lower(), int(port)))
        return cls(frozenset(allow))

    def allows(self, host: str, port: int) -> bool:
        return (host.strip("[]").lower(), port) in self.allow

    def check(self, host: str, port: int, ips: Iterable[IpAddress]) -> None:
        if self.allows(host, port):
            return
        for ip in ips:
            if is_internal(ip) and not self.allows(str(ip), port):
                raise BlockedAddress(f"{host}:{port} resolves to an internal address ({ip}); "
                                     "an operator must allow-list it (EGRESS_ALLOW)")


async def resolve(host: str, port: int) -> list[IpAddress]:
    try:
        return [ipaddress.ip_address(host.strip("[]"))]
    except ValueError:
        pass
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    out: list[IpAddress] = []
    for *_, sockaddr in infos:
        ip = ipaddress.ip_address(str(sockaddr[0]).split("%")[0])
        if ip not in out:
            out.append(ip)
    if not out:
        raise httpx.ConnectError(f"{host} does not resolve")
    return out


async def checked_address(policy: EgressPolicy, host: str, port: int) -> str:
    """The address to dial for ``host:port``: resolved once and checked (``BlockedAddress`` when internal and not
    allow-listed). Every guarded network backend (httpcore here, httpcore2 in ``egress_httpx2``) connects to what
    this returns, never to the name, so a second DNS answer (rebinding) is never used."""
    ips = await resolve(host, port)
    policy.check(host, port, ips)
    return str(ips[0])


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore network backend that resolves, checks and dials the checked address."""

    def __init__(self, policy: EgressPolicy, inner: httpcore.AsyncNetworkBackend | None = None) -> None:
        self.policy = policy
        self.inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None, socket_options: Any = None) -> httpcore.AsyncNetworkStream:
        address = await checked_address(self.policy, host, port)
        # TLS still verifies the name: httpcore passes the URL's host as server_hostname in start_tls
        return await self.inner.connect_tcp(address, port, timeout=timeout, local_address=local_address,
                                            socket_options=socket_options)

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Any = None) -> httpcore.AsyncNetworkStream:
        raise BlockedAddress("unix sockets are not reachable through the egress guard")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


def guarded_transport(policy: EgressPolicy, **kw: Any) -> httpx.AsyncHTTPTransport:
    transport = httpx.AsyncHTTPTransport(**kw)
    pool = transport._pool
    pool._network_backend = GuardedBackend(policy, pool._network_backend)
    return transport


def guarded_client(policy: EgressPolicy, **kw: Any) -> httpx.AsyncClient:
    """An httpx client for tenant-controlled URLs: every connection (redirects included) goes through the guard;
    environment proxies are ignored (a proxy would be the address checked, not the destination)."""
    return httpx.AsyncClient(transport=guarded_transport(policy), trust_env=False, **kw)


async def check_url(url: str, policy: EgressPolicy, *, resolve_name: bool = True) -> None:
    """Early validation when a URL is saved: http(s), a host, and (when it resolves now) no internal address."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BlockedAddress(f"{url!r} is not an http(s) URL with a host")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    if policy.allows(parts.hostname, port):
        return
    try:
        ips = [ipaddress.ip_address(parts.hostname)]
    except ValueError:
        if not resolve_name:
            return
        try:
            ips = await resolve(parts.hostname, port)
        except (OSError, httpx.ConnectError):
            return  # may resolve later; the connect-time check decides then
    policy.check(parts.hostname, port, ips)
