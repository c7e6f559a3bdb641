"""What the platform keeps in NATS: consumers per stream and live KV entries.

Read-only, and without creating consumers of its own: KV entries are counted from the bucket's stream
(subjects, then the last message of each to skip delete/purge markers) rather than with a KV watcher,
because every watcher is an ephemeral consumer that the server keeps for its inactivity threshold
(nats-py: 5 minutes) after it is stopped, which would show up as "consumers left behind".
"""

from __future__ import annotations

import contextlib
from datetime import datetime
from typing import Any

import nats
from nats.aio.client import Client as NATS

KV_WATCHED = ("calls", "history")
MAX_KEYS_INSPECTED = 5000


async def connect(url: str) -> NATS:
    return await nats.connect(url, name="bench-inspect", connect_timeout=5, max_reconnect_attempts=3)


async def kv_live_keys(nc: NATS, bucket: str) -> set[str] | None:
    """Keys of a KV bucket holding a value (deleted/purged excluded); None when the bucket does not exist."""
    js = nc.jetstream(timeout=10)
    stream = f"KV_{bucket}"
    prefix = f"$KV.{bucket}."
    try:
        si = await js.stream_info(stream, subjects_filter=prefix + ">")
    except Exception:
        return None
    subjects = list((si.state.subjects or {}).keys())[:MAX_KEYS_INSPECTED]
    live: set[str] = set()
    for subject in subjects:
        with contextlib.suppress(Exception):
            m = await js.get_last_msg(stream, subject)
            op = (m.headers or {}).get("KV-Operation")
            if op not in ("DEL", "PURGE"):
                live.add(subject[len(prefix):])
    return live


def _created(c: Any) -> str | None:
    v = getattr(c, "created", None)
    if isinstance(v, datetime):
        return v.isoformat()
    return str(v) if v else None


async def state(url: str, call_ids: set[str] | None = None) -> dict[str, Any]:
    """Consumers on every stream (durable / ephemeral), and live entries of the `calls`/`history` buckets,
    with those whose key contains one of ``call_ids`` (platform call ids and provider CallSids)."""
    nc = await connect(url)
    out: dict[str, Any] = {"consumers": {}, "kv": {}}
    try:
        js = nc.jetstream(timeout=10)
        with contextlib.suppress(Exception):
            for s in await js.streams_info():
                name = s.config.name or "?"
                durable: list[str] = []
                ephemeral: list[dict[str, Any]] = []
                with contextlib.suppress(Exception):
                    for c in await js.consumers_info(name):
                        if c.config.durable_name:
                            durable.append(c.config.durable_name)
                        else:
                            ephemeral.append({"name": c.name, "created": _created(c),
                                              "inactive_threshold_s": c.config.inactive_threshold})
                out["consumers"][name] = {"count": s.state.consumer_count, "durable": sorted(durable),
                                          "ephemeral": ephemeral}
        for bucket in KV_WATCHED:
            keys = await kv_live_keys(nc, bucket)
            entry: dict[str, Any] = {"entries": None if keys is None else len(keys)}
            if keys is not None and call_ids is not None:  # keyed by call id, or containing it ("p.<CallSid>")
                entry["of_bench_calls"] = sorted(k for k in keys if any(i in k for i in call_ids))
            out["kv"][bucket] = entry
        out["server_version"] = nc.connected_server_version and str(nc.connected_server_version)
    finally:
        await nc.close()
    return out


def _after(created: str | None, since_iso: str) -> bool:
    if not created:
        return False
    try:
        return datetime.fromisoformat(created.replace("Z", "+00:00")) >= datetime.fromisoformat(since_iso)
    except ValueError:
        return False


def consumer_diff(before: dict[str, Any], after: dict[str, Any], since_iso: str | None = None) -> dict[str, Any]:
    """Per stream: durable consumers added/removed, and ephemeral consumers created since ``since_iso``."""
    out: dict[str, Any] = {}
    empty: dict[str, Any] = {"count": 0, "durable": [], "ephemeral": []}
    for stream in sorted(set(before.get("consumers", {})) | set(after.get("consumers", {}))):
        b = before.get("consumers", {}).get(stream, empty)
        a = after.get("consumers", {}).get(stream, empty)
        new_eph = [e for e in a["ephemeral"] if since_iso is None or _after(e["created"], since_iso)]
        out[stream] = {
            "before": b["count"], "after": a["count"],
            "durable_added": sorted(set(a["durable"]) - set(b["durable"])),
            "durable_removed": sorted(set(b["durable"]) - set(a["durable"])),
            "ephemeral_before": len(b["ephemeral"]), "ephemeral_after": len(a["ephemeral"]),
            "ephemeral_created_during_run": len(new_eph),
            "ephemeral_inactive_threshold_s": sorted({e["inactive_threshold_s"] for e in new_eph
                                                      if e["inactive_threshold_s"] is not None}),
        }
    return out
