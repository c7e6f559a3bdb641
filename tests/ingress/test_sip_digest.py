"""SIP digest authentication as units: RFC 7616's published examples (MD5 and SHA-256), the stateless expiring
nonce, the client's header answering the server's challenge, and refusals."""

from __future__ import annotations

import pytest
from voice_ingress import sip_digest as d

pytestmark = pytest.mark.unit

# RFC 7616 §3.9.1
RFC = {"username": "Mufasa", "realm": "http-auth@example.org", "password": "Circle of Life", "method": "GET",
       "uri": "/dir/index.html", "nonce": "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", "qop": "auth",
       "nc": "00000001", "cnonce": "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"}
CHALLENGE = ('Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm=SHA-256, '
             'nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", '
             'opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"')


@pytest.mark.parametrize("algorithm,expected", [
    ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
    ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
])
def test_rfc7616_example_responses(algorithm: str, expected: str) -> None:
    assert d.response(algorithm, **RFC) == expected


def test_the_client_answers_the_rfc7616_challenge_with_its_response() -> None:
    c = d.parse_challenge(CHALLENGE)
    assert (c.algorithm, c.qop, c.opaque, c.stale) == ("SHA-256", ("auth", "auth-int"),
                                                     "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS", False)
    header = d.Credentials("Mufasa", "Circle of Life").authorization(c, method="GET", uri="/dir/index.html",
                                                                      cnonce=RFC["cnonce"])
    p = d.parse_authorization(header)
    assert p.response == "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"
    assert (p.nc, p.qop, p.opaque, p.algorithm) == ("00000001", "auth", c.opaque, "SHA-256")
    again = d.parse_authorization(d.Credentials("Mufasa", "x").authorization(c, method="GET", uri="/"))
    assert again.nc == "00000001" and len(again.cnonce) == 32


def test_pick_challenge_prefers_sha256_and_skips_what_it_cannot_answer() -> None:
    md5 = 'Digest realm="r", nonce="n1", qop="auth"'
    sha = 'Digest realm="r", nonce="n2", algorithm=SHA-256, qop="auth"'
    odd = 'Digest realm="r", nonce="n3", algorithm=SHA-512-256'
    assert d.pick_challenge([md5, sha, odd]).algorithm == "SHA-256"  # type: ignore[union-attr]
    assert d.pick_challenge([odd, 'Basic realm="x"']) is None


def server(now: list[float], ttl: float = 60.0) -> d.DigestServer:
    return d.DigestServer(b"k" * 32, "voice", ttl_s=ttl, clock=lambda: now[0])


@pytest.mark.parametrize("algorithm", ["SHA-256", "MD5"])
def test_server_challenge_then_verify_right_wrong_replay_and_stale(algorithm: str) -> None:
    now = [1000.0]
    s = server(now)
    challenges = s.challenges(["SHA-256", "MD5", "SHA-256", "SHA-512"])
    assert [d.parse_challenge(h).algorithm for h in challenges] == ["SHA-256", "MD5"]  # in order, known ones
    assert len({d.parse_challenge(h).nonce for h in challenges}) == 1
    c = next(d.parse_challenge(h) for h in challenges if d.parse_challenge(h).algorithm == algorithm)
    good = d.Credentials("pbx", "s3cret")

    def check(creds: d.Credentials, user: str = "pbx", pw: str = "s3cret", algs: tuple[str, ...] = ("SHA-256", "MD5"),
              header: str | None = None) -> str:
        h = header or creds.authorization(c, method="INVITE", uri="sip:+15550100@10.0.0.1")
        return s.verify(d.parse_authorization(h), method="INVITE", username=user, password=pw, algorithms=algs)

    header = good.authorization(c, method="INVITE", uri="sip:+15550100@10.0.0.1")
    assert check(good, header=header) == "ok"
    assert check(good, header=header) == "wrong"  # the same response again: a replay
    assert check(good) == "ok"  # the next count of the same nonce
    assert check(d.Credentials("pbx", "guess")) == "wrong"
    assert check(d.Credentials("other", "s3cret")) == "wrong"
    assert check(good, algs=("SHA-256",) if algorithm == "MD5" else ("MD5",)) == "wrong"  # not offered
    now[0] += 61
    assert check(good) == "stale"  # right credentials on an expired nonce: challenge again, stale=true
    assert "stale=true" in s.challenges(["MD5"], stale=True)[0]


def test_nonces_of_another_key_or_realm_and_garbage_are_refused() -> None:
    now = [1000.0]
    ours = server(now)
    theirs = d.DigestServer(b"x" * 32, "voice", clock=lambda: now[0])
    c = d.parse_challenge(theirs.challenges(["MD5"])[0])
    h = d.Credentials("pbx", "pw").authorization(c, method="INVITE", uri="sip:x@y")
    assert ours.verify(d.parse_authorization(h), method="INVITE", username="pbx", password="pw",
                       algorithms=["MD5"]) == "wrong"
    for bad in ["Basic dXNlcjpwYXNz", 'Digest username="a"', 'Digest username="a, realm="r"', "Digest",
                'Digest username="a", realm="r", nonce="n", uri="u", response="r", qop=auth-int, nc=1, cnonce="c"',
                "Digest " + "a=b, " * 40, "x" * 5000]:
        with pytest.raises(d.DigestError):
            d.parse_authorization(bad)
