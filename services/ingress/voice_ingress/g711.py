"""G.711 μ-law and A-law ⇄ PCM16 by lookup table (ITU-T G.711, the Sun reference coder's segment rules).

Twilio media streams carry μ-law; SIP trunks carry either law (PCMU or PCMA), so both are here. The tables are
built once at import (256 entries to decode; 16 384 (μ-law, 14-bit input) and 8 192 (A-law, 13-bit input)
entries to encode) and applied with numpy indexing: a 20 ms frame converts in microseconds, with no C extension
(``audioop`` is gone from Python 3.13). Output matches ``audioop.lin2ulaw``/``ulaw2lin``/``lin2alaw``/``alaw2lin``
bit for bit (checked in the unit tests).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

Law = Literal["ulaw", "alaw"]

_SEG_U_END = (0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF)  # μ-law segment ends, 14-bit magnitude
_SEG_A_END = (0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF)  # A-law segment ends, 13-bit magnitude
_U_BIAS = 0x84
_U_CLIP = 8159


def _segment(value: int, ends: tuple[int, ...]) -> int:
    for i, end in enumerate(ends):
        if value <= end:
            return i
    return len(ends)


def _ulaw_encode_one(pcm14: int) -> int:
    mask = 0xFF
    if pcm14 < 0:
        pcm14, mask = -pcm14, 0x7F
    pcm14 = min(pcm14, _U_CLIP) + (_U_BIAS >> 2)
    seg = _segment(pcm14, _SEG_U_END)
    if seg >= 8:
        return 0x7F ^ mask
    return ((seg << 4) | ((pcm14 >> (seg + 1)) & 0xF)) ^ mask


def _alaw_encode_one(pcm13: int) -> int:
    mask = 0xD5
    if pcm13 < 0:
        pcm13, mask = -pcm13 - 1, 0x55
    seg = _segment(pcm13, _SEG_A_END)
    if seg >= 8:
        return 0x7F ^ mask
    quant = (pcm13 >> 1) if seg < 2 else (pcm13 >> seg)
    return ((seg << 4) | (quant & 0xF)) ^ mask


def _ulaw_decode_one(code: int) -> int:
    u = ~code & 0xFF
    t = (((u & 0x0F) << 3) + _U_BIAS) << ((u & 0x70) >> 4)
    return _U_BIAS - t if u & 0x80 else t - _U_BIAS


def _alaw_decode_one(code: int) -> int:
    a = code ^ 0x55
    t = (a & 0x0F) << 4
    seg = (a & 0x70) >> 4
    if seg == 0:
        t += 8
    elif seg == 1:
        t += 0x108
    else:
        t = (t + 0x108) << (seg - 1)
    return t if a & 0x80 else -t


# decode: code byte -> PCM16
ULAW_TO_PCM = np.array([_ulaw_decode_one(c) for c in range(256)], dtype=np.int16)
ALAW_TO_PCM = np.array([_alaw_decode_one(c) for c in range(256)], dtype=np.int16)
# encode: PCM16 >> 2 (μ-law) or >> 3 (A-law), offset to be non-negative -> code byte
_PCM14_TO_ULAW = np.array([_ulaw_encode_one(v) for v in range(-8192, 8192)], dtype=np.uint8)
_PCM13_TO_ALAW = np.array([_alaw_encode_one(v) for v in range(-4096, 4096)], dtype=np.uint8)

SILENCE = {"ulaw": 0xFF, "alaw": 0xD5}  # the code of PCM 0 in each law


# the same tables indexed by the shifted sample itself, negative values from the end (numpy's negative indices):
# an encode is then one shift and one lookup, with no widening copy and no offset added (50 frames/s per call)
_ULAW_BY_PCM14 = np.roll(_PCM14_TO_ULAW, -8192)
_ALAW_BY_PCM13 = np.roll(_PCM13_TO_ALAW, -4096)


def encode(pcm: np.ndarray, law: Law) -> bytes:
    """PCM16 samples (int16) -> one G.711 byte per sample."""
    x = pcm.astype(np.int16, copy=False)
    if law == "ulaw":
        return _ULAW_BY_PCM14[x >> 2].tobytes()
    return _ALAW_BY_PCM13[x >> 3].tobytes()


def decode(data: bytes, law: Law) -> np.ndarray:
    """G.711 bytes -> PCM16 samples (int16)."""
    table = ULAW_TO_PCM if law == "ulaw" else ALAW_TO_PCM
    return table[np.frombuffer(data, dtype=np.uint8)]
