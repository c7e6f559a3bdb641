"""SIP digest authentication (RFC 3261 §22 on RFC 7616 and RFC 8760): MD5 and SHA-256, ``qop=auth``.

Server side (``DigestServer``): a challenge for each algorithm a trunk accepts (in the trunk's order: SHA-256 first
by default, RFC 8760 §2.4; a trunk whose equipment answers only the first challenge and knows only MD5 lists MD5
first), with
a nonce that needs no per-nonce state: the time it was issued and an HMAC of that time under the server's key, so
any replica holding the key verifies it. A nonce older than ``ttl_s`` is refused as ``stale`` (the caller retries
with the new nonce it is sent, ``stale=true``, without asking its user again). ``verify`` checks an Authorization
(or Proxy-Authorization) header against a username and password; an exact replay of a response already accepted
(same nonce, nc and cnonce) is refused, from a bounded memory of the latest ones.

Client side: ``parse_challenge`` reads a WWW-Authenticate / Proxy-Authenticate header, ``pick_challenge`` takes
the strongest one offered that we support, and ``Credentials.authorization`` builds the header answering it with a
fresh cnonce and the nonce's next count.

Nothing here logs, and no secret leaves it except inside a hash.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import struct
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

Algorithm = Literal["SHA-256", "MD5"]
ALGORITHMS: dict[str, Callable[[bytes], hashlib._Hash]] = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}
PREFERENCE = ("SHA-256", "MD5")  # strongest first (RFC 8760 §2.4: challenges in the server's order of preference)
MAX_HEADER = 4096
MAX_REMEMBERED = 4096
_MAC_BYTES = 16


class DigestError(ValueError):
    """A challenge or credentials header we cannot read."""


# ---------------------------------------------------------------- the header syntax
def parse_params(value: str) -> tuple[str, dict[str, str]]:
    """``Digest a=b, c="d, e"`` -> ("digest", {"a": "b", "c": "d, e"}): the scheme and its parameters (names
    lower-cased, quoted strings unquoted)."""
    if len(value) > MAX_HEADER:
        raise DigestError("authentication header too long")
    text = value.strip()
    scheme, _, rest = text.partition(" ")
    if not scheme or "=" in scheme:
        raise DigestError("no authentication scheme")
    params: dict[str, str] = {}
    i, n = 0, len(rest)
    while i < n:
        while i < n and rest[i] in " \t,\r\n":
            i += 1
        if i >= n:
            break
        eq = rest.find("=", i)
        if eq < 0:
            raise DigestError("parameter without a value")
        name = rest[i:eq].strip().lower()
        i = eq + 1
        while i < n and rest[i] in " \t":
            i += 1
        if i < n and rest[i] == '"':
            i += 1
            out = []
            while i < n and rest[i] != '"':
                if rest[i] == "\\" and i + 1 < n:
                    i += 1
                out.append(rest[i])
                i += 1
            if i >= n:
                raise DigestError("unterminated quoted string")
            i += 1
            val = "".join(out)
        else:
            end = rest.find(",", i)
            end = n if end < 0 else end
            val = rest[i:end].strip()
            i = end
        if not name or len(params) >= 32:
            raise DigestError("bad parameter")
        params[name] = val
    return scheme.lower(), params


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _h(algorithm: str, text: str) -> str:
    return ALGORITHMS[algorithm](text.encode()).hexdigest()


def response(algorithm: str, *, username: str, realm: str, password: str, method: str, uri: str, nonce: str,
             qop: str | None = None, nc: str = "", cnonce: str = "") -> str:
    """The ``response`` value (RFC 7616 §3.4.1; RFC 2617 without qop)."""
    sess = algorithm.upper().endswith("-SESS")
    base = algorithm[:-5] if sess else algorithm
    if base not in ALGORITHMS:
        raise DigestError(f"unsupported digest algorithm {algorithm[:20]!r}")
    ha1 = _h(base, f"{username}:{realm}:{password}")
    if sess:
        ha1 = _h(base, f"{ha1}:{nonce}:{cnonce}")
    ha2 = _h(base, f"{method}:{uri}")
    if qop:
        return _h(base, f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")
    return _h(base, f"{ha1}:{nonce}:{ha2}")


# ---------------------------------------------------------------- client side
@dataclass(frozen=True, slots=True)
class Challenge:
    realm: str
    nonce: str
    algorithm: str = "MD5"
    qop: tuple[str, ...] = ()
    opaque: str | None = None
    stale: bool = False

    @property
    def supported(self) -> bool:
        a = self.algorithm.upper()
        base = a[:-5] if a.endswith("-SESS") else a
        return base in ALGORITHMS and (not self.qop or "auth" in self.qop)


def parse_challenge(header: str) -> Challenge:
    """A WWW-Authenticate / Proxy-Authenticate value -> its digest challenge; ``DigestError`` otherwise."""
    scheme, p = parse_params(header)
    if scheme != "digest":
        raise DigestError("not a digest challenge")
    if "realm" not in p or "nonce" not in p:
        raise DigestError("digest challenge without realm or nonce")
    qop = tuple(q.strip().lower() for q in p.get("qop", "").split(",") if q.strip())
    return Challenge(realm=p["realm"], nonce=p["nonce"], algorithm=p.get("algorithm", "MD5").upper(), qop=qop,
                     opaque=p.get("opaque"), stale=p.get("stale", "").lower() == "true")


def pick_challenge(headers: Iterable[str]) -> Challenge | None:
    """The strongest challenge among ``headers`` that we can answer (SHA-256 over MD5), or None."""
    found: list[Challenge] = []
    for h in headers:
        try:
            c = parse_challenge(h)
        except DigestError:
            continue
        if c.supported:
            found.append(c)

    def rank(c: Challenge) -> int:
        base = c.algorithm.removesuffix("-SESS")
        return PREFERENCE.index(base) if base in PREFERENCE else len(PREFERENCE)

    return min(found, key=rank) if found else None


@dataclass
class Credentials:
    """A username and password answering challenges; counts each nonce's uses (``nc``)."""

    username: str
    password: str
    _counts: dict[str, int] = field(default_factory=dict)

    def authorization(self, challenge: Challenge, *, method: str, uri: str, cnonce: str | None = None) -> str:
        qop = "auth" if "auth" in challenge.qop else None
        count = self._counts.get(challenge.nonce, 0) + 1
        if len(self._counts) > 64:
            self._counts.clear()
        self._counts[challenge.nonce] = count
        nc = f"{count:08x}"
        cnonce = cnonce or secrets.token_hex(16)
        value = response(challenge.algorithm, username=self.username, realm=challenge.realm, password=self.password,
                         method=method, uri=uri, nonce=challenge.nonce, qop=qop, nc=nc, cnonce=cnonce)
        parts = [f"username={_quote(self.username)}", f"realm={_quote(challenge.realm)}",
                 f"nonce={_quote(challenge.nonce)}", f"uri={_quote(uri)}", f"response={_quote(value)}",
                 f"algorithm={challenge.algorithm}"]
        if qop:
            parts += [f"qop={qop}", f"nc={nc}", f"cnonce={_quote(cnonce)}"]
        if challenge.opaque is not None:
            parts.append(f"opaque={_quote(challenge.opaque)}")
        return "Digest " + ", ".join(parts)


