"""G.711 tables and the telephone codec: exact against the ITU reference values (and ``audioop`` where it
still exists), and exact 20 ms framing both ways."""

from __future__ import annotations

import sys
import warnings

import numpy as np
import pytest
from voice_ingress import g711
from voice_ingress.codec import AgentAudioEncoder, CallerAudioDecoder, _Decimator
from voice_schemas.audio import FRAME_BYTES

pytestmark = pytest.mark.unit

ALL_PCM = np.arange(-32768, 32768, dtype=np.int16)
ALL_CODES = bytes(range(256))


@pytest.mark.parametrize("law,code,pcm", [
    # G.711 μ-law: 0xFF/0x7F are ±0, 0x00/0x80 the extremes (±32124 in 16-bit scale)
    ("ulaw", 0xFF, 0), ("ulaw", 0x7F, 0), ("ulaw", 0x00, -32124), ("ulaw", 0x80, 32124), ("ulaw", 0xF0, 120),
    # G.711 A-law (even bits inverted): 0xD5/0x55 are the smallest steps ±8, 0xAA/0x2A the extremes ±32256
    ("alaw", 0xD5, 8), ("alaw", 0x55, -8), ("alaw", 0xAA, 32256), ("alaw", 0x2A, -32256), ("alaw", 0x00, -5504),
])
def test_decode_matches_itu_values(law: g711.Law, code: int, pcm: int) -> None:
    assert int(g711.decode(bytes([code]), law)[0]) == pcm


@pytest.mark.parametrize("law", ["ulaw", "alaw"])
def test_encode_is_the_inverse_of_decode_on_every_code(law: g711.Law) -> None:
    decoded = g711.decode(ALL_CODES, law)
    again = g711.encode(decoded, law)
    # μ-law has two zeros (0x7F, 0xFF): both encode to 0xFF; every other code round-trips
    expected = bytes(0xFF if (law == "ulaw" and c == 0x7F) else c for c in ALL_CODES)
    assert again == expected
    assert g711.encode(np.zeros(4, np.int16), law) == bytes([g711.SILENCE[law]]) * 4


@pytest.mark.parametrize("law", ["ulaw", "alaw"])
def test_encode_is_monotonic_and_saturates(law: g711.Law) -> None:
    levels = g711.decode(g711.encode(ALL_PCM, law), law).astype(np.int32)
    assert np.all(np.diff(levels) >= 0)
    assert np.max(np.abs(levels - ALL_PCM)) <= 1024  # the widest step of the top segment


@pytest.mark.skipif(sys.version_info >= (3, 13), reason="audioop was removed in Python 3.13")
@pytest.mark.parametrize("law", ["ulaw", "alaw"])
def test_bit_exact_with_audioop(law: g711.Law) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import audioop
    lin2, to_lin = (audioop.lin2ulaw, audioop.ulaw2lin) if law == "ulaw" else (audioop.lin2alaw, audioop.alaw2lin)
    assert g711.encode(ALL_PCM, law) == lin2(ALL_PCM.tobytes(), 2)
    assert g711.decode(ALL_CODES, law).tobytes() == to_lin(ALL_CODES, 2)


@pytest.mark.parametrize("law", ["ulaw", "alaw"])
def test_decoder_and_encoder_make_exact_frames(law: g711.Law) -> None:
    dec, enc = CallerAudioDecoder(law), AgentAudioEncoder(law)
    silence = bytes([g711.SILENCE[law]])
    frames = []
    for _ in range(50):
        frames += dec.decode(silence * 160)
    assert 49 <= len(frames) <= 50 and all(len(x) == FRAME_BYTES for x in frames)
    tone = (np.sin(np.arange(320) / 16000 * 2 * np.pi * 440) * 8000).astype(np.int16).tobytes()
    out = []
    for _ in range(50):
        out += enc.encode(tone)
    out += enc.flush()
    assert all(len(x) == 160 for x in out) and 49 <= len(out) <= 51


