"""The chat-model role (``base.py``), its providers by name (``registry.py``) and the built-in adapters."""

from .base import (
    ChatLimits,
    ChatModel,
    ChatModelError,
    ChatModelProvider,
    ChatRequest,
    ChatTimeout,
    Delta,
    Endpoint,
    ToolCall,
    Usage,
)
from .registry import UnknownProvider, available, load_provider

__all__ = [
    "ChatLimits",
    "ChatModel",
    "ChatModelError",
    "ChatModelProvider",
    "ChatRequest",
    "ChatTimeout",
    "Delta",
    "Endpoint",
    "ToolCall",
    "UnknownProvider",
    "Usage",
    "available",
    "load_provider",
]
