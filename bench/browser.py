"""Browser calls: voice-to-voice measured in the page, with headless Chromium on the console's "talk" page.

Chromium's fake microphone plays a WAV made here (piper's caller voice): leading silence long enough for the
greeting, then each question followed by silence for the reply (``--use-file-for-fake-audio-capture=<wav>%noloop``;
with ``%noloop`` Chromium repeats the file's *last buffer* once the file is over, so the file ends in silence).
The fake device starts the file when the page opens the microphone, and the page says when that was
(``talkTimeline().micStartedAt``), so the end of each question is known on the page's clock: ``micStartedAt`` + its
offset in the file (measured: within ~50 ms). The page records the agent's audio as it receives it
(``receivedAudioWav()``) and stamps each recorded block with ``Date.now()`` (``talkTimeline().clock``), which puts
every received sample on the same clock. Voice-to-voice per turn = first agent audio received after the end of the
question minus the end of the question. A turn where the agent was still audible when the question ended, or where no
agent audio came before the next question, is missing (None), never 0.

The pure parts (the microphone script, the recording's clock, agent audio segments, per-turn figures) are unit
tested in tests/unit/test_bench_browser.py; tests/e2e/test_browser_call.py drives one call through the whole
platform with the same code.
"""

from __future__ import annotations

import base64
import contextlib
import io
import os
import re
import shutil
import tempfile
import time
import wave
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .stats import summary

MIC_RATE = 48_000  # the fake microphone's WAV (Chromium's capture rate: no resampling in the browser)
BLOCK_S = 0.02  # agent audio is judged in 20 ms blocks
LOUD_RMS = 0.01  # a block above this (full scale 1.0, about -40 dBFS) is agent audio, not silence or codec noise
MERGE_GAP_S = 0.4  # pauses shorter than this (between words and sentences) do not split a stretch of agent audio
CLOCK_WINDOW_S = 10.0  # a sample's time comes from the least delayed recorded block within this distance


# --------------------------------------------------------------------------- the fake microphone
@dataclass
class MicScript:
    """What the fake microphone plays: PCM16 mono at ``rate`` and where each utterance lies in it (seconds)."""

    pcm: np.ndarray
    rate: int
    speech: list[tuple[float, float]]  # (start, end) of each utterance, seconds from the start of the file

    @property
    def seconds(self) -> float:
        return len(self.pcm) / self.rate

    def wav(self) -> bytes:
        return wav_bytes(self.pcm, self.rate)


def build_mic_script(
    utterances: Sequence[np.ndarray], rate: int, *, lead_s: float, gaps_s: float | Sequence[float]
) -> MicScript:
    """``lead_s`` of silence, then each utterance (int16 at ``rate``, trimmed of silence) followed by its gap of
    silence (one value for all, or one per utterance). The last gap is the file's tail: it must be silence, since
    Chromium repeats the last buffer of a ``%noloop`` file."""
    if lead_s < 0:
        raise ValueError("lead_s must be >= 0")
    gaps = [float(gaps_s)] * len(utterances) if isinstance(gaps_s, (int, float)) else [float(g) for g in gaps_s]
    if len(gaps) != len(utterances):
        raise ValueError(f"{len(utterances)} utterances but {len(gaps)} gaps")
    if any(g < 0.5 for g in gaps):
        raise ValueError("every gap must be at least 0.5 s (the file must end in silence)")
    parts: list[np.ndarray] = [np.zeros(round(lead_s * rate), dtype=np.int16)]
    speech: list[tuple[float, float]] = []
    at = len(parts[0])
    for u, gap in zip(utterances, gaps, strict=True):
        u = np.asarray(u, dtype=np.int16)
        if len(u) == 0:
            raise ValueError("an utterance is empty")
        speech.append((at / rate, (at + len(u)) / rate))
        silence = np.zeros(round(gap * rate), dtype=np.int16)
        parts += [u, silence]
        at += len(u) + len(silence)
    return MicScript(np.concatenate(parts), rate, speech)


def caller_utterance(text: str, rate: int = MIC_RATE) -> np.ndarray:
    """``text`` in the caller's piper voice at ``rate``, trimmed of leading and trailing silence."""
    import soxr
    from voice_devstack.speech import caller_voice

    from .speech import trim_silence

    voice = caller_voice()
    pcm = trim_silence(voice.int16(text), voice.sample_rate)
    return np.asarray(soxr.resample(pcm, voice.sample_rate, rate), dtype=np.int16)


