"""Who is acting: the tenant, role and identity behind a request (pure, no I/O)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .security import Role


@dataclass(frozen=True)
class Principal:
    tenant_id: str
    role: Role
    actor_type: Literal["api_key", "user"]
    actor_id: str
    user_id: str | None
    platform_admin: bool = False

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def owner_filter(self) -> str | None:
        """Supervisors see only what they own: the user id to filter on, or None for admins."""
        if self.is_admin:
            return None
        return self.user_id or "!none"  # never a valid id: a supervisor without a user owns nothing

    @property
    def actor(self) -> str:
        return f"{self.actor_type}:{self.actor_id}"
