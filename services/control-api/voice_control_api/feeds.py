"""How many live feeds (server-sent events) are open on this replica, per tenant and per credential."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable


class FeedLimitReached(Exception):
    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


class FeedSlots:
    def __init__(self) -> None:
        self.per_tenant: Counter[str] = Counter()
        self.per_actor: Counter[str] = Counter()

    def acquire(self, tenant_id: str, actor: str, *, max_tenant: int, max_actor: int) -> Callable[[], None]:
        """A slot for one feed; the returned function frees it (calling it again does nothing).
        ``FeedLimitReached`` when the credential's or the tenant's limit is reached."""
        if self.per_actor[actor] >= max_actor:
            raise FeedLimitReached("credential")
        if self.per_tenant[tenant_id] >= max_tenant:
            raise FeedLimitReached("tenant")
        self.per_tenant[tenant_id] += 1
        self.per_actor[actor] += 1
        held = [True]

        def release() -> None:
            if not held[0]:
                return
            held[0] = False
            for counter, key in ((self.per_tenant, tenant_id), (self.per_actor, actor)):
                counter[key] -= 1
                if counter[key] <= 0:
                    del counter[key]

        return release