def wav_bytes(pcm: np.ndarray, rate: int) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.asarray(pcm, dtype=np.int16).tobytes())
    return buf.getvalue()


def read_wav(data: bytes) -> tuple[np.ndarray, int]:
    """A mono PCM16 WAV as float samples in [-1, 1] and its rate."""
    with wave.open(io.BytesIO(data)) as w:
        if (w.getnchannels(), w.getsampwidth()) != (1, 2):
            raise ValueError("expected a mono 16-bit WAV")
        rate = w.getframerate()
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
    return pcm.astype(np.float64) / 32768.0, rate


# --------------------------------------------------------------------------- the page's recording
@dataclass
class PageRecording:
    """What the page received, and its clock (see the module docstring)."""

    pcm: np.ndarray  # float in [-1, 1]
    rate: int
    mic_started_at_ms: float | None
    clock: list[tuple[int, float]]  # (end sample of a recorded block, Date.now() when it was recorded)
    call_id: str | None = None

    def wall_ms(self, sample: float) -> float | None:
        """When sample ``sample`` was received (ms since the epoch): from the least delayed block near it (a
        block is stamped when the page gets it, never before it was received)."""
        if not self.clock:
            return None
        near = [
            at - (end - sample) * 1000.0 / self.rate
            for end, at in self.clock
            if abs(end - sample) <= CLOCK_WINDOW_S * self.rate
        ]
        if not near:
            end, at = min(self.clock, key=lambda c: abs(c[0] - sample))
            near = [at - (end - sample) * 1000.0 / self.rate]
        return min(near)

    def sample_at(self, wall_ms: float) -> float | None:
        """The recording's sample index received at ``wall_ms`` (inverse of ``wall_ms``; may lie outside it)."""
        if not self.clock:
            return None
        guess = self.clock[0][0] + (wall_ms - self.clock[0][1]) * self.rate / 1000.0
        for _ in range(3):  # the clock is piecewise linear with slope 1: converges at once unless blocks were lost
            w = self.wall_ms(guess)
            if w is None:
                return None
            guess += (wall_ms - w) * self.rate / 1000.0
        return guess

    def mic_wall_ms(self, offset_s: float) -> float | None:
        """When the fake microphone played ``offset_s`` of its file."""
        return None if self.mic_started_at_ms is None else self.mic_started_at_ms + offset_s * 1000.0


def agent_segments(
    pcm: np.ndarray, rate: int, *, loud_rms: float = LOUD_RMS, merge_gap_s: float = MERGE_GAP_S
) -> list[tuple[int, int]]:
    """Stretches of agent audio in a recording: (first sample, end sample) of runs of 20 ms blocks above
    ``loud_rms``, pauses shorter than ``merge_gap_s`` bridged."""
    block = max(1, round(BLOCK_S * rate))
    n = len(pcm) // block
    if n == 0:
        return []
    x = np.asarray(pcm[: n * block], dtype=np.float64).reshape(n, block)
    loud = np.sqrt(np.mean(x * x, axis=1)) > loud_rms
    segs: list[tuple[int, int]] = []
    i = 0
    while i < n:
        if not loud[i]:
            i += 1
            continue
        j = i
        while j < n and loud[j]:
            j += 1
        segs.append((i * block, j * block))
        i = j
    merged: list[tuple[int, int]] = []
    for s, e in segs:
        if merged and s - merged[-1][1] < merge_gap_s * rate:
            merged[-1] = (merged[-1][0], e)
        else:
            merged.append((s, e))
    return merged


@dataclass
class BrowserTurn:
    question_end_s: float  # offset of the end of the question in the microphone's file
    v2v_ms: float | None  # end of the question -> first agent audio received by the page
    why_missing: str | None = None


def turn_v2v(rec: PageRecording, script: MicScript, *, reply_timeout_s: float = 30.0) -> list[BrowserTurn]:
    """Voice-to-voice per question, on the page's clock (see the module docstring)."""
    segs = agent_segments(rec.pcm, rec.rate)
    turns: list[BrowserTurn] = []
    for k, (_, end_s) in enumerate(script.speech):
        end_wall = rec.mic_wall_ms(end_s)
        end_sample = None if end_wall is None else rec.sample_at(end_wall)
        if end_wall is None or end_sample is None:
            turns.append(BrowserTurn(end_s, None, "the page has no clock for the microphone or the recording"))
            continue
        if end_sample > len(rec.pcm):
            turns.append(BrowserTurn(end_s, None, "the recording ended before the question did"))
            continue
        limit_s = script.speech[k + 1][0] if k + 1 < len(script.speech) else end_s + reply_timeout_s
        limit_sample = rec.sample_at(end_wall + (min(limit_s, end_s + reply_timeout_s) - end_s) * 1000.0)
        if any(s <= end_sample < e for s, e in segs):
            turns.append(BrowserTurn(end_s, None, "the agent was audible when the question ended"))
            continue
        after = [s for s, _ in segs if s >= end_sample and (limit_sample is None or s < limit_sample)]
        if not after:
            turns.append(BrowserTurn(end_s, None, "no agent audio before the next question or the timeout"))
            continue
        onset_wall = rec.wall_ms(after[0])
        turns.append(BrowserTurn(end_s, None if onset_wall is None else round(onset_wall - end_wall, 1)))
    return turns


