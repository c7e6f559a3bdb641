"""Prometheus metrics shared by every service: ``voice_<service>_<thing>_<unit>``.

Labels never carry call ids, phone numbers or free text: only subject patterns, stages and kinds.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# 50 ms .. 5 s resolution for turn latencies
LATENCY_BUCKETS = (0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.75, 0.9, 1.0, 1.2,
                   1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 7.5, 10.0)
BUS_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)

EVENTS_PUBLISHED = Counter(
    "voice_bus_events_published_total", "Durable events published", ["service", "subject"]
)
EVENTS_HANDLED = Counter(
    "voice_bus_events_handled_total", "Durable messages handled by outcome",
    ["service", "consumer", "outcome"],
)
REDELIVERIES = Counter(
    "voice_bus_redeliveries_total", "Messages received with delivery count > 1", ["service", "consumer"]
)
DEAD_LETTERS = Counter(
    "voice_bus_dead_letters_total", "Messages sent to the dead-letter stream", ["service", "consumer"]
)
HANDLER_SECONDS = Histogram(
    "voice_bus_handler_seconds", "Durable handler duration", ["service", "consumer"], buckets=BUS_BUCKETS
)
CONSUMER_PENDING = Gauge(
    "voice_bus_consumer_pending_messages", "Messages not yet delivered to a durable consumer",
    ["service", "consumer"],
)
CONSUMER_ACK_PENDING = Gauge(
    "voice_bus_consumer_ack_pending_messages", "Messages delivered and not yet acked", ["service", "consumer"]
)
ERRORS = Counter("voice_errors_total", "Errors by kind", ["service", "kind"])
ACTIVE_CALLS = Gauge("voice_active_calls", "Calls this replica is handling", ["service"])
AUDIO_FRAMES = Counter(
    "voice_audio_frames_total", "Audio frames by direction and outcome", ["service", "direction", "outcome"]
)
STAGE_SECONDS = Histogram(
    "voice_turn_stage_seconds", "Per-stage turn latency", ["service", "stage"], buckets=LATENCY_BUCKETS
)
INFERENCE_SECONDS = Histogram(
    "voice_model_inference_seconds", "Model inference time", ["service", "model"], buckets=LATENCY_BUCKETS
)
TAKEOVERS = Counter(
    "voice_takeovers_total", "Work of a replica that died, taken over by this one, by kind", ["service", "kind"]
)
TOOL_CALLS = Counter("voice_tool_calls_total", "Agent tool calls run, by outcome (ok, error)", ["service", "outcome"])
LLM_TOKENS = Counter("voice_llm_tokens_total", "Completion tokens (streamed deltas) received", ["service"])
LLM_TTFT = Histogram(
    "voice_llm_time_to_first_token_seconds", "LLM request to first token", ["service"], buckets=LATENCY_BUCKETS
)
# real-time work first (README "Real-time work first"): how late the event loop runs a 20 ms timer, the process's
# nice value and the compute threads each engine was given
LOOP_LAG_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.04, 0.06, 0.1, 0.25, 0.5, 1.0, 2.5)
LOOP_LAG = Histogram(
    "voice_event_loop_lag_seconds", "How much later than asked the event loop ran a 20 ms timer", ["service"],
    buckets=LOOP_LAG_BUCKETS,
)
LOOP_LAG_MAX = Gauge(
    "voice_event_loop_lag_max_seconds", "Worst event loop lag of the last 10 to 20 seconds", ["service"]
)
PROCESS_NICE = Gauge("voice_process_nice", "The process's nice value (higher: yields the CPU to others)", ["service"])
ENGINE_THREADS = Gauge(
    "voice_engine_threads", "Compute threads an engine's model runs with (0: the runtime's default, all cores)",
    ["service", "engine"],
)
