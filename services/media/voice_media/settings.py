"""Settings of the media service.

Per-agent turn timing (hangover, barge-in minimum, interruptible) comes from the agent's
``TurnSettings``; what is here is per deployment: the engines, VAD tuning, utterance padding, model workers.
Each engine's own settings live beside it (``engines/smart_turn.py``).
"""

from __future__ import annotations

from pydantic import AliasChoices, Field
from voice_runtime.settings import CommonSettings

from .turns import DetectorParams


class MediaSettings(CommonSettings):
    service_name: str = "media"
    http_port: int = Field(8081, validation_alias=AliasChoices("MEDIA_HTTP_PORT", "HTTP_PORT"))

    vad_engine: str = Field("silero", description="The voice-activity model: a module of voice_media.engines or "
                                                  "an entry point of the group voice.vad_engines")
    vad_threshold: float = Field(0.5, gt=0.0, lt=1.0, description="Speech probability that starts speech")
    vad_stop_threshold: float = Field(0.35, gt=0.0, lt=1.0, description="Probability below which is silence")
    barge_in_threshold: float = Field(
        0.6, gt=0.0, lt=1.0, description="Onset threshold while the agent speaks (echo, line noise)"
    )
    onset_windows: int = Field(2, ge=1, le=10, description="Consecutive 32 ms windows that make an onset")
    barge_in_onset_windows: int = Field(
        2, ge=1, le=10, description="Consecutive windows that pause the agent (each 32 ms adds latency)"
    )
    speech_stop_ms: int = Field(160, ge=32, le=2000, description="Silence that ends a speech segment")
    vad_offset_lag_ms: int = Field(
        64, ge=0, le=300, description="How long Silero keeps scoring speech after it ended (offset dated back)"
    )
    barge_in_max_pause_ms: int = Field(
        1500, ge=200, le=10_000, description="Longest pause of the agent on a barge-in that never commits"
    )
    vad_batch_wait_ms: float = Field(
        8.0, ge=0, le=20, description="With at least VAD_BATCH_WAIT_FROM_CALLS calls, a ready VAD window waits up to "
        "this long for other calls' windows to be scored in the same model run (fewer, larger runs: less CPU per "
        "window); 0: scored in the event-loop pass it arrived in"
    )
    vad_batch_wait_from_calls: int = Field(8, ge=0, description="Calls from which VAD windows wait for a batch")
    max_utterance_ms: int = Field(
        15_000, ge=1000, le=20_000, description="Longest utterance sent to stt (base64 must fit 1 MB)"
    )
    min_turn_speech_ms: int = Field(96, ge=0, le=2000, description="Turns with less voiced speech are dropped")
    pause_ms: int = Field(
        64, ge=0, le=2000, description="Silence within speech that publishes vad.speech_paused, for stt's likely "
                                       "final transcript (before speech_stop_ms ends the segment); 0: never"
    )
    finished_end_of_turn_ms: int = Field(
        350, ge=0, le=5000, description="Silence that ends a turn whose likely final words sound finished, when "
                                        "the turn model does not end it first"
    )
    unfinished_end_of_turn_ms: int = Field(
        1200, ge=0, le=10_000, description="Least silence that ends a turn whose likely final words sound "
                                           "unfinished (a trailing 'and', 'for', 'um'); the turn model cannot end it"
    )
    words_wait_ms: int = Field(
        450, ge=0, le=5000, description="Silence up to which the turn model's 'complete' waits for the pause's likely "
        "final words when they come after it (calls whose words are weighed: English agents): the model hears "
        "prosody, and a sentence broken off after 'allergic to' can sound finished to it. The reply starts on those "
        "words anyway (the early start), so waiting costs little; 0: a 'complete' ends the turn without them (set it "
        "when stt runs with STT_LIKELY_FINAL=off)"
    )
    pre_roll_ms: int = Field(200, ge=0, le=1000, description="Audio kept before the speech onset")
    trailing_silence_ms: int = Field(100, ge=0, le=1000, description="Silence kept after the speech offset")

    turn_model_enabled: bool = Field(True, description="Shorten the hangover with the turn model")
    turn_model_at_pause: bool = Field(
        False, description="Also ask the turn model at the pause (vad.speech_paused, ~100 ms before the segment ends), "
        "so a 'complete' answer ends the turn once the silence reaches the agent's min_turn_silence_ms instead of a "
        "prediction later; 'incomplete' there leaves it to the question asked at that silence, as without it. Off by "
        "default: on shared CPU cores that prediction competes with stt's likely-final decode, which the reply waits "
        "for (2026-12-03, 2 AVX2 cores, Whisper tiny.en: stt on the path p50 202 ms with it, 109 ms without)"
    )
    turn_model: str = Field("smart-turn-v3", description="The end-of-turn model: a module of voice_media.engines "
                                                         "or an entry point of the group voice.turn_models")
    turn_model_workers: int = Field(1, ge=1, le=16, description="Threads running the turn model")
    turn_model_nice: int = Field(
        5, ge=0, le=19, description="The turn model's threads run this much nicer than media's event loop, so a "
        "prediction (~100 ms of CPU) never delays VAD, barge-in or another process's playout (5: between the "
        "real-time processes at 0 and `make run`'s model stages at MODEL_NICE 10, which it must still beat at the "
        "end of a turn); 0: the same priority"
    )
    turn_model_max_queue: int = Field(
        8, ge=1, description="Predictions waiting beyond this are skipped (the hangover still ends the turn)"
    )
    turn_model_timeout_s: float = Field(
        2.0, gt=0, description="A prediction later than this is no answer (the hangover ends the turn by then)"
    )

    stall_ms: int = Field(250, ge=50, description="No caller audio this long: silence timers run on wall time")
    call_idle_timeout_s: float = Field(60.0, gt=0, description="No caller audio this long: the call is freed")
    capture_on_call_end: bool = Field(True, description="Publish a turn in progress when the call ends")

    def detector_params(self) -> DetectorParams:
        return DetectorParams(
            threshold=self.vad_threshold,
            stop_threshold=self.vad_stop_threshold,
            barge_in_threshold=self.barge_in_threshold,
            onset_windows=self.onset_windows,
            barge_in_onset_windows=self.barge_in_onset_windows,
            speech_stop_ms=self.speech_stop_ms,
            offset_lag_ms=self.vad_offset_lag_ms,
            barge_in_max_pause_ms=self.barge_in_max_pause_ms,
            max_utterance_ms=self.max_utterance_ms,
            min_turn_speech_ms=self.min_turn_speech_ms,
            use_turn_model=self.turn_model_enabled,
            model_at_pause=self.turn_model_at_pause,
            pause_ms=self.pause_ms,
            finished_end_of_turn_ms=self.finished_end_of_turn_ms,
            unfinished_end_of_turn_ms=self.unfinished_end_of_turn_ms,
        )
