"""The estimated cost of a call from its usage and the tenant's price table (pure: no I/O, Decimal arithmetic).

    telephony  = handle minutes          * telephony_per_minute      (phone channels: twilio, sip)
    stt        = caller speech minutes   * stt_per_minute            (voice channels: not chat)
    llm_input  = LLM input tokens / 1000 * llm_input_per_1k_tokens
    llm_output = LLM output tokens / 1000 * llm_output_per_1k_tokens
    tts        = TTS characters / 1000   * tts_per_1k_chars
    total      = the sum of the five

Each line is rounded half-up to 6 decimals before it is summed, so the total is exactly the sum of the lines shown.
Minutes are exact (seconds / 60), not rounded up to whole minutes. Tokens and characters are the turns' usage as
brain reported it (``turn.completed`` ``usage``); the caller's speech time is the sum of the caller turns' start ->
end. A tenant without a price table is priced with ``DEFAULT_PRICES`` (all zero, USD).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

TELEPHONY_CHANNELS = frozenset({"twilio", "sip"})
SPEECH_CHANNELS = frozenset({"twilio", "sip", "webrtc", "test"})
PLACES = Decimal("0.000001")
_ZERO = Decimal(0)


@dataclass(frozen=True)
class PriceTable:
    currency: str = "USD"
    telephony_per_minute: Decimal = _ZERO
    stt_per_minute: Decimal = _ZERO
    llm_input_per_1k_tokens: Decimal = _ZERO
    llm_output_per_1k_tokens: Decimal = _ZERO
    tts_per_1k_chars: Decimal = _ZERO


DEFAULT_PRICES = PriceTable()


@dataclass(frozen=True)
class Usage:
    """What a call consumed."""

    telephony_s: float = 0.0
    stt_audio_s: float = 0.0
    llm_input_tokens: int = 0
    llm_output_tokens: int = 0
    llm_tokens_estimated: bool = False  # some turn's tokens were estimated from text (the endpoint reported none)
    tts_characters: int = 0


def usage_of(channel: str, handle_time_s: float | None, caller_talk_s: float, llm_input_tokens: int,
             llm_output_tokens: int, tts_characters: int, llm_tokens_estimated: bool = False) -> Usage:
    """The billable usage of a call on ``channel`` (no telephony off the phone, no speech to text in a chat)."""
    return Usage(
        telephony_s=(handle_time_s or 0.0) if channel in TELEPHONY_CHANNELS else 0.0,
        stt_audio_s=caller_talk_s if channel in SPEECH_CHANNELS else 0.0,
        llm_input_tokens=llm_input_tokens,
        llm_output_tokens=llm_output_tokens,
        llm_tokens_estimated=llm_tokens_estimated,
        tts_characters=tts_characters if channel in SPEECH_CHANNELS else 0,
    )


@dataclass(frozen=True)
class Cost:
    currency: str
    telephony: Decimal
    stt: Decimal
    llm_input: Decimal
    llm_output: Decimal
    tts: Decimal

    @property
    def total(self) -> Decimal:
        return self.telephony + self.stt + self.llm_input + self.llm_output + self.tts

    def lines(self) -> dict[str, str]:
        """The lines and total as decimal strings (JSON keeps them exact)."""
        return {
            "telephony": str(self.telephony), "stt": str(self.stt), "llm_input": str(self.llm_input),
            "llm_output": str(self.llm_output), "tts": str(self.tts), "total": str(self.total),
        }


def _line(quantity: Decimal, price: Decimal) -> Decimal:
    return (quantity * price).quantize(PLACES, rounding=ROUND_HALF_UP)


def cost_of(usage: Usage, prices: PriceTable) -> Cost:
    # a float's shortest repr as a Decimal: 0.1 s is Decimal("0.1"), not the binary expansion
    minutes = Decimal(repr(usage.telephony_s)) / 60
    stt_minutes = Decimal(repr(usage.stt_audio_s)) / 60
    return Cost(
        currency=prices.currency,
        telephony=_line(minutes, prices.telephony_per_minute),
        stt=_line(stt_minutes, prices.stt_per_minute),
        llm_input=_line(Decimal(usage.llm_input_tokens) / 1000, prices.llm_input_per_1k_tokens),
        llm_output=_line(Decimal(usage.llm_output_tokens) / 1000, prices.llm_output_per_1k_tokens),
        tts=_line(Decimal(usage.tts_characters) / 1000, prices.tts_per_1k_chars),
    )
