"""Chat-model providers by name; the setting ``LLM_PROVIDER`` picks one when brain starts.

A provider is a ``ProviderFactory`` (``ChatLimits`` -> ``ChatModelProvider``) named ``"module:attribute"``.
Built-in ones are listed below and imported only when chosen, so a replica never imports an engine it does not
use. Another package adds one without touching brain, with an entry point in the ``voice.chat_models`` group:

    [project.entry-points."voice.chat_models"]
    mistral = "voice_mistral.chat:provider"
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from importlib.metadata import entry_points

from .base import ChatLimits, ChatModelProvider

ENTRY_POINT_GROUP = "voice.chat_models"

BUILTIN: dict[str, str] = {
    "openai": "voice_brain.chat.openai_compatible:provider",
}

ProviderFactory = Callable[[ChatLimits], ChatModelProvider]


class UnknownProvider(LookupError):
    pass


def available() -> dict[str, str]:
    """Every provider name and where its factory lives (built-ins win over entry points of the same name)."""
    found = {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}
    return found | BUILTIN


def load_provider(name: str, limits: ChatLimits) -> ChatModelProvider:
    """Import the provider ``name`` and build it (reading its own engine settings)."""
    target = available().get(name.strip().lower())
    if target is None:
        raise UnknownProvider(f"LLM_PROVIDER={name!r} is not one of {sorted(available())}")
    module, _, attr = target.partition(":")
    factory: ProviderFactory = getattr(importlib.import_module(module), attr or "provider")
    return factory(limits)
