"""Media's engines: every module here registers at import a voice-activity model (``VAD_ENGINE`` picks one) or
an end-of-turn model (``TURN_MODEL`` picks one).

A new model is a new module in this package that calls ``VOICE_ACTIVITY.register`` or ``TURN_MODELS.register``,
or an installed distribution with an entry point in the group ``voice.vad_engines`` or ``voice.turn_models``
(see ``voice_runtime.engines``).
"""

from __future__ import annotations

from voice_runtime.engines import Registry

from ..turn_model import TurnModelFactory
from ..vad import VadFactory

VOICE_ACTIVITY: Registry[VadFactory] = Registry("voice activity", __name__, "voice.vad_engines")
TURN_MODELS: Registry[TurnModelFactory] = Registry("turn model", __name__, "voice.turn_models")
