"""Calls, transcripts and recordings (recorded by analytics from the bus); admins may delete a call."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import StreamingResponse
from voice_runtime.recordings import MEDIA_TYPE

from ..deps import AUTHED, Admin, Auth, Ctx, Paging, QueryText, QueryTime, errors
from ..models import Call, CallDetail, CallStatus, Page
from ..rest import IdPath
from ..usecases import calls
from ..usecases.common import Listing

router = APIRouter(prefix="/v1/calls", tags=["calls"], responses=AUTHED)


@router.get(
    "",
    response_model=Page[Call],
    summary="List calls (newest first)",
    description="Filters: `status`, `agent_id`, `number` (caller or called, E.164), `channel`, and a time range "
    "on `started_at` (`started_after` inclusive, `started_before` exclusive). Supervisors see the calls of their "
    "own agents.",
)
async def list_calls(
    principal: Auth,
    ctx: Ctx,
    paging: Paging,
    status: CallStatus | None = None,
    agent_id: QueryText = None,
    number: QueryText = None,
    channel: QueryText = None,
    started_after: QueryTime = None,
    started_before: QueryTime = None,
) -> Listing[Call]:
    return await calls.list_calls(
        ctx,
        principal,
        paging,
        status=status.value if status else None,
        agent_id=agent_id,
        number=number,
        channel=channel,
        started_after=started_after,
        started_before=started_before,
    )


@router.get(
    "/{call_id}",
    response_model=CallDetail,
    responses=errors(404),
    summary="Get a call with its transcript",
    description="`turns` are in spoken order. `latency_ms` is the turn's voice-to-voice time (end of caller speech "
    "to the agent's first audio) and `latency` its per-stage breakdown in milliseconds.",
)
async def get_call(call_id: IdPath, principal: Auth, ctx: Ctx) -> CallDetail:
    return await calls.get_call(ctx, principal, call_id)


@router.get(
    "/{call_id}/recording",
    response_class=StreamingResponse,
    responses={200: {"content": {MEDIA_TYPE: {}}, "description": "The recording (WAV)"}, **errors(404, 503)},
    summary="Download a call's recording",
    description="Stereo 16 kHz 16-bit PCM WAV: the caller on the left channel, the agent on the right as the caller "
    "heard it (cut where the caller barged in). 404 until the recording is `ready` (see the call's `recording`), "
    "when the call was not recorded, or when it is another tenant's.",
)
async def download_recording(call_id: IdPath, principal: Auth, ctx: Ctx) -> StreamingResponse:
    rec = await calls.download_recording(ctx, principal, call_id)
    headers = {"Content-Disposition": f'attachment; filename="{call_id}.wav"', "Cache-Control": "private, no-store"}
    if rec.size is not None:
        headers["Content-Length"] = str(rec.size)
    return StreamingResponse(rec.chunks, media_type=MEDIA_TYPE, headers=headers)


@router.delete(
    "/{call_id}",
    status_code=204,
    responses=errors(404, 409, 503),
    summary="Delete a call with its transcript and recording",
    description="Admins only. The recording is deleted from the store first; a live call (or one whose recording "
    "is still being stored) is refused with 409.",
)
async def delete_call(call_id: IdPath, principal: Admin, ctx: Ctx) -> Response:
    await calls.delete_call(ctx, principal, call_id)
    return Response(status_code=204)
