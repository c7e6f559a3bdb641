"""Text-to-speech engines: every module here registers its engine at import (``TTS_ENGINE`` picks one).

A new synthesizer is a new module in this package that calls ``ENGINES.register(name, factory)``, or an
installed distribution with an entry point in the group ``voice.tts_engines`` (see ``voice_runtime.engines``).
"""

from __future__ import annotations

from voice_runtime.engines import Registry

from ..engine import EngineFactory

ENGINES: Registry[EngineFactory] = Registry("text to speech", __name__, "voice.tts_engines")
