"""Turn taking for one call: speech segments, end of turn and barge-in, as a pure state machine.

``TurnDetector`` is fed one voice-activity probability per VAD window (with the window's end time in
call media milliseconds), the agent's playout state and the turn model's answers. It returns
decisions (dataclasses below); it does no I/O, keeps no wall clock and imports no broker, so every
rule is unit-testable with synthetic probabilities and a fake clock.

Rules:

- Speech onset: ``onset_windows`` consecutive windows at or above ``threshold`` (``barge_in_threshold``
  while interruptible agent audio is playing, so a single noisy or echoed window never pauses it).
  A segment ends once the probability stays below ``stop_threshold`` for ``speech_stop_ms``; its
  offset is the end of its last speech window less the VAD's known tail (``offset_lag_ms``).
- End of turn, counted from the speech offset: the turn model is asked once silence reaches
  ``min_turn_silence_ms``; "complete" ends the turn at once, otherwise the ``end_of_turn_ms``
  hangover does. With ``model_at_pause`` it is also asked at the pause (``SpeechPaused``, ~100 ms before the
  segment ends), so its answer is usually in by the time the silence reaches ``min_turn_silence_ms``: "complete"
  about that pause ends the turn there once the pause's words are in and sound finished (speech heard since makes
  it stale; unfinished words hold the turn; no words yet: it waits for them or for the next answer), "incomplete"
  leaves it to the question asked once the silence is long enough, as without it. A turn is cut at
  ``max_utterance_ms`` even mid-speech; a turn with less than ``min_turn_speech_ms`` of voiced speech (a click) is
  dropped.
- Barge-in (agent audio playing and the agent interruptible): onset -> ``PausePlayout`` at once;
  ``min_barge_in_ms`` of voiced speech -> ``BargeIn`` with a new epoch, and the speech carries on as
  a normal turn; a segment that stops short of that -> ``ResumePlayout`` and, when it began a turn
  while the agent was still speaking, the segment is discarded (a backchannel never becomes a turn).
  Every ``PausePlayout`` is followed by exactly one ``ResumePlayout`` or ``BargeIn``, at the latest
  after ``barge_in_max_pause_ms`` (sound that stays between the thresholds never holds the agent).
- Pause: while the caller speaks in a turn (no barge-in pending), once the probability has stayed below
  ``stop_threshold`` for ``pause_ms`` -> ``SpeechPaused`` (at the segment's offset when that comes first by
  configuration), so stt can decode the turn so far before the turn ends; once per pause: again only after a voiced
  window (``threshold``); never for a stall (``tick``) or a turn with less than ``min_turn_speech_ms`` of voiced
  speech (it would be dropped).
- The words (``on_transcript``: the likely final transcript of the turn, decoded at a pause, judged by
  ``text_turn.sounds_finished``) are a second end-of-turn signal, valid only for the pause they cover (their audio
  reaches the pause's offset; speech that resumed since makes them stale):
  unfinished words hold the turn open: a "complete" model answer does not end it, and the hangover becomes at least
  ``unfinished_end_of_turn_ms``; finished words end the turn once the silence reaches ``finished_end_of_turn_ms``
  (``transcript``), or at once with a "complete" model answer (``model``). With ``words_wait_ms`` (set for calls
  whose words are weighed), a "complete" that comes before the pause's words waits for them until the silence
  reaches that bound (``model``, outcome ``missing`` when they did not come): the model hears prosody, and a
  sentence broken off after "allergic to" can sound finished. ``WordsWeighed`` reports what the words did, for the
  hit rates.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal
from uuid import uuid4

EndOfTurn = Literal["silence", "model", "transcript", "max_duration", "call_end"]
# what the words did to a turn (``WordsWeighed``)
WordsOutcome = Literal["held_unfinished", "held_resumed", "ended_finished", "agreed", "missing", "stale", "late"]


# ---------------------------------------------------------------- parameters
@dataclass(frozen=True, slots=True)
class TurnThresholds:
    """Per-agent timing (mirrors ``voice_schemas.agent.TurnSettings``)."""

    end_of_turn_ms: int = 600
    interruptible: bool = True
    min_barge_in_ms: int = 400
    min_turn_silence_ms: int = 200


@dataclass(frozen=True, slots=True)
class DetectorParams:
    """Per-deployment VAD tuning (media settings)."""

    window_ms: int = 32
    threshold: float = 0.5
    stop_threshold: float = 0.35
    barge_in_threshold: float = 0.6
    onset_windows: int = 2
    barge_in_onset_windows: int = 2
    speech_stop_ms: int = 160
    # Silero keeps scoring speech ~2 windows after it ends (measured on piper speech, wideband and
    # phone-band: last window >= stop_threshold ends 60-90 ms after the true offset). The offset is
    # dated that much earlier, so hangovers count real silence and latency figures are not flattered.
    offset_lag_ms: int = 64
    max_utterance_ms: int = 15_000
    # The longest the agent stays paused on a suspected barge-in whose speech never gets voiced
    # enough to commit (echo or noise hovering between the two thresholds).
    barge_in_max_pause_ms: int = 1500
    # silence that ends a suspected barge-in (-> resume) when it has not reached min_barge_in_ms
    barge_in_gap_ms: int = 350
    min_turn_speech_ms: int = 96  # a turn with less voiced speech (a click, a bump) is dropped
    use_turn_model: bool = True
    # below the stop threshold this long -> SpeechPaused (stt decodes the likely final transcript); 0: never
    pause_ms: int = 64
    # also ask the turn model at that pause: its inference runs while the segment is still ending (off by default: on
    # two shared cores it competes with stt's likely-final decode, which is what the reply waits for)
    model_at_pause: bool = False
    # silence after which finished-sounding words end the turn when the model does not (incomplete, late, off)
    finished_end_of_turn_ms: int = 350
    # the least hangover of a turn whose words sound unfinished (the caller is likely to go on)
    unfinished_end_of_turn_ms: int = 1200
    # silence up to which a "complete" model answer waits for the pause's words when they come after it; 0: it ends
    # the turn without them (calls whose words are not weighed, or an stt that decodes no likely final)
    words_wait_ms: int = 0


# ---------------------------------------------------------------- decisions
@dataclass(frozen=True, slots=True)
class SpeechBegan:
    turn_id: str
    at_ms: int
    agent_speaking: bool
    epoch: int


@dataclass(frozen=True, slots=True)
class SpeechPaused:
    """The caller's speech seems to have stopped (``pause_ms`` below the stop threshold): the segment may end here."""

    turn_id: str
    at_ms: int
    speech_ms: int
    epoch: int


