"""The outbound address guard for httpx2 (the MCP client's HTTP library), against real sockets: internal addresses
refused at connect time, an allow-listed host:port reachable, and the address checked is the address dialled (a DNS
answer that changes between the check and the connection is never used)."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import AsyncIterator

import httpx
import httpx2
import pytest
from voice_runtime import egress
from voice_runtime.egress import BlockedAddress, EgressPolicy, check_url
from voice_runtime.egress_httpx2 import BlockedAddressHttpx2, guarded_client2

pytestmark = pytest.mark.unit


@pytest.fixture
async def inner() -> AsyncIterator[int]:
    """An HTTP server on loopback answering 200 "ok"."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    async with server:
        yield server.sockets[0].getsockname()[1]


async def test_an_internal_address_is_refused_when_connecting(inner: int) -> None:
    async with guarded_client2(EgressPolicy()) as c:
        for host in ("127.0.0.1", "localhost", "[::ffff:127.0.0.1]"):
            with pytest.raises(BlockedAddress, match="internal address") as refused:
                await c.get(f"http://{host}:{inner}/")
            # what httpx and httpx2 callers (the MCP client) catch as a connection failure
            assert isinstance(refused.value, httpx2.ConnectError | httpx.ConnectError)


async def test_an_allow_listed_host_port_is_reachable_and_only_that_port(inner: int) -> None:
    async with guarded_client2(EgressPolicy.parse(f"127.0.0.1:{inner}")) as c:
        r = await c.get(f"http://127.0.0.1:{inner}/")
        assert r.status_code == 200 and r.text == "ok"
        with pytest.raises(BlockedAddressHttpx2):
            await c.get(f"http://127.0.0.1:{inner + 1 if inner < 65535 else inner - 1}/")


async def test_the_checked_address_is_the_dialled_address(inner: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """A rebinding name: public when the URL is saved, loopback when brain connects; and the other way round, an
    allow-listed answer is dialled as it was checked, never looked up again."""
    answers: list[str] = ["93.184.216.34", "127.0.0.1"]
    lookups: list[str] = []

    async def rebinding(host: str, port: int) -> list[egress.IpAddress]:
        try:
            return [ipaddress.ip_address(host)]
        except ValueError:
            lookups.append(host)
            return [ipaddress.ip_address(answers.pop(0))]

    monkeypatch.setattr(egress, "resolve", rebinding)
    policy = EgressPolicy()
    await check_url(f"http://mcp.rebind.test:{inner}/mcp", policy)  # saved: the public answer passes
    async with guarded_client2(policy) as c:
        with pytest.raises(BlockedAddressHttpx2, match=r"\(127\.0\.0\.1\)"):  # connecting: the loopback answer
            await c.get(f"http://mcp.rebind.test:{inner}/mcp")
    assert lookups == ["mcp.rebind.test", "mcp.rebind.test"]

    answers[:] = ["127.0.0.1", "10.0.0.1"]  # a second lookup would give another internal address
    async with guarded_client2(EgressPolicy.parse(f"127.0.0.1:{inner}")) as c:
        r = await c.get(f"http://mcp.rebind.test:{inner}/mcp")
        assert r.text == "ok"
    assert answers == ["10.0.0.1"]  # looked up once: the checked 127.0.0.1 was dialled


async def test_a_name_that_does_not_resolve_is_a_connect_error() -> None:
    async with guarded_client2(EgressPolicy()) as c:
        with pytest.raises(httpx2.ConnectError):
            await c.get("http://does-not-exist.invalid/mcp")
