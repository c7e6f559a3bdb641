"""Text chats with an agent: start one, send messages, end it (stored as calls of channel `chat`)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from ..deps import AUTHED, Auth, Ctx, errors
from ..models import ChatCreated, ChatMessage, ChatReply
from ..rest import IdPath
from ..usecases import chats

router = APIRouter(tags=["chats"], responses=AUTHED)

_UNAVAILABLE: dict[int | str, dict[str, Any]] = {
    503: {"description": "Text chat is not configured (`CALL_TOKEN_KEY`), or no ingress serves chats now"},
    504: {"description": "The agent did not answer in time (`CHAT_REPLY_TIMEOUT_S`)"},
}


@router.post(
    "/v1/agents/{agent_id}/chats",
    status_code=201,
    response_model=ChatCreated,
    responses={**errors(404, 409), **_UNAVAILABLE},
    summary="Start a text chat with an agent",
    description="Talk to the agent's current version by text, through the same brain as a phone call, with no "
    "audio. Allowed to whoever may read the agent. The answer carries the agent's greeting (its first message); "
    "the chat shows in the calls API with channel `chat`. 409 when the agent is not active. A chat with no "
    "message for a while ends by itself (ingress's `CHAT_IDLE_TIMEOUT_S`, reason `timeout`).",
)
async def start_chat(agent_id: IdPath, principal: Auth, ctx: Ctx, response: Response) -> ChatCreated:
    chat = await chats.start_chat(ctx, principal, agent_id)
    response.headers["Location"] = f"/v1/calls/{chat.call_id}"
    return chat


@router.post(
    "/v1/chats/{call_id}/messages",
    response_model=ChatReply,
    responses={**errors(404, 409), **_UNAVAILABLE},
    summary="Send a message to a chat and get the agent's reply",
    description="Waits for the agent's whole reply. One message at a time per chat (409 while one waits); 409 once "
    "the chat has ended; 504 when the reply does not come in time (the chat goes on).",
)
async def send_message(call_id: IdPath, body: ChatMessage, principal: Auth, ctx: Ctx) -> ChatReply:
    return await chats.send_message(ctx, principal, call_id, body.text)


@router.delete(
    "/v1/chats/{call_id}",
    status_code=204,
    responses={**errors(404), **_UNAVAILABLE},
    summary="End a chat",
    description="The call ends with reason `caller_hangup`. Ending a chat that has already ended changes nothing.",
)
async def end_chat(call_id: IdPath, principal: Auth, ctx: Ctx) -> Response:
    await chats.end_chat(ctx, principal, call_id)
    return Response(status_code=204)