def test_a_tone_survives_the_round_trip() -> None:
    tone = (np.sin(np.arange(16000) / 16000 * 2 * np.pi * 440) * 8000).astype(np.int16)
    enc, dec = AgentAudioEncoder("ulaw"), CallerAudioDecoder("ulaw")
    phone = [p for i in range(0, tone.size, 320) for p in enc.encode(tone[i:i + 320].tobytes())] + enc.flush()
    back = np.frombuffer(b"".join(f for p in phone for f in dec.decode(p)), dtype=np.int16).astype(np.float64)
    ref = tone.astype(np.float64)
    # the same 440 Hz tone (resampler delays shift it by a few ms): compare energy, and correlation at its lag
    n = min(back.size, ref.size) - 400
    lag = int(np.argmax([np.dot(ref[:n], back[k:k + n]) for k in range(400)]))
    corr = np.corrcoef(ref[:n], back[lag:lag + n])[0, 1]
    assert corr > 0.99 and abs(np.std(back[lag:lag + n]) / np.std(ref[:n]) - 1) < 0.05


def test_the_encoder_gives_one_phone_frame_per_frame_in_and_keeps_out_what_would_alias() -> None:
    """One 20 ms payload for each 20 ms frame from the first on (a burst of three every third frame was sent back to
    back: 60 ms of jitter at the caller), the phone band kept, what lies above 4 kHz filtered out before decimation."""
    def through(freq: float) -> tuple[list[int], float]:
        enc = AgentAudioEncoder("ulaw")
        x = (np.sin(np.arange(16000) / 16000 * 2 * np.pi * freq) * 8000).astype(np.int16)
        per_frame = [enc.encode(x[i:i + 320].tobytes()) for i in range(0, x.size, 320)]
        y = g711.decode(b"".join(p for ps in per_frame for p in ps), "ulaw").astype(np.float64)[200:]
        return [len(ps) for ps in per_frame], float(np.std(y) / np.std(x.astype(np.float64)))

    counts, gain = through(1000)
    assert counts == [1] * 50 and abs(gain - 1) < 0.02
    assert through(3000)[1] > 0.9  # the top of the phone band
    assert through(6000)[1] < 0.03  # would fold to 2 kHz: more than 30 dB down


def _decimate_every_sample(frames: list[np.ndarray]) -> list[np.ndarray]:
    """The encoder's decimation as first written: filter every input sample, keep every second one."""
    taps = _Decimator.TAPS
    history, odd, out = np.zeros(len(taps) - 1, dtype=np.float32), False, []
    for pcm in frames:
        buf = np.concatenate([history, pcm.astype(np.float32)])
        filtered = np.convolve(buf, taps, mode="valid")
        history = buf[-(len(taps) - 1):]
        out.append(np.clip(np.round(filtered[1 if odd else 0::2]), -32768, 32767).astype(np.int16))
        odd = (odd + pcm.size) % 2 == 1
    return out


def test_the_decimator_filters_only_what_it_keeps_and_gives_the_same_samples() -> None:
    """Filtering only the samples kept (per 20 ms frame, on the loop that paces the calls) gives what filtering
    every sample gave, to the last bit but for float rounding, across frames of any size (odd ones shift which
    samples are kept; a size change rebuilds the buffers and keeps the filter's history)."""
    rng = np.random.default_rng(7)
    sizes = [320] * 20 + [1, 7, 320, 33, 320, 2, 641, 320, 320, 160] + [320] * 10
    frames = [np.clip(rng.standard_normal(n) * 12000, -32768, 32767).astype(np.int16) for n in sizes]
    frames[5][:] = 32767  # full scale: the filter's overshoot is clipped
    d = _Decimator()
    got = [d.process(f) for f in frames]
    want = _decimate_every_sample(frames)
    assert [g.size for g in got] == [w.size for w in want]
    diff = np.abs(np.concatenate(got).astype(np.int32) - np.concatenate(want).astype(np.int32))
    assert diff.max() <= 1 and np.count_nonzero(diff) < diff.size // 100
    assert d.process(np.zeros(0, dtype=np.int16)).size == 0