# ---------------------------------------------------------------- server side
Verdict = Literal["ok", "stale", "wrong", "malformed"]


@dataclass(frozen=True, slots=True)
class Presented:
    """What an Authorization header claims, read before the password is known (to find the trunk by username)."""

    username: str
    realm: str
    nonce: str
    uri: str
    response: str
    algorithm: str
    qop: str | None
    nc: str
    cnonce: str
    opaque: str | None


def parse_authorization(header: str) -> Presented:
    scheme, p = parse_params(header)
    if scheme != "digest":
        raise DigestError("not digest credentials")
    for name in ("username", "realm", "nonce", "uri", "response"):
        if name not in p:
            raise DigestError(f"digest credentials without {name}")
    qop = p.get("qop") or None
    if qop is not None and qop.lower() != "auth":
        raise DigestError("only qop=auth is supported")
    if qop is not None and ("nc" not in p or "cnonce" not in p):
        raise DigestError("qop without nc or cnonce")
    return Presented(username=p["username"], realm=p["realm"], nonce=p["nonce"], uri=p["uri"],
                     response=p["response"].lower(), algorithm=p.get("algorithm", "MD5").upper(),
                     qop=qop.lower() if qop else None, nc=p.get("nc", ""), cnonce=p.get("cnonce", ""),
                     opaque=p.get("opaque"))


