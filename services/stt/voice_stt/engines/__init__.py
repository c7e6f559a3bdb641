"""Speech-to-text engines: every module here registers its engine at import (``STT_ENGINE`` picks one).

A new recognizer is a new module in this package that calls ``ENGINES.register(name, factory)``, or an
installed distribution with an entry point in the group ``voice.stt_engines`` (see ``registry.py``).
"""

from __future__ import annotations

from ..engine import EngineFactory
from ..registry import Registry

ENGINES: Registry[EngineFactory] = Registry("speech to text", __name__, "voice.stt_engines")
