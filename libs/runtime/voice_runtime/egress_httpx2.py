"""The outbound address guard for ``httpx2`` (the fork of httpx that the ``mcp`` package's HTTP client speaks):
the same check as ``egress`` (``checked_address``: resolved once, refused when internal and not allow-listed,
the checked address dialled), as an ``httpcore2`` network backend.

Its own module because only brain's MCP client needs it: ``egress`` stays importable without httpx2.
"""

from __future__ import annotations

from typing import Any

import httpcore2
import httpx2

from .egress import BlockedAddress, EgressPolicy, checked_address


class BlockedAddressHttpx2(BlockedAddress, httpx2.ConnectError):  # type: ignore[misc]  # same shape in both
    """``BlockedAddress`` as httpx2 code expects a connect failure to be (both ``httpx.ConnectError`` and
    ``httpx2.ConnectError``): whoever catches either sees the refusal."""


class GuardedBackend2(httpcore2.AsyncNetworkBackend):
    """httpcore2 network backend that resolves, checks and dials the checked address."""

    def __init__(self, policy: EgressPolicy, inner: httpcore2.AsyncNetworkBackend | None = None) -> None:
        self.policy = policy
        self.inner = inner or httpcore2.AnyIOBackend()

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: Any = None) -> httpcore2.AsyncNetworkStream:
        try:
            address = await checked_address(self.policy, host, port)
        except BlockedAddress as e:
            raise BlockedAddressHttpx2(str(e)) from None
        except (OSError, ConnectionError) as e:  # the name does not resolve (now)
            raise httpx2.ConnectError(f"{host} does not resolve") from e
        except Exception as e:  # resolve()'s httpx.ConnectError: as the error httpx2 callers catch
            raise httpx2.ConnectError(str(e)) from e
        # TLS still verifies the name: httpcore2 passes the URL's host as server_hostname in start_tls
        return await self.inner.connect_tcp(address, port, timeout=timeout, local_address=local_address,
                                            socket_options=socket_options)

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Any = None) -> httpcore2.AsyncNetworkStream:
        raise BlockedAddressHttpx2("unix sockets are not reachable through the egress guard")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


def guarded_transport2(policy: EgressPolicy, **kw: Any) -> httpx2.AsyncHTTPTransport:
    transport = httpx2.AsyncHTTPTransport(**kw)
    pool = transport._pool
    pool._network_backend = GuardedBackend2(policy, pool._network_backend)
    return transport


def guarded_client2(policy: EgressPolicy, **kw: Any) -> httpx2.AsyncClient:
    """An httpx2 client for tenant-controlled URLs: every connection (redirects included) goes through the guard;
    environment proxies are ignored (a proxy would be the address checked, not the destination)."""
    return httpx2.AsyncClient(transport=guarded_transport2(policy), trust_env=False, **kw)
