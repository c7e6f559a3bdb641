"""Speech-to-text engines: every module here registers its engine at import (``STT_ENGINE`` picks one).

A new recognizer is a new module in this package that calls ``ENGINES.register(name, factory)``, or an
installed distribution with an entry point in the group ``voice.stt_engines`` (see ``voice_runtime.engines``).
"""

from __future__ import annotations

from voice_runtime.engines import Registry

from ..engine import EngineFactory

ENGINES: Registry[EngineFactory] = Registry("speech to text", __name__, "voice.stt_engines")
