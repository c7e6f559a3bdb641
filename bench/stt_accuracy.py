"""`make bench-stt`: word error rate and latency of each speech-to-text engine on a fixed phone test set.

    .venv/bin/python -m bench.stt_accuracy [--engines whisper,whisper@15,moonshine] [--voices joe-0.85,joe-1.0,...]

The set: ``SENTENCES`` (35 phone-style sentences: numbers, names, yes/no, addresses, dates, times), each
synthesised with every voice (piper joe at three speeds; espeak-ng when installed, a very different and harder
voice), resampled to 8 kHz, through G.711 μ-law (ingress's own tables) with light noise (seeded), and back to
16 kHz as ingress hands it to the platform. Every engine transcribes the same clips, one at a time, on the
engine's worker thread settings; the time is the engine's own ``_transcribe`` call (no bus, no queue).

WER: word edit distance over reference words, after number normalisation (every number, written or spoken, as
its digits one per token: "42", "forty-two" and "forty two" alike, "472915" = "4 7 2 9 1 5"), summed over the
set (total edits / total reference words) and per voice. Latency:
p50/p95 with n, and the real-time factor (transcription time / audio time). The report is written to
``bench/results/latest-stt.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import shutil
import subprocess
import tempfile
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .stats import summary

SENTENCES = [
    "My account number is 4 7 2 9 1 5.",
    "Yes, that is correct.",
    "No, I don't want that.",
    "I live at 221 Baker Street, apartment 4.",
    "Can I book a table for 6 people at 7:30 tonight?",
    "My name is Sarah Johnson.",
    "The order number is 58213.",
    "I'd like to cancel my appointment on Friday.",
    "Please call me back at 555 0192.",
    "It costs 45 dollars and 99 cents.",
    "My date of birth is March 14th, 1987.",
    "I need to speak to a manager.",
    "The postcode is 90210.",
    "Could you repeat that, please?",
    "We will arrive on the 3rd of June.",
    "I've been waiting for 20 minutes.",
    "Send it to 1600 Pennsylvania Avenue.",
    "My card ends in 3 3 0 8.",
    "Sure, go ahead.",
    "I'm calling about my delivery from Tuesday.",
    "Is the pharmacy open until 9 pm?",
    "Spell it J O H N.",
    "My flight is UA 512 to Denver.",
    "I would like two large pizzas and a salad.",
    "The reference is B as in bravo, 7, 7, 2.",
    "Michael Chen, that's C H E N.",
    "No thanks, that's all.",
    "I moved to 14 Elm Road last month.",
    "My policy number is 88 41 23.",
    "Yes please, book it for next Wednesday at 10.",
    "How much is the monthly plan?",
    "The meeting is at half past 2.",
    "Can you transfer me to billing?",
    "I was charged twice, 150 dollars each time.",
    "Absolutely, thank you very much.",
]

UNITS = {w: i for i, w in enumerate("zero one two three four five six seven eight nine".split())}
TEENS = {w: 10 + i for i, w in enumerate(
    "ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen".split())}
TENS = {w: 10 * i for i, w in enumerate("_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()) if i > 1}
ORDINALS = {"1st": "first", "2nd": "second", "3rd": "third", "4th": "fourth", "5th": "fifth", "14th": "fourteenth"}


def _number_groups(words: list[str]) -> list[int]:
    """Spoken number words → the numbers they say, split where the grammar restarts: "four seven two" is three
    numbers, "two hundred twenty one" one, "nineteen eighty seven" two (19, 87: a year read in pairs)."""
    groups: list[int] = []
    total, cur, started = 0, 0, False

    def close() -> None:
        nonlocal total, cur, started
        if started:
            groups.append(total + cur)
        total, cur, started = 0, 0, False

    for w in words:
        if w in UNITS:
            if started and not (cur % 100 >= 20 and cur % 10 == 0) and not (cur % 100 == 0 and cur > 0):
                close()
            cur += UNITS[w]
        elif w in TEENS or w in TENS:
            if started and not (cur % 100 == 0 and cur > 0):
                close()
            cur += TEENS.get(w, 0) + TENS.get(w, 0)
        elif w == "hundred":
            if cur >= 100:  # "two hundred five hundred": a new number
                close()
            cur = cur * 100 if 0 < cur < 100 else 100
        elif w == "thousand":
            total, cur = total + (cur or 1) * 1000, 0
        started = True
    close()
    return groups


def normalize(text: str) -> list[str]:
    """Lower-case words, punctuation dropped; every number, written or spoken, as its digits one per token
    ("472915", "4 7 2 9 1 5" and "four seven two nine one five" all score alike; "forty-five" = "45"); "p.m." = "pm".
    """
    text = text.lower().replace("p.m.", "pm").replace("a.m.", "am").replace("-", " ")
    words: list[str] = []
    spoken: list[str] = []

    def flush() -> None:
        for n in _number_groups(spoken):
            words.extend(str(n))
        spoken.clear()

    for raw in re.sub(r"[^a-z0-9' ]", " ", text.replace(":", " ")).split():
        word = raw.strip("'")
        if word in UNITS or word in TEENS or word in TENS or (word in ("hundred", "thousand") and spoken):
            spoken.append(word)
            continue
        flush()
        if word in ORDINALS:
            words.append(ORDINALS[word])
        elif word.isdigit():
            words.extend(word)
        elif word:
            words.append(word)
    flush()
    return words


def edits(ref: list[str], hyp: list[str]) -> int:
    d = list(range(len(hyp) + 1))
    for i in range(1, len(ref) + 1):
        prev, d[0] = d[0], i
        for j in range(1, len(hyp) + 1):
            cur = min(d[j] + 1, d[j - 1] + 1, prev + (ref[i - 1] != hyp[j - 1]))
            prev, d[j] = d[j], cur
    return d[len(hyp)]


# ------------------------------------------------------------------ clips
def _espeak(text: str) -> tuple[np.ndarray, int] | None:
    exe = shutil.which("espeak-ng")
    if exe is None:
        return None
    with tempfile.NamedTemporaryFile(suffix=".wav") as f:
        subprocess.run([exe, "-v", "en-us", "-s", "165", "-w", f.name, text], check=True, capture_output=True)
        with wave.open(f.name) as w:
            rate = w.getframerate()
            audio = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32) / 32768
    return audio, rate


def synthesise(text: str, voice: str) -> tuple[np.ndarray, int] | None:
    """Float32 speech and its rate; None when the voice is not available here."""
    if voice == "espeak":
        return _espeak(text)
    from voice_devstack.speech import caller_voice

    speed = float(voice.split("-", 1)[1])
    v = caller_voice()
    return v.float32(text, length_scale=speed), v.sample_rate


def phone_line(audio: np.ndarray, rate: int, rng: np.random.Generator) -> bytes:
    """What ingress hands the platform for this speech on a phone call: 8 kHz μ-law (light line noise) → 16 kHz."""
    import soxr
    from voice_ingress import g711

    narrow = soxr.resample(audio, rate, 8_000, quality="HQ") * 0.7
    narrow = narrow + rng.normal(0, 0.002, narrow.shape)  # about -54 dBFS of hiss
    pcm8 = np.clip(np.rint(narrow * 32767), -32768, 32767).astype(np.int16)
    line = g711.decode(g711.encode(pcm8, "ulaw"), "ulaw").astype(np.float32) / 32768
    pad = np.zeros(1_600, dtype=np.float32)  # 100 ms of line silence each side at 16 kHz
    wide = np.concatenate([pad, soxr.resample(line, 8_000, 16_000, quality="HQ"), pad])
    return np.clip(np.rint(wide * 32767), -32768, 32767).astype("<i2").tobytes()


# ------------------------------------------------------------------ engines
def load_engine(name: str) -> Any:
    if name == "whisper" or name.startswith("whisper@"):  # whisper@15: STT_WHISPER_WINDOW_S=15
        from voice_stt.engines.whisper import WhisperSettings, WhisperSpeechToText

        settings = WhisperSettings()
        if "@" in name:
            settings = settings.model_copy(update={"stt_whisper_window_s": float(name.split("@", 1)[1])})
        engine: Any = WhisperSpeechToText(settings)
    elif name == "moonshine":
        from voice_stt.engines.moonshine import MoonshineSettings, MoonshineSpeechToText

        engine = MoonshineSpeechToText(MoonshineSettings())
    else:
        raise SystemExit(f"unknown engine {name!r} (whisper, whisper@<window s>, moonshine)")
    engine.load()
    engine.warm_up()
    return engine


@dataclass
class EngineResult:
    name: str
    model: str
    ref_words: int = 0
    errors: int = 0
    by_voice: dict[str, list[int]] = field(default_factory=dict)  # voice -> [errors, ref words]
    times_ms: list[float] = field(default_factory=list)
    rtf: list[float] = field(default_factory=list)
    worst: list[tuple[int, str, str, str]] = field(default_factory=list)  # edits, voice, reference, hypothesis

    def wer(self, voice: str | None = None) -> float | None:
        errs, words = (self.by_voice.get(voice, [0, 0]) if voice else [self.errors, self.ref_words])
        return None if not words else errs / words


def run(engines: list[str], voices: list[str], seed: int = 7) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    clips: list[tuple[str, str, bytes]] = []
    skipped: list[str] = []
    for voice in voices:
        for text in SENTENCES:
            made = synthesise(text, voice)
            if made is None:
                skipped.append(voice)
                break
            clips.append((voice, text, phone_line(made[0], made[1], rng)))
    results: list[EngineResult] = []
    for name in engines:
        engine = load_engine(name)
        res = EngineResult(name, engine.model_name)
        for voice, text, pcm in clips:
            start = time.perf_counter()
            got = engine._transcribe(pcm, 16_000, "en")  # the engine's own work, no queue
            took = (time.perf_counter() - start) * 1000
            ref, hyp = normalize(text), normalize(got.text)
            e = edits(ref, hyp)
            res.errors += e
            res.ref_words += len(ref)
            tally = res.by_voice.setdefault(voice, [0, 0])
            tally[0] += e
            tally[1] += len(ref)
            res.times_ms.append(took)
            res.rtf.append(took / 1000 / (len(pcm) / 2 / 16_000))
            if e:
                res.worst.append((e, voice, text, got.text))
        engine.close()
        res.worst.sort(key=lambda w: -w[0])
        results.append(res)
    return {"clips": len(clips), "sentences": len(SENTENCES), "voices": [v for v in voices if v not in skipped],
            "skipped_voices": skipped, "results": results}


def report(out: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    results: list[EngineResult] = out["results"]
    voices: list[str] = out["voices"]
    data: dict[str, Any] = {"machine": platform.processor() or platform.machine(), "clips": out["clips"],
                            "voices": voices, "skipped_voices": out["skipped_voices"], "engines": {}}
    lines = [f"# STT bench — {time.strftime('%Y-%m-%dT%H:%M:%S%z')}", "",
             f"{out['sentences']} phone sentences x {len(voices)} voices = {out['clips']} clips, each through 8 kHz "
             "G.711 μ-law with light noise and back to 16 kHz; every engine on the same clips, one at a time."]
    if out["skipped_voices"]:
        lines.append(f"Voices not available here (left out): {', '.join(out['skipped_voices'])}.")
    lines += ["", "## Headline", ""]
    for r in results:
        t = summary(r.times_ms)
        rtf = summary(r.rtf, ndigits=3)
        wer = r.wer() or 0.0
        lines.append(f"- {r.name} ({r.model}): WER {100 * wer:.1f}% ({r.errors} edits / {r.ref_words} words); "
                     f"time p50 {t['p50']} ms, p95 {t['p95'] if t['p95'] is not None else 'n too small'} ms "
                     f"(n={t['n']}); real-time factor p50 {rtf['p50']}")
        data["engines"][r.name] = {"model": r.model, "wer": wer, "errors": r.errors, "ref_words": r.ref_words,
                                   "wer_by_voice": {v: r.wer(v) for v in voices}, "time_ms": t, "rtf": rtf,
                                   "worst": [list(w) for w in r.worst[:10]]}
    lines += ["", "## WER by voice", "", "| engine | " + " | ".join(voices) + " | all |",
              "|---|" + "---:|" * (len(voices) + 1)]
    for r in results:
        cells = [f"{100 * (r.wer(v) or 0):.1f}%" for v in voices]
        lines.append(f"| {r.name} | " + " | ".join(cells) + f" | {100 * (r.wer() or 0):.1f}% |")
    lines += ["", "## Worst clips (edits, voice, reference → hypothesis)", ""]
    for r in results:
        for e, voice, ref, hyp in r.worst[:5]:
            lines.append(f"- {r.name}: {e}, {voice}: “{ref}” → “{hyp}”")
    return "\n".join(lines) + "\n", data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engines", default="whisper,moonshine")
    parser.add_argument("--voices", default="joe-0.85,joe-1.0,joe-1.2,espeak")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    out = run([e.strip() for e in args.engines.split(",") if e.strip()],
              [v.strip() for v in args.voices.split(",") if v.strip()])
    md, data = report(out)
    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "latest-stt.md").write_text(md)
    (folder / "latest-stt.json").write_text(json.dumps(data, indent=2) + "\n")
    print(md)


if __name__ == "__main__":
    main()
