"""Tenants' SIP trunks in ingress: which trunk an INVITE comes through, and the number it calls.

control-api mirrors each tenant's ``SipTrunk`` into KV ``trunks`` (``t.<trunk_id>``); ``TrunkDirectory`` keeps them
all in memory (one watch of the bucket on NATS; a poll of the in-memory bucket in tests), so that whether a source
address may call at all is known without I/O, before any dialog exists.

An INVITE is matched to a trunk (``TrunkDirectory.classify``):

- by source address: a trunk whose ``inbound_sources`` (CIDRs) contain it, the most specific first;
- and/or by digest credentials: a trunk with ``inbound_username`` (its password a tenant secret) is answered 401
  with a challenge per algorithm it accepts, and the INVITE that follows is verified (``sip_digest.py``; 403 on
  wrong credentials). A trunk with no ``inbound_sources`` and a username accepts any source that authenticates.

A source no trunk names falls back to the platform-wide ``SIP_ALLOWED_SOURCES`` (routing by number as before
trunks existed) unless ``SIP_TRUNKS_ONLY`` is set; anything else gets 403 and no dialog.

A trunk's ``number_rules`` turn the Request-URI user (a national number, an extension) into the E.164 number that
routes to an agent: the first rule whose ``match`` matches the whole user gives ``replace``. The user is at most
``MAX_USER`` characters and a rule with nested repetition (catastrophic backtracking) is never run: the patterns
are the tenant's. The call is taken only when the routed number belongs to the trunk's tenant.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from nats.js.errors import KeyNotFoundError
from pydantic import ValidationError
from voice_runtime.logging import get_logger, safe_error
from voice_runtime.secretbox import SecretBox, SecretError
from voice_schemas import subjects
from voice_schemas.agent import NESTED_REPETITION, SipTrunk

log = get_logger(__name__)

MAX_TRUNKS = 10_000
MAX_USER = 32
POLL_S = 1.0
_E164 = re.compile(r"^\+[1-9]\d{1,14}$")
# a rule with nested repetition is refused when saved; one that got into KV some other way is never run
_NESTED = NESTED_REPETITION

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class _Entry:
    trunk: SipTrunk
    networks: tuple[Network, ...]


@dataclass(frozen=True)
class Classified:
    """What to do with an out-of-dialog INVITE, before credentials are checked.

    ``trunk``: taken through this trunk (its source matched and it asks no credentials); ``verify``: the request
    carries credentials to check against ``trunks`` (those whose username matches); ``challenge``: answer 401 with
    ``algorithms``; ``fallback``: the platform-wide allow-list takes it (no trunk); ``forbidden``: 403."""

    kind: Literal["trunk", "verify", "challenge", "fallback", "forbidden"]
    trunks: tuple[SipTrunk, ...] = ()
    algorithms: tuple[str, ...] = ()


def safe_pattern(pattern: str) -> bool:
    """False for a pattern with nested repetition (it could backtrack for minutes on a short input)."""
    return not _NESTED.search(pattern)


def trunk_number(trunk: SipTrunk, user: str | None) -> str | None:
    """The E.164 number a Request-URI user calls through ``trunk``: the first matching rule's result, or the
    user itself when it is already E.164 (or 00-international); None otherwise."""
    if not user:
        return None
    user = user.split(";", 1)[0].strip()
    if len(user) > MAX_USER:
        return None
    for rule in trunk.number_rules:
        if not safe_pattern(rule.match):
            continue
        try:
            m = re.fullmatch(rule.match, user)
            if m is None:
                continue
            number = m.expand(rule.replace)
        except (re.error, IndexError):
            continue
        return number if _E164.match(number) else None
    if user.startswith("00") and user[2:].isdigit():
        user = "+" + user[2:]
    return user if _E164.match(user) else None


class TrunkDirectory:
    """Every tenant's trunks, kept current from KV ``trunks``."""

    def __init__(self, fallback: list[Network], *, trunks_only: bool = False) -> None:
        self.fallback, self.trunks_only = fallback, trunks_only
        self._trunks: dict[str, _Entry] = {}
        self._bucket: Any = None
        # answers that every out-of-dialog request asks, kept until a trunk changes (scanners ask a lot)
        self._digest_only_cache: list[_Entry] | None = None
        self._admits_cache: dict[str, bool] = {}

    def __len__(self) -> int:
        return len(self._trunks)

    def get(self, trunk_id: str) -> SipTrunk | None:
        e = self._trunks.get(trunk_id)
        return e.trunk if e is not None else None

    # ------------------------------------------------------------ keeping current
    def put(self, trunk: SipTrunk) -> None:
        if trunk.id not in self._trunks and len(self._trunks) >= MAX_TRUNKS:
            log.warning("sip_trunks_full", limit=MAX_TRUNKS)
            return
        nets: list[Network] = []
        for s in trunk.inbound_sources[:64]:
            try:
                nets.append(ipaddress.ip_network(s.strip(), strict=False))
            except ValueError:
                log.warning("sip_trunk_bad_source", trunk_id=trunk.id)
        self._trunks[trunk.id] = _Entry(trunk, tuple(nets))
        self._changed()

    def remove(self, trunk_id: str) -> None:
        if self._trunks.pop(trunk_id, None) is not None:
            self._changed()

    def _changed(self) -> None:
        self._digest_only_cache = None
        self._admits_cache.clear()

    def _apply(self, key: str, value: bytes | None) -> None:
        trunk_id = subjects.parse_trunk_key(key)
        if trunk_id is None:
            return
        if not value:
            self.remove(trunk_id)
            return
        try:
            trunk = SipTrunk.model_validate_json(value)
        except ValidationError:
            log.warning("sip_trunk_unreadable", trunk_id=trunk_id)
            return
        if trunk.id != trunk_id:
            return
        self.put(trunk)

    async def refresh(self) -> None:
        """Read the whole bucket again (the in-memory bucket of tests; the first load without a watch)."""
        if self._bucket is None:
            return
        try:
            keys = await self._bucket.keys()
        except Exception:  # nats raises NoKeysError for an empty bucket
            keys = []
        seen: set[str] = set()
        for key in keys:
            trunk_id = subjects.parse_trunk_key(key)
            if trunk_id is None:
                continue
            try:
                entry = await self._bucket.get(key)
            except KeyNotFoundError:
                continue
            seen.add(trunk_id)
            self._apply(key, entry.value)
        for gone in set(self._trunks) - seen:
            self.remove(gone)

    async def run(self, bucket: Any, stopping: asyncio.Event) -> None:
        """Keep the trunks current until ``stopping``: one watch of the bucket where it can be watched."""
        self._bucket = bucket
        watchall = getattr(bucket, "watchall", None)
        if watchall is None:
            while not stopping.is_set():
                with contextlib.suppress(Exception):
                    await self.refresh()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), POLL_S)
            return
        while not stopping.is_set():
            watcher = None
            try:
                watcher = await watchall()
                while not stopping.is_set():
                    try:
                        entry = await watcher.updates(timeout=1.0)
                    except TimeoutError:
                        continue
                    if entry is None:
                        continue  # the initial values are all in
                    op = getattr(entry, "operation", None)
                    self._apply(entry.key, None if op in ("DEL", "PURGE") else entry.value)
            except Exception as e:  # the connection came back, or the bucket is missing: watch again
                log.warning("sip_trunks_watch_failed", error=safe_error(e, 200))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), POLL_S)
            finally:
                if watcher is not None:
                    with contextlib.suppress(Exception):
                        await watcher.stop()

    # ------------------------------------------------------------ matching
    def _by_source(self, host: str) -> list[_Entry]:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return []
        found: list[tuple[int, _Entry]] = []
        for e in self._trunks.values():
            best = max((n.prefixlen for n in e.networks if address.version == n.version and address in n),
                       default=-1)
            if best >= 0:
                found.append((best, e))
        found.sort(key=lambda x: (-x[0], x[1].trunk.id))
        return [e for _, e in found]

    def _digest_only(self) -> list[_Entry]:
        if self._digest_only_cache is None:
            self._digest_only_cache = sorted(
                (e for e in self._trunks.values() if not e.networks and e.trunk.inbound_username),
                key=lambda e: e.trunk.id)
        return self._digest_only_cache

    def fallback_admits(self, host: str) -> bool:
        if self.trunks_only:
            return False
        if not self.fallback:
            return True
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in n for n in self.fallback)

    def admits(self, host: str) -> bool:
        """May ``host`` send an out-of-dialog request at all (else 403, no dialog)?"""
        known = self._admits_cache.get(host)
        if known is None:
            known = self.fallback_admits(host) or bool(self._digest_only()) or bool(self._by_source(host))
            if len(self._admits_cache) >= 4096:
                self._admits_cache.clear()
            self._admits_cache[host] = known
        return known

    def classify(self, host: str, username: str | None) -> Classified:
        """How to take an INVITE from ``host``, carrying digest credentials for ``username`` (None: none)."""
        by_source = self._by_source(host)
        digest_only = self._digest_only()
        if username is not None:
            pool = tuple(e.trunk for e in by_source + digest_only
                         if e.trunk.inbound_username == username and e.trunk.inbound_password_secret)
            return Classified("verify", pool) if pool else Classified("forbidden")
        if by_source:
            open_trunks = [e.trunk for e in by_source if not e.trunk.inbound_username]
            if open_trunks:
                return Classified("trunk", (open_trunks[0],))
            return Classified("challenge", tuple(e.trunk for e in by_source),
                              _algorithms(e.trunk for e in by_source))
        if self.fallback_admits(host):
            return Classified("fallback")
        if digest_only:
            return Classified("challenge", tuple(e.trunk for e in digest_only),
                              _algorithms(e.trunk for e in digest_only))
        return Classified("forbidden")


