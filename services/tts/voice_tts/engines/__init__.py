"""Text-to-speech engines: every module here registers its engine at import (``TTS_ENGINE`` picks one).

A new synthesizer is a new module in this package that calls ``ENGINES.register(name, factory)``, or an
installed distribution with an entry point in the group ``voice.tts_engines`` (see ``registry.py``).
"""

from __future__ import annotations

from ..engine import EngineFactory
from ..registry import Registry

ENGINES: Registry[EngineFactory] = Registry("text to speech", __name__, "voice.tts_engines")
