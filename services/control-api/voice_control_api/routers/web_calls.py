"""Browser calls (WebRTC) to an agent: the browser's offer in, the SDP answer out; hang up."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from ..deps import AUTHED, Auth, Ctx, errors
from ..models import WebCallAnswer, WebCallOffer
from ..rest import IdPath
from ..usecases import web_calls

router = APIRouter(tags=["web-calls"], responses=AUTHED)

_UNAVAILABLE: dict[int | str, dict[str, Any]] = {
    503: {"description": "Browser calls are not configured (`CALL_TOKEN_KEY`), or no ingress can take one now"},
    504: {"description": "ingress did not answer the offer in time"},
}


@router.post(
    "/v1/agents/{agent_id}/web-calls",
    status_code=201,
    response_model=WebCallAnswer,
    responses={**errors(404, 409), **_UNAVAILABLE},
    summary="Start a browser call (WebRTC) with an agent",
    description="Send the browser's SDP offer (`RTCPeerConnection.createOffer`, after ICE gathering is complete: "
    "no trickle) and apply the returned answer. Audio is Opus; media flows between the browser and an ingress "
    "replica over UDP (the ICE candidates in the answer), signalling only through this API. Allowed to whoever may "
    "read the agent. The call shows in the calls API with channel `webrtc`. 409 when the agent is not active; 422 "
    "when ingress refuses the offer (no single audio section).",
)
async def start_web_call(
    agent_id: IdPath, body: WebCallOffer, principal: Auth, ctx: Ctx, response: Response
) -> WebCallAnswer:
    answer = await web_calls.start_web_call(ctx, principal, agent_id, body.sdp)
    response.headers["Location"] = f"/v1/calls/{answer.call_id}"
    return answer


@router.delete(
    "/v1/web-calls/{call_id}",
    status_code=204,
    responses={**errors(404), **_UNAVAILABLE},
    summary="Hang up a browser call",
    description="The call ends with reason `caller_hangup`. Hanging up a call that has already ended changes nothing.",
)
async def end_web_call(call_id: IdPath, principal: Auth, ctx: Ctx) -> Response:
    await web_calls.end_web_call(ctx, principal, call_id)
    return Response(status_code=204)