@dataclass(frozen=True, slots=True)
class SpeechEnded:
    turn_id: str
    at_ms: int
    speech_ms: int
    epoch: int


@dataclass(frozen=True, slots=True)
class PausePlayout:
    """Command: stop sending agent audio now, keep it buffered."""

    at_ms: int
    agent_turn_id: str | None
    epoch: int
    onset_ms: int | None = None  # the speech onset that caused it


@dataclass(frozen=True, slots=True)
class ResumePlayout:
    """Command: the suspected barge-in was not one; play on from where it paused."""

    at_ms: int
    speech_ms: int
    agent_turn_id: str | None
    epoch: int


@dataclass(frozen=True, slots=True)
class BargeIn:
    """Committed barge-in; ``epoch`` is the new epoch."""

    at_ms: int
    speech_ms: int
    agent_turn_id: str | None
    epoch: int


@dataclass(frozen=True, slots=True)
class RunTurnModel:
    """Ask the end-of-turn model about the turn's audio from ``start_ms`` to ``end_ms``."""

    request_id: int
    turn_id: str
    start_ms: int
    end_ms: int


@dataclass(frozen=True, slots=True)
class TurnEnded:
    """The caller's turn is over: capture ``start_ms``..``speech_end_ms`` (plus padding) as an utterance."""

    turn_id: str
    start_ms: int
    speech_end_ms: int
    decided_ms: int
    reason: EndOfTurn
    epoch: int

    @property
    def end_of_turn_ms(self) -> int:
        return self.decided_ms - self.speech_end_ms


