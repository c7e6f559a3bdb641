"""Agent and number configuration, and sealed tenant secrets, pushed to JetStream KV, where the data plane
reads them.

Layout (bucket ``agents``): ``a.<id>`` holds the current version's AgentConfig JSON, ``a.<id>.v<n>``
every version ever published (calls pinned to a version keep reading it). Bucket ``numbers``:
``n<digits>`` holds the NumberRoute JSON. Bucket ``secrets``: ``s.<tenant>.<name>`` holds the SecretBox
ciphertext as stored in PostgreSQL (only the services holding SECRETS_KEY can open it). Bucket ``trunks``:
``t.<id>`` holds the SipTrunk JSON.

PostgreSQL is the record; KV is derived from it. Writes happen after the database commit; a write
that fails is repaired by the next resync (at start, periodically, and soon after any failure).
The current-version key is only ever moved forward (compare-and-set on the KV revision), so two
replicas writing concurrently, or a resync holding an older snapshot, cannot roll an agent back.
"""

from __future__ import annotations

import contextlib
import json
import operator
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import APIError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from voice_runtime.logging import get_logger
from voice_schemas import subjects
from voice_schemas.agent import AgentConfig, NumberRoute, SipTrunk

log = get_logger(__name__)

KV_OPERATION, KV_DELETE, KV_PURGE = "KV-Operation", "DEL", "PURGE"


@dataclass
class Snapshot:
    """What PostgreSQL says KV should hold."""

    agents: list[AgentConfig]  # current version of every live agent
    versions: set[tuple[str, int]]  # every (agent_id, version) that exists, live agent or not
    numbers: list[NumberRoute]
    secrets: dict[tuple[str, str], bytes] = field(default_factory=dict)  # (tenant_id, name) -> sealed value
    trunks: list[SipTrunk] = field(default_factory=list)


@dataclass
class ResyncReport:
    agents_written: int = 0
    numbers_written: int = 0
    secrets_written: int = 0
    trunks_written: int = 0
    keys_deleted: list[str] = field(default_factory=list)


def _version_of(value: bytes | None) -> int | None:
    if not value:
        return None
    try:
        v = json.loads(value).get("version")
    except (ValueError, AttributeError):
        return None
    return v if isinstance(v, int) else None