def _algorithms(trunks: Iterable[SipTrunk]) -> tuple[str, ...]:
    """The algorithms to challenge with, in the (first) trunk's order of preference."""
    found: dict[str, None] = {}
    for t in trunks:
        found.update(dict.fromkeys(t.digest_algorithms))
    return tuple(found)


async def tenant_secret(box: SecretBox | None, bucket: Any, tenant_id: str, name: str) -> str | None:
    """A tenant secret, opened (a trunk's password); None when it cannot be had (logged without its value)."""
    if box is None or bucket is None:
        log.warning("sip_trunk_secret_unavailable", tenant_id=tenant_id, reason="SECRETS_KEY is not set")
        return None
    try:
        entry = await bucket.get(subjects.secret_key(tenant_id, name))
    except KeyNotFoundError:
        entry = None
    except Exception as e:
        log.warning("sip_trunk_secret_unavailable", tenant_id=tenant_id, reason=safe_error(e, 120))
        return None
    if entry is None or not entry.value:
        log.warning("sip_trunk_secret_unavailable", tenant_id=tenant_id, reason="no such secret")
        return None
    try:
        return box.open(tenant_id, name, entry.value)
    except SecretError:
        log.warning("sip_trunk_secret_unavailable", tenant_id=tenant_id, reason="does not open")
        return None