@dataclass(frozen=True, slots=True)
class SegmentDiscarded:
    """A short segment over the agent's speech (backchannel, cough) was dropped, not a turn."""

    turn_id: str
    at_ms: int
    speech_ms: int


@dataclass(frozen=True, slots=True)
class WordsWeighed:
    """What the turn's words did (metrics only): ``held_unfinished`` they kept open a turn the model or the hangover
    would have ended, ``held_resumed`` the caller went on after such a hold, ``ended_finished`` they ended the turn,
    ``agreed`` the model's "complete" and finished words ended it together, ``missing`` a "complete" waited for them
    in vain (``words_wait_ms``), ``stale`` they covered an earlier pause, ``late`` the turn was over."""

    turn_id: str
    outcome: WordsOutcome


Decision = (
    SpeechBegan | SpeechPaused | SpeechEnded | PausePlayout | ResumePlayout | BargeIn | RunTurnModel | TurnEnded
    | SegmentDiscarded | WordsWeighed
)


# ---------------------------------------------------------------- state
@dataclass(slots=True)
class _Turn:
    turn_id: str
    start_ms: int
    speech_end_ms: int | None = None  # offset of the last segment; None while the caller speaks
    model_request: int | None = None  # request asked about the current pause
    model_complete: bool = False  # the model said "complete" about the current pause (held by words, or awaiting them)
    # the question asked at the pause (``model_at_pause``): its id, the last speech it heard, and a "complete" answer
    pause_request: int | None = None
    pause_heard_ms: int = -1
    pause_complete: bool = False
    held: bool = False  # unfinished words kept the current pause from ending the turn
    words: tuple[int, bool] | None = None  # the latest words: (end of their audio, sound finished)
    voiced_ms: int = 0  # voiced speech of the turn's finished segments


@dataclass(slots=True)
class _Barge:
    onset_ms: int
    new_turn: bool  # the segment began the turn: discard the turn if it stops short
    agent_turn_id: str | None


def _new_id() -> str:
    return uuid4().hex