class ConfigPublisher:
    def __init__(self, agents: KeyValue, numbers: KeyValue, secrets: KeyValue, trunks: KeyValue | None = None) -> None:
        self.agents = agents
        self.numbers = numbers
        self.secrets = secrets
        self.trunks = trunks  # None: a deployment without the bucket (tests of other resources)

    # ------------------------------------------------------------------ agents
    async def publish_agent(self, cfg: AgentConfig) -> bool:
        """Write the version key and move the current key forward. False when KV already had a newer one."""
        data = cfg.model_dump_json().encode()
        await self.agents.put(subjects.agent_version_key(cfg.id, cfg.version), data)
        return await self._put_if_newer(subjects.agent_key(cfg.id), data, cfg.version)

    async def _put_if_newer(self, key: str, data: bytes, version: int, attempts: int = 8) -> bool:
        for _ in range(attempts):
            try:
                entry = await self.agents.get(key)
            except KeyNotFoundError:
                entry = None
            if entry is not None:
                current = _version_of(entry.value)
                if current is not None and current >= version:
                    return False
            try:
                if entry is None:
                    await self.agents.create(key, data)
                else:
                    await self.agents.update(key, data, last=entry.revision)
                return True
            except KeyWrongLastSequenceError:
                continue  # someone else wrote in between: re-read and decide again
        raise RuntimeError(f"could not update {key}: too much contention")

    async def retract_agent(self, agent_id: str) -> None:
        """The agent is deleted: remove its current key (its version keys stay for running calls)."""
        await self.agents.delete(subjects.agent_key(agent_id))

    async def read_agent(self, agent_id: str) -> tuple[dict[str, object], int] | None:
        try:
            entry = await self.agents.get(subjects.agent_key(agent_id))
        except KeyNotFoundError:
            return None
        if not entry.value:
            return None
        return json.loads(entry.value), int(entry.revision or 0)

    # ------------------------------------------------------------------ numbers
    async def publish_number(self, route: NumberRoute) -> None:
        await self.numbers.put(subjects.number_key(route.number), route.model_dump_json().encode())

    async def retract_number(self, number: str) -> None:
        await self.numbers.delete(subjects.number_key(number))

    async def read_number(self, number: str) -> dict[str, object] | None:
        try:
            entry = await self.numbers.get(subjects.number_key(number))
        except KeyNotFoundError:
            return None
        return json.loads(entry.value) if entry.value else None

    # ------------------------------------------------------------------ tenant secrets
    async def publish_secret(self, tenant_id: str, name: str, sealed: bytes) -> None:
        await self.secrets.put(subjects.secret_key(tenant_id, name), sealed)

    async def retract_secret(self, tenant_id: str, name: str) -> None:
        await self.secrets.delete(subjects.secret_key(tenant_id, name))

    # ------------------------------------------------------------------ SIP trunks
    async def publish_trunk(self, trunk: SipTrunk) -> None:
        if self.trunks is not None:
            await self.trunks.put(subjects.trunk_key(trunk.id), trunk.model_dump_json().encode())

    async def retract_trunk(self, trunk_id: str) -> None:
        if self.trunks is not None:
            await self.trunks.delete(subjects.trunk_key(trunk_id))

    # ------------------------------------------------------------------ full resync
    async def resync(self, load: Callable[[], Awaitable[Snapshot]]) -> ResyncReport:
        """Make KV match PostgreSQL.

        KV entries are read *before* the database, and every write is conditional on the revision seen
        then. A concurrent API change commits before it writes KV, so either the snapshot already holds
        it, or its KV write moved the revision and our conditional write or delete is skipped: a resync
        never overwrites or deletes something newer than its snapshot.
        """
        agent_entries = await _entries(self.agents)
        number_entries = await _entries(self.numbers)
        secret_entries = await _entries(self.secrets)
        trunk_entries = await _entries(self.trunks) if self.trunks is not None else {}
        snap = await load()
        report = ResyncReport()
        # A database without a single agent version or secret next to a KV full of routes is far more likely a
        # wrong DATABASE_URL than a platform whose every agent was deleted (deletes retract their keys anyway):
        # write what there is, delete nothing.
        may_delete = bool(snap.versions or snap.secrets) or not (agent_entries or number_entries or secret_entries)
        if not may_delete:
            log.error(
                "kv_resync_deletes_skipped",
                reason="database has no agents or secrets but KV has keys",
                agent_keys=len(agent_entries),
                number_keys=len(number_entries),
                secret_keys=len(secret_entries),
            )

        live = {a.id for a in snap.agents}
        for cfg in snap.agents:
            data = cfg.model_dump_json().encode()
            vkey = subjects.agent_version_key(cfg.id, cfg.version)
            if vkey not in agent_entries:
                await self.agents.put(vkey, data)
            if await self._put_if_newer(subjects.agent_key(cfg.id), data, cfg.version):
                report.agents_written += 1
        for key, entry in sorted(agent_entries.items()):
            parsed = subjects.parse_agent_key(key)
            if parsed is None:
                continue  # not a key this service writes
            agent_id, version = parsed
            stale = agent_id not in live if version is None else (agent_id, version) not in snap.versions
            if stale and may_delete and await _delete_if_unchanged(self.agents, key, entry.revision):
                report.keys_deleted.append(key)

        routes = {subjects.number_key(r.number): r.model_dump_json().encode() for r in snap.numbers}
        report.numbers_written = await _converge(
            self.numbers,
            number_entries,
            routes,
            same=_same_json,
            ours=lambda key: subjects.parse_number_key(key) is not None,
            deleted=report.keys_deleted if may_delete else None,
        )
        sealed = {subjects.secret_key(tenant, name): value for (tenant, name), value in snap.secrets.items()}
        report.secrets_written = await _converge(
            self.secrets,
            secret_entries,
            sealed,
            same=operator.eq,
            ours=lambda key: subjects.parse_secret_key(key) is not None,
            deleted=report.keys_deleted if may_delete else None,
        )
        if self.trunks is not None:
            trunks = {subjects.trunk_key(t.id): t.model_dump_json().encode() for t in snap.trunks}
            report.trunks_written = await _converge(
                self.trunks,
                trunk_entries,
                trunks,
                same=_same_json,
                ours=lambda key: subjects.parse_trunk_key(key) is not None,
                deleted=report.keys_deleted if may_delete else None,
            )
        return report


