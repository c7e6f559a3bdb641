"""Text chat: what control-api asks ingress, and what ingress answers (core NATS request/reply, never a stream).

Subjects (``subjects.py``): ``ingress.rpc.chat.open`` (any ingress replica, one queue group) starts a chat;
``ingress.rpc.chat.<call_id>.say`` and ``.end`` reach the replica that holds that chat, which alone subscribes
to them (no responders once the chat has ended there). Every answer is a ``ChatAnswer``.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

CHANNEL = "chat"
OPEN = "open"
SAY = "say"
END = "end"

MAX_MESSAGE_CHARS = 2000  # one message; brain keeps at most this much of one message in its history
MAX_WAIT_S = 120.0  # the longest a request may ask ingress to wait for the agent


class ChatOpen(BaseModel):
    """Start a chat: the call token control-api minted (channel ``chat``) grants the agent."""

    model_config = ConfigDict(extra="ignore")
    token: str = Field(max_length=2048)
    wait_s: float = Field(30.0, gt=0, le=MAX_WAIT_S, description="How long to wait for the agent's greeting")


class ChatSay(BaseModel):
    """One user message; answered once the agent's reply has been sent (or ``wait_s`` has passed)."""

    model_config = ConfigDict(extra="ignore")
    tenant_id: str = Field(description="The tenant asking: another tenant's chat is not found")
    text: str = Field(min_length=1, max_length=MAX_MESSAGE_CHARS, description="The user's message (personal data)")
    wait_s: float = Field(30.0, gt=0, le=MAX_WAIT_S)


class ChatEnd(BaseModel):
    """End the chat (the user closed it)."""

    model_config = ConfigDict(extra="ignore")
    tenant_id: str


class ChatError(StrEnum):
    not_found = "not_found"  # no such chat here (or another tenant's)
    ended = "ended"  # the chat has ended
    busy = "busy"  # a message is still waiting for its reply
    invalid = "invalid"  # the request is malformed
    refused = "refused"  # the call token is invalid, expired or used
    unavailable = "unavailable"  # this deployment or replica cannot take a chat now
    timeout = "timeout"  # the agent did not answer in time


class ChatAnswer(BaseModel):
    """What ingress answers to every chat request: ``error`` set, or the fields of the request's result."""

    model_config = ConfigDict(extra="ignore")
    error: ChatError | None = None
    detail: str | None = None
    call_id: str | None = None  # open
    greeting: str | None = None  # open: the agent's first message, when it has one
    reply: str | None = None  # say: the agent's reply text (personal data)
    turn: int | None = None  # say: the number of this message in the chat (1 for the first)
    ended: bool = False  # say: the agent ended the chat with this reply; end: False when it had ended already
