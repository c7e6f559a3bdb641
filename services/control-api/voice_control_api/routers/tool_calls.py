"""Tool calls of a call's agent, and supervisors' decisions on the ones that wait for approval."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from ..deps import AUTHED, Auth, Ctx, errors
from ..models_tools import DecisionIn, DecisionSent, ToolCallList
from ..rest import IdPath
from ..usecases import approvals

router = APIRouter(tags=["live"], responses=AUTHED)

ToolCallPath = Annotated[str, Path(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="The tool call's id")]


@router.get(
    "/v1/calls/{call_id}/tool-calls",
    response_model=ToolCallList,
    responses=errors(404),
    summary="The tool calls of a call",
    description="Every tool call of the call's agent in order: arguments, the supervisor's decision when the tool "
    "requires approval (`approval`: none, pending, approved, denied, timeout; who and when), and the result. "
    "Admins, or the supervisor who owns the call's agent.",
)
async def list_tool_calls(call_id: IdPath, principal: Auth, ctx: Ctx) -> ToolCallList:
    return ToolCallList(items=await approvals.list_tool_calls(ctx, principal, call_id))


@router.post(
    "/v1/calls/{call_id}/tool-calls/{tool_call_id}/decision",
    status_code=202,
    response_model=DecisionSent,
    responses=errors(404, 409, 503),
    summary="Approve or deny a tool call that waits for a supervisor",
    description="Approved: the tool runs once (on whichever brain replica takes the decision) and the agent tells "
    "the caller the outcome; denied: it never runs and the agent says so. The first decision wins: the "
    "platform's own timeout (the tool's `approval_timeout_s`) counts as a denial. Audited "
    "(`call.tool_decision`). 409 when the call is not live or the tool call is not pending.",
)
async def decide(call_id: IdPath, tool_call_id: ToolCallPath, body: DecisionIn, principal: Auth,
                 ctx: Ctx) -> DecisionSent:
    event_id = await approvals.decide(ctx, principal, call_id, tool_call_id, body.approved, body.comment)
    return DecisionSent(call_id=call_id, tool_call_id=tool_call_id, event_id=event_id)