async def _converge(
    kv: KeyValue,
    seen: Mapping[str, KeyValue.Entry],
    wanted: Mapping[str, bytes],
    *,
    same: Callable[[bytes, bytes], bool],
    ours: Callable[[str], bool],
    deleted: list[str] | None,
) -> int:
    """Write each ``wanted`` value that ``seen`` (the bucket, read before the snapshot) lacks or holds otherwise,
    conditionally on the revision seen; delete the keys of ours nothing wants, into ``deleted`` (None: delete
    nothing). Returns the number of values written."""
    written = 0
    for key, data in wanted.items():
        entry = seen.get(key)
        if entry is not None and entry.value and same(entry.value, data):
            continue
        try:
            if entry is None:
                await kv.create(key, data)
            else:
                await kv.update(key, data, last=entry.revision)
            written += 1
        except KeyWrongLastSequenceError:
            pass  # changed since we looked: that change is at least as new as our snapshot
    if deleted is not None:
        for key in sorted(seen.keys() - wanted.keys()):
            if ours(key) and await _delete_if_unchanged(kv, key, seen[key].revision):
                deleted.append(key)
    return written


def _same_json(a: bytes, b: bytes) -> bool:
    try:
        return bool(json.loads(a) == json.loads(b))
    except ValueError:
        return False


async def _entries(kv: KeyValue) -> dict[str, KeyValue.Entry]:
    """Every live key with its value and revision, in one pass over the bucket.

    A pull consumer (last value per subject), not ``kv.watchall()``: the watcher's end-of-snapshot marker is
    decided from consumer info read while messages may already be in flight to the client, and it can come
    first, making a full bucket look empty. A pull consumer delivers nothing before it is asked, so its
    pending count is exact, and each message's own pending count says when the snapshot is read.
    """
    js, stream, prefix = kv._js, kv._stream, kv._pre  # nats-py exposes no public accessors
    sub = await js.pull_subscribe(
        f"{prefix}>",
        stream=stream,
        config=ConsumerConfig(
            deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
            ack_policy=AckPolicy.NONE,
            inactive_threshold=60.0,
            mem_storage=True,
        ),
    )
    out: dict[str, KeyValue.Entry] = {}
    try:
        pending = (await sub.consumer_info()).num_pending or 0
        while pending > 0:
            for msg in await sub.fetch(batch=min(pending, 512), timeout=10.0):
                meta = msg.metadata
                pending = meta.num_pending or 0
                key = msg.subject[len(prefix) :]
                op = msg.headers.get(KV_OPERATION) if msg.headers else None
                if op in (KV_DELETE, KV_PURGE):
                    out.pop(key, None)
                    continue
                out[key] = KeyValue.Entry(
                    bucket=stream.removeprefix("KV_"),
                    key=key,
                    value=msg.data,
                    revision=meta.sequence.stream,
                    delta=meta.num_pending,
                    created=None,
                    operation=op,
                )
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
    return out


async def _delete_if_unchanged(kv: KeyValue, key: str, revision: int | None) -> bool:
    try:
        await kv.delete(key, last=revision)
        return True
    except APIError:  # wrong last sequence: it changed since we looked, keep it
        return False