def first_audio_ms(rec: PageRecording) -> float | None:
    """Microphone opened (the call starting) -> first agent audio received: signalling, ICE, DTLS and greeting."""
    segs = agent_segments(rec.pcm, rec.rate)
    if not segs or rec.mic_started_at_ms is None:
        return None
    at = rec.wall_ms(segs[0][0])
    return None if at is None else round(at - rec.mic_started_at_ms, 1)


# --------------------------------------------------------------------------- driving Chromium
def chromium_path(explicit: str | None = None) -> str | None:
    return explicit or os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or shutil.which("chromium-browser")


def chromium_args(mic_wav: Path) -> list[str]:
    args = [
        "--use-fake-ui-for-media-stream",  # grant the microphone without a prompt
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={mic_wav}%noloop",  # the file once, from when the page opens the mic
        "--autoplay-policy=no-user-gesture-required",
        # WebRTC on one machine: real host addresses (not mDNS names) and loopback in the candidates
        "--allow-loopback-in-peer-connection",
        "--disable-features=WebRtcHideLocalIpsWithMdns",
    ]
    if os.geteuid() == 0:
        args.append("--no-sandbox")  # Chromium refuses to run as root with its sandbox
    return args


@contextlib.asynccontextmanager
async def launch(chromium: str, script: MicScript) -> AsyncIterator[Any]:
    """Headless Chromium whose microphone plays ``script``: yields a Playwright ``Browser``."""
    from playwright.async_api import async_playwright

    with tempfile.TemporaryDirectory(prefix="voice-bench-mic-") as tmp:
        wav = Path(tmp) / "mic.wav"
        wav.write_bytes(script.wav())
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=chromium, headless=True, args=chromium_args(wav))
            try:
                yield browser
            finally:
                await browser.close()


@dataclass
class Credentials:
    api_key: str | None = None
    email: str | None = None
    password: str | None = None

    def usable(self) -> bool:
        return bool(self.api_key or (self.email and self.password))


async def sign_in(page: Any, console_url: str, creds: Credentials) -> None:
    """Sign in on the console's login page (an API key when given, else email and password)."""
    base = console_url.rstrip("/")
    await page.goto(f"{base}/login")
    if creds.api_key:
        form = page.locator("#api-key-form")
        await form.locator("input[name=api_key]").fill(creds.api_key)
        await form.get_by_role("button", name="Sign in with the key").click()
    else:
        form = page.locator("#password-form")
        await form.locator("input[name=email]").fill(creds.email or "")
        await form.locator("input[name=password]").fill(creds.password or "")
        await form.get_by_role("button", name="Sign in").click()
    await page.wait_for_url(re.compile(r".*/agents$"))


async def talk(
    page: Any,
    console_url: str,
    agent_id: str,
    script: MicScript,
    *,
    after_s: float = 0.0,
    connect_timeout_s: float = 30.0,
    hang_up: bool = True,
) -> PageRecording:
    """Open the agent's talk page (``?raw=1``: no echo cancellation, noise suppression or gain control on the fake
    microphone), start the call, let the microphone's file play to its end plus ``after_s``, take the page's
    recording and clock, and hang up."""
    await page.goto(f"{console_url.rstrip('/')}/agents/{agent_id}/talk?raw=1")
    await page.get_by_role("button", name="Start call").click()
    status = page.locator("#talk-status")
    deadline = time.monotonic() + connect_timeout_s
    while (state := await status.get_attribute("data-state")) != "connected":
        if state in ("failed", "ended") or time.monotonic() > deadline:
            error = await page.locator("#talk-error").text_content()
            raise RuntimeError(f"the call did not connect (state {state}): {(error or '').strip()}")
        await page.wait_for_timeout(100)
    timeline = await page.evaluate("window.talkTimeline()")
    started = float(timeline["micStartedAt"])
    while (wait_s := started / 1000.0 + script.seconds + after_s - time.time()) > 0:
        if await status.get_attribute("data-state") != "connected":
            break  # the call ended early: judge what was received
        await page.wait_for_timeout(min(1000, int(wait_s * 1000) + 1))
    rec = await recording(page)
    if hang_up and await status.get_attribute("data-state") == "connected":
        await page.get_by_role("button", name="Hang up").click()
    return rec


