"""The outbound address guard, against real sockets: internal addresses refused at connect time and on
redirects, allow-listed host:port reachable."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import AsyncIterator

import pytest
from voice_runtime.egress import BlockedAddress, EgressPolicy, check_url, guarded_client, is_internal

pytestmark = pytest.mark.unit


async def _serve(handler_status: int, location: str | None = None) -> tuple[asyncio.Server, int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        extra = f"Location: {location}\r\n" if location else ""
        writer.write(f"HTTP/1.1 {handler_status} X\r\n{extra}Content-Length: 2\r\nConnection: close\r\n\r\nok"
                     .encode())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


@pytest.fixture
async def inner() -> AsyncIterator[int]:
    server, port = await _serve(200)
    async with server:
        yield port


def test_internal_ranges() -> None:
    for ip in ("127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0",
               "::1", "fe80::1", "fc00::1", "::ffff:127.0.0.1", "224.0.0.1"):
        assert is_internal(ipaddress.ip_address(ip)), ip
    for ip in ("8.8.8.8", "1.1.1.1", "2606:4700:4700::1111"):
        assert not is_internal(ipaddress.ip_address(ip)), ip


async def test_loopback_is_refused_when_connecting(inner: int) -> None:
    async with guarded_client(EgressPolicy()) as c:
        for host in ("127.0.0.1", "localhost"):
            with pytest.raises(BlockedAddress, match="internal address"):
                await c.get(f"http://{host}:{inner}/")


async def test_an_allow_listed_host_port_is_reachable_and_only_that_port(inner: int) -> None:
    async with guarded_client(EgressPolicy.parse(f"127.0.0.1:{inner}")) as c:
        r = await c.get(f"http://127.0.0.1:{inner}/")
        assert r.status_code == 200 and r.text == "ok"
        with pytest.raises(BlockedAddress):
            await c.get(f"http://127.0.0.1:{inner + 1 if inner < 65535 else inner - 1}/")


async def test_a_redirect_to_an_internal_address_is_refused(inner: int) -> None:
    redirector, port = await _serve(302, location=f"http://127.0.0.1:{inner}/metadata")
    async with redirector, guarded_client(EgressPolicy.parse(f"127.0.0.1:{port}"), follow_redirects=True) as c:
        with pytest.raises(BlockedAddress):
            await c.get(f"http://127.0.0.1:{port}/")


async def test_urls_are_checked_when_saved() -> None:
    policy = EgressPolicy.parse("llm.internal:8090")
    for bad in ("ftp://example.com/", "http:///x", "http://127.0.0.1:8090/v1", "http://169.254.169.254/",
                "http://[::1]:80/", "http://localhost:8090/v1"):
        with pytest.raises(BlockedAddress):
            await check_url(bad, policy)
    await check_url("http://llm.internal:8090/v1", policy)  # allow-listed by name, not resolved
    await check_url("https://8.8.8.8/v1", policy)


def test_allow_list_entries_must_be_host_port() -> None:
    with pytest.raises(ValueError):
        EgressPolicy.parse("example.com")
    assert EgressPolicy.parse(" a:1, [::1]:2 ,").allow == frozenset({("a", 1), ("::1", 2)})
