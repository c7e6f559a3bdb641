"""Calls, their transcripts and recordings (analytics records them from the bus); an admin may delete a call.

A supervisor sees the calls of the agents they own. A recording is served only to the call's tenant, and deleting a
call deletes its recording first (a recording never outlives its call).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime

import asyncpg
from voice_runtime.recordings import RecordingNotFound

from ..context import AppContext
from ..fields import normalize_e164
from ..models import Call, CallDetail, Recording
from ..principal import Principal
from ..store import analytics as analytics_store
from ..store import calls as store
from ..store import recordings as recording_store
from . import audit_log
from .common import Listing, Pagination, connection, fetch_page, found, transaction
from .errors import Conflict, NotConfigured, NotFound


async def list_calls(
    ctx: AppContext,
    principal: Principal,
    paging: Pagination,
    *,
    status: str | None,
    agent_id: str | None,
    number: str | None,
    channel: str | None,
    started_after: datetime | None,
    started_before: datetime | None,
) -> Listing[Call]:
    """``number`` matches the caller or the called number."""
    if number is not None:
        try:
            number = normalize_e164(number)
        except ValueError:
            pass  # match it as stored
    return await fetch_page(
        ctx,
        paging,
        store.list_,
        principal.tenant_id,
        owner=principal.owner_filter,
        status=status,
        agent_id=agent_id,
        number=number,
        started_after=started_after,
        started_before=started_before,
        channel=channel,
    )


async def get_call(ctx: AppContext, principal: Principal, call_id: str) -> CallDetail:
    """The call with its turns, in spoken order, and its post-call analytics once summarised."""
    async with connection(ctx) as conn:
        call = found(await store.get(conn, principal.tenant_id, call_id, owner=principal.owner_filter), "call")
        turns = await store.turns(conn, principal.tenant_id, call_id)
        rec = await recording_store.get(conn, principal.tenant_id, call_id)
        summary = await analytics_store.of_call(conn, principal.tenant_id, call_id)
    return CallDetail(**call.model_dump(), turns=turns, recording=_recording(rec) if rec else None, analytics=summary)


def _recording(row: asyncpg.Record) -> Recording:
    return Recording(status=row["status"], duration_s=row["duration_s"], size_bytes=row["size_bytes"],
                     created_at=row["created_at"], expires_at=row["expires_at"],
                     url=f"/v1/calls/{row['call_id']}/recording")


@dataclass
class RecordingDownload:
    size: int | None
    chunks: AsyncIterator[bytes]  # the first chunk already read: the object exists


async def download_recording(ctx: AppContext, principal: Principal, call_id: str) -> RecordingDownload:
    """The call's recording as a stream of bytes; NotFound unless the call is visible and its recording ready."""
    if ctx.recordings is None:
        raise NotConfigured("no recording store is configured")
    async with connection(ctx) as conn:
        found(await store.get(conn, principal.tenant_id, call_id, owner=principal.owner_filter), "call")
        rec = await recording_store.get(conn, principal.tenant_id, call_id)
    if rec is None or rec["status"] != "ready":
        raise NotFound("recording")
    chunks = ctx.recordings.read(rec["object_key"])
    try:
        first = await anext(chunks)
    except (RecordingNotFound, StopAsyncIteration) as e:
        raise NotFound("recording") from e

    async def rest() -> AsyncIterator[bytes]:
        yield first
        async for chunk in chunks:
            yield chunk

    return RecordingDownload(size=rec["size_bytes"], chunks=rest())


async def delete_call(ctx: AppContext, principal: Principal, call_id: str) -> None:
    """Delete an ended call: its recording (the object, then its row), its turns, the call itself."""
    async with transaction(ctx) as conn:
        call = found(await store.get(conn, principal.tenant_id, call_id, owner=principal.owner_filter), "call")
        if call.status != "ended":
            raise Conflict("the call is still live: delete it once it has ended")
        rec = await recording_store.get(conn, principal.tenant_id, call_id)
        if rec is not None:
            if rec["status"] == "recording":
                raise Conflict("the call's recording is still being stored: try again shortly")
            if ctx.recordings is None:
                raise NotConfigured("no recording store is configured to delete the call's recording from")
            await ctx.recordings.delete(rec["object_key"])
        await store.delete(conn, principal.tenant_id, call_id)
        await audit_log.record(conn, principal, "call.delete", "call", call_id, recording=rec is not None)
