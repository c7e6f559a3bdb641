"""Generate the committed JSON Schemas and the AsyncAPI document from the models.

``python -m voice_schemas.generate`` writes them; ``render()`` returns them for the drift test.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from . import audio, streams
from .agent import AgentConfig, NumberRoute
from .envelope import REGISTRY, SCHEMA_VERSION, Envelope, Payload

OUT = Path(__file__).resolve().parent.parent  # schemas/


def _dump(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True) + "\n"


def _schema_name(cls: type[Payload]) -> str:
    return cls.TYPE.replace(".", "_")


def render() -> dict[str, str]:
    """Relative path (under schemas/) -> file content."""
    files: dict[str, str] = {}
    for t, cls in sorted(REGISTRY.items()):
        schema = Envelope[cls].model_json_schema()  # type: ignore[valid-type]
        schema["title"] = f"{cls.__name__} ({t})"
        schema["$id"] = f"urn:voice-platform:event:{t}:v{SCHEMA_VERSION}"
        files[f"jsonschema/{t}.json"] = _dump(schema)
    for model in (AgentConfig, NumberRoute):
        files[f"jsonschema/kv/{model.__name__}.json"] = _dump(model.model_json_schema())
    files["asyncapi.json"] = _dump(asyncapi())
    return files


def asyncapi() -> dict[str, Any]:
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    components: dict[str, Any] = {}
    call_param = {"call_id": {"description": "URL- and subject-safe call id ([A-Za-z0-9_-]{1,64})"}}
    for t, cls in sorted(REGISTRY.items()):
        name = _schema_name(cls)
        address = "call.{call_id}." + ".".join(cls.SUBJECT)
        schema = Envelope[cls].model_json_schema(ref_template="#/components/schemas/{model}")  # type: ignore[valid-type]
        messages[name] = {
            "name": t,
            "title": cls.__name__,
            "summary": cls.DESCRIPTION,
            "contentType": "application/json",
            "headers": {
                "type": "object",
                "properties": {
                    "Nats-Msg-Id": {"type": "string", "description": "= envelope id (JetStream dedupe)"},
                    "traceparent": {"type": "string", "description": "W3C trace context"},
                },
            },
            "payload": {"$ref": f"#/components/schemas/{name}"},
        }
        channels[name] = {
            "address": address,
            "parameters": call_param,
            "messages": {name: {"$ref": f"#/components/messages/{name}"}},
            "description": f"{cls.DESCRIPTION} Stream {streams.CALLS.name}.",
        }
        operations[f"publish_{name}"] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{name}"},
        }
        components.update(schema.pop("$defs", {}))
        components[name] = schema
    for direction, desc in (("in", "caller audio (ingress -> media)"), ("out", "agent audio (tts -> ingress)"),
                            ("played", "agent audio as played to the caller (ingress -> recording); an empty "
                             f"message with {audio.H_CUT} ends what was heard at its {audio.H_TS}")):
        name = f"audio_{direction}"
        channels[name] = {
            "address": "call.{call_id}.audio." + direction,
            "parameters": call_param,
            "description": (
                f"Real-time {desc}: raw PCM16 LE mono {audio.SAMPLE_RATE} Hz, {audio.FRAME_MS} ms "
                f"({audio.FRAME_BYTES} bytes) per message, core publish captured by stream {streams.AUDIO.name}."
            ),
            "messages": {name: {"$ref": f"#/components/messages/{name}"}},
        }
        messages[name] = {
            "name": name,
            "contentType": "application/octet-stream",
            "headers": {
                "type": "object",
                "properties": {
                    h: {"type": "string"}
                    for h in (audio.H_SEQ, audio.H_EPOCH, audio.H_TS, audio.H_TURN, audio.H_CHUNK,
                              audio.H_LAST, audio.H_FINAL, audio.H_CUT)
                },
            },
            "payload": {"type": "string", "format": "binary"},
        }
        operations[f"publish_{name}"] = {"action": "send", "channel": {"$ref": f"#/channels/{name}"}}
    doc = {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Voice platform bus",
            "version": f"{SCHEMA_VERSION}.0.0",
            "description": (
                "Every subject is call.<call_id>.<kind>[.<sub>]. Durable events are JSON envelopes in "
                "JetStream (Nats-Msg-Id = event id). Streams: "
                + "; ".join(f"{s.name} ({', '.join(s.subjects)})" for s in streams.STREAMS)
            ),
        },
        "defaultContentType": "application/json",
        "servers": {"local": {"host": "127.0.0.1:4222", "protocol": "nats"}},
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": dict(sorted(components.items()))},
    }
    return doc


def write() -> list[Path]:
    written = []
    for rel, content in render().items():
        p = OUT / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if not p.exists() or p.read_text() != content:
            p.write_text(content)
            written.append(p)
    return written


if __name__ == "__main__":
    for p in write():
        print(f"wrote {p.relative_to(OUT.parent)}")
