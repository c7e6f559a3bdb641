"""What a use case refuses, in domain terms; ``problems`` maps each to its HTTP problem."""

from __future__ import annotations

from pydantic import ValidationError


class UseCaseError(Exception):
    """Base of every refusal a use case raises."""


class NotFound(UseCaseError):
    """No such resource for this principal (another tenant's, or a supervisor's not-owned, included)."""

    def __init__(self, what: str) -> None:
        super().__init__(f"{what} not found")
        self.what = what


class Unauthenticated(UseCaseError):
    """The credential is missing, wrong, expired or revoked."""


class Forbidden(UseCaseError):
    """The principal's role or scope does not allow this."""


class Conflict(UseCaseError):
    """The change clashes with the current state (a duplicate, a resource still in use)."""


class NotConfigured(UseCaseError):
    """The deployment lacks a setting this feature needs (e.g. SECRETS_KEY for tenant secrets)."""


class Unavailable(UseCaseError):
    """A part of the platform this request needs does not answer now (e.g. no ingress serves text chats)."""


class TimedOut(UseCaseError):
    """The platform did not answer in time (e.g. the agent's reply to a chat message)."""


class InvalidField(UseCaseError):
    """One field holds a value only the server can refuse (e.g. a reference to a missing resource)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class InvalidFields(UseCaseError):
    """A merged or restored configuration failed validation."""

    def __init__(self, error: ValidationError) -> None:
        super().__init__(str(error))
        self.error = error


class PreconditionFailed(UseCaseError):
    """The version the caller's precondition names is not the current one."""

    def __init__(self, current: int) -> None:
        super().__init__(f"the current version is {current}")
        self.current = current


class StaleVersion(UseCaseError):
    """The version the caller's update is based on is not the current one."""

    def __init__(self, stale: int, current: int) -> None:
        super().__init__(f"version {stale} is stale; the current version is {current}")
        self.stale = stale
        self.current = current
