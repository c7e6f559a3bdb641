"""The handler registry: consumer filters derived from handlers, drift refused, one dispatch path; and every
service's declared consumers match its handlers."""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

import pytest
from voice_runtime.handlers import Handlers, declared_handlers
from voice_runtime.memory import InMemoryBus
from voice_runtime.service import Service
from voice_runtime.settings import CommonSettings
from voice_schemas import Envelope, events, make, streams, subjects

SERVICES = {
    "ingress": "voice_ingress.service:IngressService",
    "media": "voice_media.service:MediaService",
    "stt": "voice_stt.service:SttService",
    "brain": "voice_brain.service:BrainService",
    "tts": "voice_tts.service:TtsService",
    "analytics": "voice_analytics.service:AnalyticsService",
    "control-api": "voice_control_api.service:ControlApiService",
}


def _cls(path: str) -> type[Service]:
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)  # type: ignore[no-any-return]


@pytest.mark.unit
@pytest.mark.parametrize("service", sorted(SERVICES))
def test_each_service_handles_exactly_what_its_consumers_filter(service: str) -> None:
    for h in declared_handlers(_cls(SERVICES[service])):
        assert h.drift() is None, h.drift()
        assert h.consumer().filter_subjects == tuple(sorted(h.declared.filter_subjects))


@pytest.mark.unit
def test_every_declared_consumer_belongs_to_exactly_one_service() -> None:
    owners: dict[str, list[str]] = {}
    for service, path in SERVICES.items():
        for h in declared_handlers(_cls(path)):
            owners.setdefault(h.declared.durable, []).append(service)
    assert {c.durable: 1 for c in streams.CONSUMERS} == {k: len(v) for k, v in owners.items()}, owners


DTMF_ONLY = dataclasses.replace(
    streams.ConsumerDef("CALLS", "test-registry", (events.DtmfReceived.subject_pattern(),)),
    backoff_s=(0.01,), max_deliver=2,
)


class _Keys(Service):
    name = "keys"
    keys = Handlers(DTMF_ONLY)

    def __init__(self) -> None:
        super().__init__(CommonSettings())
        self.digits: list[str] = []

    @keys.on(events.DtmfReceived)
    async def on_dtmf(self, env: Envelope[events.DtmfReceived]) -> None:
        self.digits.append(env.data.digit)


@pytest.mark.unit
def test_filters_come_from_the_handlers_and_drift_is_named() -> None:
    assert _Keys.keys.filter_subjects() == (events.DtmfReceived.subject_pattern(),)
    h = Handlers(dataclasses.replace(DTMF_ONLY, filter_subjects=(events.DtmfReceived.subject_pattern(),
                                                                 events.CallEnded.subject_pattern())))

    @h.on(events.DtmfReceived, events.CallAnswered)
    async def handler(self: Any, env: Any) -> None: ...

    drift = h.drift()
    assert drift is not None
    assert "filtered without a handler" in drift and events.CallEnded.subject_pattern() in drift
    assert "handled but not in the declared filter" in drift and events.CallAnswered.subject_pattern() in drift
    with pytest.raises(ValueError, match="two handlers"):
        h.on(events.DtmfReceived)(handler)


async def test_a_service_with_drift_refuses_to_start() -> None:
    class Drifting(Service):
        name = "drifting"
        h = Handlers(dataclasses.replace(DTMF_ONLY, filter_subjects=(events.CallEnded.subject_pattern(),)))

        @h.on(events.DtmfReceived)
        async def on_dtmf(self, env: Any) -> None: ...

    with pytest.raises(RuntimeError, match="handlers and consumer filters differ"):
        await Drifting(CommonSettings()).start(bus=InMemoryBus())


async def test_declared_handlers_are_consumed_at_start_and_unhandled_types_are_dead_lettered() -> None:
    bus = InMemoryBus()
    svc = _Keys()
    await svc.start(bus=bus)
    try:
        call_id = subjects.new_call_id()
        await bus.publish(make(events.DtmfReceived(digit="9"), tenant_id="t", call_id=call_id))
        await bus.settle()
        assert svc.digits == ["9"]
        # a message of another type on the same subject (a producer's bug) is poison, not acked silently
        await bus.publish_nowait(events.DtmfReceived.subject_for(call_id),
                                 make(events.CallEnded(reason=events.EndReason.caller_hangup), tenant_id="t",
                                      call_id=call_id).to_bytes(), {"Nats-Msg-Id": subjects.new_id()})
        await bus.settle()
        (dead,) = bus.dead_letters
        assert dead.headers and "no handler for call.ended" in dead.headers["Voice-Dlq-Error"]
    finally:
        await svc.stop()


async def test_core_subscriptions_log_garbage_and_survive_handler_errors() -> None:
    bus = InMemoryBus()
    svc = _Keys()
    await svc.start(bus=bus)
    seen: list[str] = []

    async def flaky(env: Envelope[Any]) -> None:
        seen.append(env.data.digit)
        if env.data.digit == "1":
            raise RuntimeError("boom")

    try:
        await svc.on_events(events.DtmfReceived.subject_pattern(), flaky)
        call_id = subjects.new_call_id()
        await bus.publish_nowait(events.DtmfReceived.subject_for(call_id), b"not json")
        for d in "12":
            await bus.publish(make(events.DtmfReceived(digit=d), tenant_id="t", call_id=call_id))
        await bus.wait_for(lambda: len(seen) == 2)
        assert seen == ["1", "2"]
    finally:
        await svc.stop()


SECRETS = {"database_url", "llm_api_key", "llm_base_url", "twilio_auth_token", "bootstrap_admin_key", "secrets_key"}
NEEDS = {
    # secrets_key: SIP trunks' digest passwords and tenants' own Twilio tokens (sealed tenant secrets)
    "ingress": {"twilio_auth_token", "secrets_key"},
    "media": set(),
    "stt": set(),
    # database_url: knowledge retrieval (read-only queries of the tenant's chunks)
    "brain": {"database_url", "llm_api_key", "llm_base_url", "secrets_key"},
    "tts": set(),
    # secrets_key: webhook signing secrets and agents' LLM keys; llm_*: the platform model for post-call summaries
    "analytics": {"database_url", "llm_api_key", "llm_base_url", "secrets_key"},
    "control-api": {"database_url", "bootstrap_admin_key", "secrets_key"},
}
SETTINGS = {
    "ingress": "voice_ingress.settings:IngressSettings",
    "media": "voice_media.settings:MediaSettings",
    "stt": "voice_stt.settings:SttSettings",
    "brain": "voice_brain.settings:BrainSettings",
    "tts": "voice_tts.settings:TtsSettings",
    "analytics": "voice_analytics.settings:AnalyticsSettings",
    "control-api": "voice_control_api.settings:ControlApiSettings",
}


@pytest.mark.unit
@pytest.mark.parametrize("service", sorted(SETTINGS))
def test_a_service_reads_only_the_secrets_it_uses(service: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in SECRETS:
        value = {"database_url": "postgresql://x@y/z", "secrets_key": "A" * 43 + "="}.get(key, "secret-value")
        monkeypatch.setenv(key.upper(), value)
    module, name = SETTINGS[service].split(":")
    settings = getattr(importlib.import_module(module), name)()
    readable = {k for k in SECRETS if hasattr(settings, k)}
    assert readable == NEEDS[service]