class TurnDetector:
    """The turn-taking state machine of one call (see module docstring)."""

    def __init__(
        self,
        turn: TurnThresholds | None = None,
        params: DetectorParams | None = None,
        *,
        new_id: Callable[[], str] = _new_id,
        epoch: int = 0,
    ) -> None:
        self.turn_cfg = turn or TurnThresholds()
        self.params = params or DetectorParams()
        self.epoch = epoch
        self._new_id = new_id
        self._t = 0  # latest media time seen
        # voice activity
        self._speaking = False
        self._above = 0  # consecutive windows over the onset threshold
        self._seg_onset_ms = 0
        self._seg_voiced_ms = 0  # windows at/over `threshold` since the segment's onset
        self._last_speech_ms = 0  # end of the last window at/over `stop_threshold`
        self._last_voiced_ms = 0  # end of the last window at/over `threshold`
        self._seg_paused = False  # SpeechPaused was emitted since the last voiced window
        # turn and barge-in
        self._turn: _Turn | None = None
        self._barge: _Barge | None = None
        self._agent_turns: dict[str, None] = {}  # playout in progress, insertion-ordered
        self._model_requests = 0

    # ------------------------------------------------------------ read-only views
    @property
    def speaking(self) -> bool:
        return self._speaking

    @property
    def agent_speaking(self) -> bool:
        return bool(self._agent_turns)

    @property
    def in_turn(self) -> bool:
        return self._turn is not None

    @property
    def barge_in_pending(self) -> bool:
        return self._barge is not None

    @property
    def turn_start_ms(self) -> int | None:
        return self._turn.start_ms if self._turn else None

    @property
    def turn_id(self) -> str | None:
        return self._turn.turn_id if self._turn else None

    @property
    def now_ms(self) -> int:
        return self._t

    def update_thresholds(self, turn: TurnThresholds) -> None:
        self.turn_cfg = turn

    # ------------------------------------------------------------ inputs
    def on_window(self, probability: float, end_ms: int) -> list[Decision]:
        """One VAD window ending at ``end_ms`` (media time) with speech probability ``probability``."""
        return self._window(probability, end_ms, heard=True)

    def _window(self, probability: float, end_ms: int, *, heard: bool) -> list[Decision]:
        t = end_ms if end_ms > self._t else self._t
        self._t = t
        out: list[Decision] = []
        p = self.params
        if self._speaking:
            if probability >= p.stop_threshold:
                self._last_speech_ms = t
                if probability >= p.threshold:
                    self._seg_voiced_ms += p.window_ms
                    self._last_voiced_ms = t
                    self._seg_paused = False  # speech resumed: the next pause counts again
                if self._barge is not None and self._seg_voiced_ms >= self.turn_cfg.min_barge_in_ms:
                    self._commit_barge_in(t, out)
            turn = self._turn
            barge = self._barge
            if turn is not None and t - turn.start_ms >= p.max_utterance_ms:
                self._cut_max_duration(t, out)
            elif t - self._last_speech_ms >= self._stop_ms() or (
                barge is not None and t - barge.onset_ms >= p.barge_in_max_pause_ms
            ):
                if heard and p.pause_ms >= self._stop_ms():  # the segment ends first: its offset is the pause
                    self._pause(out)
                self._offset(out)
                self._check_silence(t, out)
            elif heard and p.pause_ms and t - self._last_speech_ms >= p.pause_ms:
                self._pause(out)
        else:
            barge_mode = self.agent_speaking and self.turn_cfg.interruptible
            threshold = p.barge_in_threshold if barge_mode else p.threshold
            needed = p.barge_in_onset_windows if barge_mode else p.onset_windows
            self._above = self._above + 1 if probability >= threshold else 0
            if self._above >= needed:
                self._onset(t - self._above * p.window_ms, t, out)
            else:
                self._check_silence(t, out)
        return out

    def tick(self, now_ms: int) -> list[Decision]:
        """Time passed with no audio (stalled stream): evaluate the timers as silence. A stall is no pause
        (``SpeechPaused``): no audio says the caller stopped, and there is none to decode."""
        if now_ms <= self._t:
            return []
        return self._window(0.0, now_ms, heard=False)

    def playout_started(self, agent_turn_id: str | None, epoch: int) -> list[Decision]:
        """Agent audio of ``agent_turn_id`` started reaching the caller."""
        out: list[Decision] = []
        if epoch < self.epoch:  # a turn cancelled by a barge-in, still in flight
            return out
        was_speaking = self.agent_speaking
        self._agent_turns[agent_turn_id or ""] = None
        if (
            not was_speaking
            and self.turn_cfg.interruptible
            and self._speaking
            and self._barge is None
            and self._turn is not None
        ):
            # The caller is mid-sentence as the agent starts: treat it as a barge-in from now on,
            # but the caller's turn began first, so it is never discarded.
            self._barge = _Barge(self._seg_onset_ms, new_turn=False, agent_turn_id=agent_turn_id)
            out.append(PausePlayout(self._t, agent_turn_id, self.epoch))
            if self._seg_voiced_ms >= self.turn_cfg.min_barge_in_ms:
                self._commit_barge_in(self._t, out)
        return out

    def playout_finished(self, agent_turn_id: str | None) -> list[Decision]:
        """All agent audio of ``agent_turn_id`` has played or was cleared."""
        self._agent_turns.pop(agent_turn_id or "", None)
        return []

    def on_turn_model(self, request_id: int, complete: bool) -> list[Decision]:
        """The turn model's answer to ``RunTurnModel(request_id)``; stale answers are ignored. "complete" ends the
        turn unless the words of this pause sound unfinished."""
        out: list[Decision] = []
        turn = self._turn
        if turn is not None and request_id == turn.pause_request:
            if complete and self._pause_question_holds(turn):
                turn.pause_complete = True
                if not self._speaking:  # the segment has ended: as the answer to the question at its end
                    self._check_silence(self._t, out)
            return out
        if (
            complete
            and turn is not None
            and not self._speaking
            and turn.model_request == request_id
            and turn.speech_end_ms is not None
        ):
            turn.model_complete = True
            self._settle_complete(turn, out)  # without words yet: on_transcript or the wait's bound ends it
        return out

    def on_transcript(self, turn_id: str, end_ms: int, finished: bool | None) -> list[Decision]:
        """The likely final transcript of ``turn_id``, its audio decoded up to ``end_ms``, whose words sound
        ``finished`` (``None``: no words, nothing to weigh). Words whose audio ends before the current pause's
        speech offset cover an earlier pause (the caller went on since) and are ignored."""
        out: list[Decision] = []
        turn = self._turn
        if finished is None:  # no words: a "complete" waiting for them need not wait longer
            if (turn is not None and turn.turn_id == turn_id and turn.model_complete and not self._speaking
                    and turn.speech_end_ms is not None and end_ms >= self._words_needed_ms(turn)):
                self._settle_complete(turn, out, wait=False)
            return out
        if turn is None or turn.turn_id != turn_id:
            out.append(WordsWeighed(turn_id, "late"))
            return out
        if end_ms < self._words_needed_ms(turn):
            out.append(WordsWeighed(turn_id, "stale"))
            return out
        if turn.words is None or end_ms >= turn.words[0]:
            turn.words = (end_ms, finished)
        if self._speaking:
            return out  # weighed once the segment ends
        if turn.model_complete:  # held by earlier unfinished words, or waiting for these
            self._settle_complete(turn, out)
            return out
        self._check_silence(self._t, out)
        return out

    def end_of_call(self) -> list[Decision]:
        """The call ended: capture a committed turn in progress (``call_end``), drop anything else."""
        out: list[Decision] = []
        turn = self._turn
        if turn is not None and self._barge is None:
            if self._speaking:
                self._offset(out)
            if self._turn is not None:
                self._end_turn(self._t, "call_end", out)
        self._turn = None
        self._barge = None
        self._speaking = False
        self._agent_turns.clear()
        return out

    # ------------------------------------------------------------ transitions
    def _pause_offset(self, turn: _Turn) -> int:
        """Speech offset of the current pause (the would-be offset while the caller still counts as speaking)."""
        if self._speaking or turn.speech_end_ms is None:
            return max(self._seg_onset_ms, self._last_speech_ms - self.params.offset_lag_ms)
        return turn.speech_end_ms

    def _words_needed_ms(self, turn: _Turn) -> int:
        """How far words must reach to cover the current pause: its speech offset, or the end of the last voiced
        window when that is earlier. Sound that stays between the thresholds after the pause (a breath, a faint
        tail) moves the offset but makes no new pause and so no new words: the pause's words still hold every
        voiced word of it (2026-12-03: 12 turns in about 100, over two bench runs, waited in vain until
        ``words_wait_ms``)."""
        return min(self._pause_offset(turn), self._last_voiced_ms)

    def _words(self, turn: _Turn) -> bool | None:
        """Whether the words of the current pause sound finished; ``None``: no words cover it."""
        words = turn.words
        if words is None or turn.speech_end_ms is None or words[0] < self._words_needed_ms(turn):
            return None
        return words[1]

    def _awaits_words(self, turn: _Turn) -> bool:
        """A "complete" about the current pause still waits for its words (``words_wait_ms``)."""
        wait = self.params.words_wait_ms
        return wait > 0 and turn.speech_end_ms is not None and self._t - turn.speech_end_ms < wait

    def _settle_complete(self, turn: _Turn, out: list[Decision], *, wait: bool = True,
                         no_words: WordsOutcome | None = None) -> None:
        """The model said "complete" about the current pause (the segment has ended): finished words end the turn
        (``agreed``), unfinished ones hold it, and without words it ends (``no_words``) unless ``wait`` and
        ``words_wait_ms`` leave time for them to come."""
        words = self._words(turn)
        if words:
            self._end_turn(self._t, "model", out, "agreed")
        elif words is False:
            self._hold(turn, out)
        elif not (wait and self._awaits_words(turn)):
            self._end_turn(self._t, "model", out, no_words)

    def _hold(self, turn: _Turn, out: list[Decision]) -> None:
        if not turn.held:
            turn.held = True
            out.append(WordsWeighed(turn.turn_id, "held_unfinished"))

    def _pause(self, out: list[Decision]) -> None:
        turn = self._turn
        if (
            self._seg_paused
            or not self.params.pause_ms
            or self._barge is not None
            or turn is None
            or turn.voiced_ms + self._seg_voiced_ms < self.params.min_turn_speech_ms
        ):
            return
        self._seg_paused = True
        at_ms = max(self._seg_onset_ms, self._last_speech_ms - self.params.offset_lag_ms)
        out.append(SpeechPaused(turn.turn_id, at_ms, at_ms - self._seg_onset_ms, self.epoch))
        if self.params.use_turn_model and self.params.model_at_pause and self.params.pause_ms < self._stop_ms():
            self._model_requests += 1
            turn.pause_request, turn.pause_heard_ms = self._model_requests, self._last_speech_ms
            turn.pause_complete = False
            out.append(RunTurnModel(self._model_requests, turn.turn_id, turn.start_ms, self._t))

    def _stop_ms(self) -> int:
        if self._barge is not None:
            # words of one interruption ("Wait, sorry, can you…") are separated by short pauses:
            # keep counting voiced speech across them instead of resuming between words
            return max(self.params.speech_stop_ms, self.params.barge_in_gap_ms)
        return min(self.params.speech_stop_ms, self.turn_cfg.min_turn_silence_ms)

    def _onset(self, at_ms: int, t: int, out: list[Decision]) -> None:
        at_ms = max(at_ms, 0)
        self._speaking = True
        self._above = 0
        self._seg_onset_ms = at_ms
        self._seg_voiced_ms = t - at_ms
        self._last_speech_ms = self._last_voiced_ms = t
        self._seg_paused = False
        turn = self._turn
        new_turn = turn is None
        held = False
        if turn is None:
            turn = self._turn = _Turn(self._new_id(), at_ms)
        else:  # speech resumed within the turn: the pending pause no longer counts
            held = turn.held
            self._new_pause(turn)
            turn.speech_end_ms = None
        agent = self.agent_speaking
        if agent and self.turn_cfg.interruptible and self._barge is None:
            agent_turn = next(reversed(self._agent_turns)) or None
            self._barge = _Barge(at_ms, new_turn=new_turn, agent_turn_id=agent_turn)
            out.append(PausePlayout(t, agent_turn, self.epoch, onset_ms=at_ms))  # first: it is urgent
        out.append(SpeechBegan(turn.turn_id, at_ms, agent, self.epoch))
        if held:  # the unfinished words were right: the caller went on
            out.append(WordsWeighed(turn.turn_id, "held_resumed"))

    def _offset(self, out: list[Decision]) -> None:
        self._speaking = False
        self._above = 0
        offset = max(self._seg_onset_ms, self._last_speech_ms - self.params.offset_lag_ms)
        speech_ms = offset - self._seg_onset_ms
        turn = self._turn
        assert turn is not None
        out.append(SpeechEnded(turn.turn_id, offset, speech_ms, self.epoch))
        barge = self._barge
        if barge is not None:  # stopped short of a barge-in
            self._barge = None
            out.append(ResumePlayout(self._t, speech_ms, barge.agent_turn_id, self.epoch))
            if barge.new_turn and self.agent_speaking:
                out.append(SegmentDiscarded(turn.turn_id, self._seg_onset_ms, speech_ms))
                self._turn = None
                return
        turn.speech_end_ms = offset
        self._new_pause(turn)
        turn.voiced_ms += self._seg_voiced_ms

    def _pause_question_holds(self, turn: _Turn) -> bool:
        """The question asked at the pause heard all the speech of the pause: no window at or above the stop
        threshold since (any speech, even faint, moves ``_last_speech_ms``), so its answer still holds."""
        return turn.pause_request is not None and turn.pause_heard_ms == self._last_speech_ms

    @staticmethod
    def _new_pause(turn: _Turn) -> None:
        """What was decided about the previous pause no longer counts (the words are checked against each pause)."""
        turn.model_request = None
        turn.model_complete = False
        turn.held = False

    def _commit_barge_in(self, t: int, out: list[Decision]) -> None:
        barge = self._barge
        assert barge is not None
        self._barge = None
        speech_ms = t - barge.onset_ms
        if self.agent_speaking:
            self.epoch += 1
            self._agent_turns.clear()  # ingress clears playout on BargeIn
            out.append(BargeIn(barge.onset_ms, speech_ms, barge.agent_turn_id, self.epoch))
        else:  # the agent finished meanwhile: nothing to cut, just lift the pause
            out.append(ResumePlayout(t, speech_ms, barge.agent_turn_id, self.epoch))

    def _check_silence(self, t: int, out: list[Decision]) -> None:
        turn = self._turn
        if turn is None or turn.speech_end_ms is None:
            return
        silence = t - turn.speech_end_ms
        words = self._words(turn)
        hangover = self.turn_cfg.end_of_turn_ms
        if words is False and hangover < self.params.unfinished_end_of_turn_ms:
            if silence >= hangover:
                self._hold(turn, out)
            hangover = self.params.unfinished_end_of_turn_ms
        if silence >= hangover:
            self._end_turn(t, "silence", out)
        elif words and silence >= self.params.finished_end_of_turn_ms:
            self._end_turn(t, "transcript", out, "ended_finished")
        elif turn.model_complete and words is None:
            self._settle_complete(turn, out, no_words="missing")  # waited for the words in vain once the bound is up
        elif t - turn.start_ms >= self.params.max_utterance_ms:
            self._end_turn(t, "max_duration", out)
        elif (
            turn.pause_complete
            and words is not None
            and not turn.model_complete
            and silence >= self.turn_cfg.min_turn_silence_ms
            and self._pause_question_holds(turn)
        ):  # the model said "complete" at the pause, and the words of the pause are in: as its answer at the segment's
            # end. Without words it waits for them or for that answer (2026-12-03: ending on the pause's "complete"
            # before the words came cut off 7 of 8 sentences broken off after "for", against 4 of 8 without it)
            turn.model_complete, turn.model_request = True, turn.pause_request
            if words is False:
                self._hold(turn, out)
            else:
                self._end_turn(t, "model", out, "agreed")
        elif (
            self.params.use_turn_model
            and turn.model_request is None
            and silence >= self.turn_cfg.min_turn_silence_ms
        ):
            self._model_requests += 1
            turn.model_request = self._model_requests
            out.append(RunTurnModel(self._model_requests, turn.turn_id, turn.start_ms, t))

    def _cut_max_duration(self, t: int, out: list[Decision]) -> None:
        """The caller has spoken for ``max_utterance_ms``: ship what we have, keep listening."""
        turn = self._turn
        assert turn is not None
        out.append(TurnEnded(turn.turn_id, turn.start_ms, t, t, "max_duration", self.epoch))
        # the speech goes on as a fresh turn (no new onset event: the caller never paused)
        self._turn = _Turn(self._new_id(), t)
        self._seg_onset_ms = t
        self._seg_voiced_ms = 0
        self._seg_paused = False

    def _end_turn(self, t: int, reason: EndOfTurn, out: list[Decision], words: WordsOutcome | None = None) -> None:
        turn = self._turn
        assert turn is not None
        speech_end = turn.speech_end_ms if turn.speech_end_ms is not None else t
        self._turn = None
        if turn.voiced_ms < self.params.min_turn_speech_ms:
            out.append(SegmentDiscarded(turn.turn_id, turn.start_ms, speech_end - turn.start_ms))
            return
        out.append(TurnEnded(turn.turn_id, turn.start_ms, speech_end, t, reason, self.epoch))
        if words is not None:
            out.append(WordsWeighed(turn.turn_id, words))
