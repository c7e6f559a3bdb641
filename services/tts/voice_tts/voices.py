"""The voices of an engine, by name.

A voice is a registry entry: a name (plus aliases) and how to load it. An engine lists its voices
(``TextToSpeech.voice_specs``); another voice of the same engine is one more ``VoiceSpec`` there.
``ReplyChunk.voice`` picks one per agent; an unknown name falls back to the default voice with a warning
(once per name).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from voice_runtime.logging import get_logger

if TYPE_CHECKING:
    from .engine import Voice

log = get_logger(__name__)


@dataclass(frozen=True)
class VoiceSpec:
    name: str
    description: str
    load: Callable[[], Voice]  # blocking
    aliases: tuple[str, ...] = field(default=())


class UnknownVoice(LookupError):
    pass


class Voices:
    """Loaded voices by name. The default is loaded at start; others on first use, then kept."""

    def __init__(self, specs: tuple[VoiceSpec, ...], default: str) -> None:
        self._specs: dict[str, VoiceSpec] = {}
        for spec in specs:
            for key in (spec.name, *spec.aliases):
                self._specs[key.lower()] = spec
        if default.lower() not in self._specs:
            raise UnknownVoice(f"default voice {default!r} is not one of {sorted(self.names)}")
        self.default = self._specs[default.lower()].name
        self._loaded: dict[str, Voice] = {}
        self._warned: set[str] = set()
        self._lock = threading.Lock()

    @property
    def names(self) -> set[str]:
        return {s.name for s in self._specs.values()}

    @property
    def loaded(self) -> Mapping[str, Voice]:
        return self._loaded

    def resolve(self, name: str | None) -> str:
        """The registered voice ``name`` means: the default for None or an unknown name."""
        if not name:
            return self.default
        spec = self._specs.get(name.lower())
        if spec is not None:
            return spec.name
        if name not in self._warned and len(self._warned) < 1000:
            self._warned.add(name)
            log.warning("tts_unknown_voice", voice=name[:64], using=self.default)
        return self.default

    def get(self, name: str | None) -> Voice:
        """The loaded voice (blocking while it loads the first time: call from a worker thread)."""
        key = self.resolve(name)
        tts = self._loaded.get(key)
        if tts is not None:
            return tts
        with self._lock:
            tts = self._loaded.get(key)
            if tts is None:
                tts = self._specs[key.lower()].load()
                self._loaded[key] = tts
                log.info("tts_voice_loaded", voice=tts.voice_name, sample_rate=tts.sample_rate)
        return tts
