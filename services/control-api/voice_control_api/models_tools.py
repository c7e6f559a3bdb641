"""API models of agents' tool calls and their supervisor decisions."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, Field

from .fields import clean_text

Approval = Literal["none", "pending", "approved", "denied", "timeout"]


class ToolCallRecord(BaseModel):
    """One tool call of the call's agent: what it called, the supervisor's decision when the tool needs one, and
    the result (null until it came; a held call's result comes after the decision)."""

    tool_call_id: str
    call_id: str
    turn_id: str | None
    name: str
    arguments: dict[str, Any] = Field(description="As the model gave them (personal data possible)")
    called_at: datetime
    approval: Approval = Field(description="none (the tool needs no approval), pending, approved, denied, timeout")
    approval_deadline: datetime | None = Field(description="Denied by the platform when undecided by then")
    decided_by: str | None = Field(description="Who decided: a user or API key id, or `timeout`")
    decided_at: datetime | None
    decision_comment: str | None
    ok: bool | None
    result: Any = None
    error: str | None
    duration_ms: float | None
    completed_at: datetime | None


class ToolCallList(BaseModel):
    items: list[ToolCallRecord]


class DecisionIn(BaseModel):
    model_config = {"extra": "forbid"}
    approved: bool = Field(description="true: the tool runs; false: it never runs and the agent says so")
    comment: Annotated[str, AfterValidator(clean_text)] | None = Field(
        None, max_length=500, description="Told to the agent (never spoken as such), stored with the decision"
    )


class DecisionSent(BaseModel):
    call_id: str
    tool_call_id: str
    event_id: str = Field(description="The `tool.approval_decided` event's id (also in the live feed)")