async def recording(page: Any) -> PageRecording:
    data = base64.b64decode(await page.evaluate("window.receivedAudioWav()"))
    timeline = await page.evaluate("window.talkTimeline()")
    state = await page.evaluate("window.talkState()")
    pcm, rate = read_wav(data)
    mic = timeline.get("micStartedAt")
    return PageRecording(
        pcm,
        rate,
        None if mic is None else float(mic),
        [(int(e), float(a)) for e, a in timeline.get("clock") or []],
        state.get("callId"),
    )


# --------------------------------------------------------------------------- the bench phase
@dataclass
class BrowserCallResult:
    call_id: str | None = None
    first_audio_ms: float | None = None
    turns: list[BrowserTurn] = field(default_factory=list)
    error: str | None = None


def figures(calls: list[BrowserCallResult]) -> dict[str, Any]:
    turns = [t for c in calls for t in c.turns]
    reasons: dict[str, int] = {}
    for t in turns:
        if t.why_missing:
            reasons[t.why_missing] = reasons.get(t.why_missing, 0) + 1
    return {
        "calls": len(calls),
        "calls_failed": sum(1 for c in calls if c.error),
        "errors": sorted({c.error for c in calls if c.error})[:10],
        "turns": len(turns),
        "turns_without_reply": sum(1 for t in turns if t.v2v_ms is None),
        "missing_reasons": reasons,
        "voice_to_voice_ms": summary(t.v2v_ms for t in turns),
        "first_audio_ms": summary(c.first_audio_ms for c in calls),
    }


async def browser_phase(
    console_url: str,
    agent_id: str,
    creds: Credentials,
    questions: Sequence[str],
    *,
    calls: int,
    turns: int,
    lead_s: float,
    gap_s: float,
    chromium: str | None,
    reply_timeout_s: float = 30.0,
    log: Any = print,
) -> dict[str, Any]:
    """``calls`` browser calls one after another, ``turns`` questions each: voice-to-voice measured in the page."""
    out_calls: list[BrowserCallResult] = []
    exe = chromium_path(chromium)
    if exe is None:
        return {**figures([]), "skipped": "no Chromium (apt-get install chromium, or --chromium / CHROMIUM_PATH)"}
    if not creds.usable():
        return {
            **figures([]),
            "skipped": "no console credentials (--console-key, or the first admin's email and "
            "password: --console-email/--console-password or its password file)",
        }
    for k in range(calls):
        mine = [questions[(k * turns + j) % len(questions)] for j in range(turns)]
        script = build_mic_script([caller_utterance(q) for q in mine], MIC_RATE, lead_s=lead_s, gaps_s=gap_s)
        result = BrowserCallResult()
        try:
            async with launch(exe, script) as browser:
                ctx = await browser.new_context()
                ctx.set_default_timeout(30_000)
                page = await ctx.new_page()
                await sign_in(page, console_url, creds)
                rec = await talk(page, console_url, agent_id, script)
                result.call_id = rec.call_id
                result.first_audio_ms = first_audio_ms(rec)
                result.turns = turn_v2v(rec, script, reply_timeout_s=reply_timeout_s)
                await ctx.close()
        except Exception as e:  # one failed call is a figure too
            result.error = f"{type(e).__name__}: {e}"[:300]
        log(
            f"  browser call {k + 1}/{calls} {result.call_id}: first audio {result.first_audio_ms} ms, "
            f"v2v {[t.v2v_ms for t in result.turns]}" + (f", error: {result.error}" if result.error else "")
        )
        out_calls.append(result)
    rep = figures(out_calls)
    rep["calls_detail"] = [
        {
            "call_id": c.call_id,
            "first_audio_ms": c.first_audio_ms,
            "error": c.error,
            "turns": [
                {"question_end_s": round(t.question_end_s, 3), "v2v_ms": t.v2v_ms, "why_missing": t.why_missing}
                for t in c.turns
            ],
        }
        for c in out_calls
    ]
    return rep