class DigestServer:
    """Challenges and verifies digest credentials with stateless, expiring nonces (an HMAC of their time)."""

    def __init__(self, key: bytes, realm: str, *, ttl_s: float = 300.0,
                 clock: Callable[[], float] = time.time) -> None:
        if len(key) < 16:
            raise ValueError("the nonce key must hold at least 16 bytes")
        self._key, self.realm, self.ttl_s, self._clock = key, realm, ttl_s, clock
        self._seen: OrderedDict[tuple[str, str, str], None] = OrderedDict()  # (nonce, nc, cnonce) accepted

    def nonce(self) -> str:
        stamp = struct.pack("!Q", int(self._clock() * 1000))
        mac = hmac.new(self._key, stamp + self.realm.encode(), hashlib.sha256).digest()[:_MAC_BYTES]
        return base64.urlsafe_b64encode(stamp + mac).decode().rstrip("=")

    def _nonce_age(self, nonce: str) -> float | None:
        """Seconds since ``nonce`` was issued, None when it is not one of ours."""
        try:
            raw = base64.urlsafe_b64decode(nonce + "=" * (-len(nonce) % 4))
        except (ValueError, TypeError):
            return None
        if len(raw) != 8 + _MAC_BYTES:
            return None
        stamp, mac = raw[:8], raw[8:]
        good = hmac.new(self._key, stamp + self.realm.encode(), hashlib.sha256).digest()[:_MAC_BYTES]
        if not hmac.compare_digest(mac, good):
            return None
        (ms,) = struct.unpack("!Q", stamp)
        return self._clock() - ms / 1000

    def challenges(self, algorithms: Iterable[str], *, stale: bool = False) -> list[str]:
        """WWW-Authenticate values, one per algorithm in the order given (the most preferred first, RFC 8760
        §2.4: many clients answer the first one only), sharing one nonce."""
        nonce = self.nonce()
        wanted = list(dict.fromkeys(a for a in algorithms if a in ALGORITHMS))
        return [f"Digest realm={_quote(self.realm)}, nonce={_quote(nonce)}, algorithm={a}, qop=\"auth\""
                + (", stale=true" if stale else "") for a in wanted]

    def verify(self, presented: Presented, *, method: str, username: str, password: str,
               algorithms: Iterable[str]) -> Verdict:
        """``ok``; ``stale`` (a nonce of ours, expired: challenge again with stale=true); ``wrong`` (another
        user, password, realm, algorithm or nonce, or a replay); ``malformed`` is ``parse_authorization``'s."""
        if presented.algorithm not in set(algorithms) or presented.realm != self.realm:
            return "wrong"
        age = self._nonce_age(presented.nonce)
        if age is None or age < -5:
            return "wrong"
        expected = response(presented.algorithm, username=username, realm=self.realm, password=password,
                            method=method, uri=presented.uri, nonce=presented.nonce, qop=presented.qop,
                            nc=presented.nc, cnonce=presented.cnonce)
        right = hmac.compare_digest(presented.username.encode(), username.encode())
        right = hmac.compare_digest(presented.response.encode(), expected.encode()) and right
        if not right:
            return "wrong"
        if age > self.ttl_s:
            return "stale"
        key = (presented.nonce, presented.nc, presented.cnonce)
        if key in self._seen:
            return "wrong"  # the very same response again: a replay
        self._seen[key] = None
        while len(self._seen) > MAX_REMEMBERED:
            self._seen.popitem(last=False)
        return "ok"
