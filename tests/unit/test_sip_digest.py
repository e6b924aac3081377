"""The pure digest layer: RFC 7616's own example, nonces, nonce-counts, header parsing."""

from __future__ import annotations

import pytest

from imc_actors.sip.digest import (
    NC_WINDOW,
    Credentials,
    DigestError,
    NonceCounts,
    Nonces,
    authorization,
    challenge,
    expected_response,
    ha1,
    parse_challenge,
    parse_credentials,
)

# RFC 7616 §3.9.1
USER, PASSWORD, REALM = "Mufasa", "Circle of Life", "http-auth@example.org"
NONCE = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v"
CNONCE = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"


@pytest.mark.parametrize(
    "algorithm, response",
    [
        ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
        ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
    ],
)
def test_the_rfc_7616_example(algorithm, response):
    secret = ha1(algorithm, USER, REALM, PASSWORD)
    assert expected_response(algorithm, secret, "GET", "/dir/index.html", NONCE, "00000001", CNONCE) == response


def test_credentials_are_parsed_with_quotes_escapes_and_commas():
    value = (
        'Digest username="al\\"ice", realm="example.org",nonce="n,1", uri="sip:chat@example.org",'
        ' response="ABCDEF", algorithm=SHA-256, cnonce="c", qop=auth, nc=0000000a, opaque="o"'
    )
    assert parse_credentials(value) == Credentials(
        'al"ice', "example.org", "n,1", "sip:chat@example.org", "abcdef", "SHA-256", "c", 10,
        "0000000a", "o",
    )  # fmt: skip


def test_a_tab_may_follow_the_scheme():
    # LWS is spaces or tabs (RFC 3261 §25.1): "Digest<TAB>username=…" was "Not a Digest"
    value = 'Digest\tusername="alice", realm="example.org", nonce="n", uri="sip:x@example.org",' \
        ' response="ab", qop=auth, nc=00000001, cnonce="c"'  # fmt: skip
    assert parse_credentials(value).username == "alice"


@pytest.mark.parametrize(
    "value, reason",
    [
        ('Basic YWxpY2U6cHc=', "Not a Digest authorization"),
        ('Digestusername="a"', "Not a Digest authorization"),
        ('Digest username="a", realm="r", nonce="n", uri="u"', "Digest response missing"),
        ('Digest username="a" realm="r"', "Malformed Digest parameters"),
        ('Digest username="a", username="b", realm="r"', "Digest parameter username twice"),
        ('Digest username="a", realm="r", nonce="n", uri="u", response="x", algorithm=SHA-512-256,'
         ' qop=auth, nc=00000001, cnonce="c"', "Unsupported Digest algorithm"),
        ('Digest username="a", realm="r", nonce="n", uri="u", response="x"', "Digest qop=auth required"),
        ('Digest username="a", realm="r", nonce="n", uri="u", response="x", qop=auth, nc=1, cnonce="c"',
         "Digest nc and cnonce required"),
        ('Digest username="a", realm="r", nonce="n", uri="u", response="x", qop=auth, nc=00000000,'
         ' cnonce="c"', "Digest nc must be 1 or more"),
    ],
)
def test_credentials_we_cannot_check_are_refused_with_a_reason(value, reason):
    with pytest.raises(DigestError) as caught:
        parse_credentials(value)
    assert str(caught.value) == reason


def test_the_client_side_answers_the_server_side():
    offered = challenge("example.org", "abc", "SHA-256")
    assert offered == 'Digest realm="example.org", nonce="abc", algorithm=SHA-256, qop="auth"'
    chosen = parse_challenge(offered + ", stale=true")
    assert chosen.stale and chosen.qop == ("auth",)
    credentials = parse_credentials(authorization(chosen, "MESSAGE", "sip:r@example.org", "bob", "pw", 3))
    assert credentials.nc == 3 and credentials.algorithm == "SHA-256"
    expected = expected_response(
        "SHA-256", ha1("SHA-256", "bob", "example.org", "pw"), "MESSAGE", "sip:r@example.org",
        "abc", credentials.nc_text, credentials.cnonce,
    )  # fmt: skip
    assert credentials.response == expected


def test_nonces_are_signed_and_expire():
    nonces = Nonces(b"k" * 32, lifetime=300)
    nonce = nonces.make(1000.0)
    assert nonces.issued(nonce) == 1000.0
    assert not nonces.is_stale(1000.0, 1300.0) and nonces.is_stale(1000.0, 1300.5)
    assert Nonces(b"other", 300).issued(nonce) is None  # another secret
    forged = nonce[:-2] + ("AA" if nonce[-2:] != "AA" else "BB")
    assert nonces.issued(forged) is None
    assert nonces.issued("short") is None and nonces.issued("!" * 43) is None
    assert nonces.make(1000.0) != nonce


def test_nonce_counts_refuse_replays_and_stay_bounded():
    counts = NonceCounts(limit=3)
    assert counts.fresh("a", 10.0, 1)
    counts.record("a", 10.0, 1)
    assert not counts.fresh("a", 10.0, 1) and not counts.fresh("a", 10.0, 0)
    assert counts.fresh("a", 10.0, 2)
    assert not counts.fresh("b", 11.0, 0)  # counts start at 1
    for index, nonce in enumerate("bcde"):
        counts.record(nonce, 20.0 + index, 1)
    assert len(counts) == 3 and counts.floor == 20.0  # "a" then "b" forgotten
    # forgotten nonces (issued before the floor) count as used up: no replay after eviction
    assert not counts.fresh("a", 10.0, 2) and not counts.fresh("b", 20.0, 2)
    assert counts.fresh("new", 30.0, 1)
    for index in range(1000):  # whatever is recorded, the table keeps `limit` entries
        counts.record(f"n{index}", 40.0 + index, 1)
    assert len(counts) == 3


def test_nonce_counts_take_each_count_once_in_any_order_within_the_window():
    counts = NonceCounts(limit=10)
    # requests sent back to back with counts 1..5 and checked in another order all pass once
    for nc in (2, 5, 1, 4, 3):
        assert counts.fresh("a", 10.0, nc)
        counts.record("a", 10.0, nc)
    assert not any(counts.fresh("a", 10.0, nc) for nc in range(0, 6))
    # a jump ahead shifts the window: what was seen stays seen, the gap stays usable
    counts.record("a", 10.0, 5 + NC_WINDOW - 1)
    assert not counts.fresh("a", 10.0, 5) and counts.fresh("a", 10.0, 6)
    assert not counts.fresh("a", 10.0, 4)  # below the window: too old to tell, a replay
    counts.record("a", 10.0, 6)
    assert not counts.fresh("a", 10.0, 6) and counts.fresh("a", 10.0, 7)
    counts.record("a", 10.0, 1000)
    assert not counts.fresh("a", 10.0, 1000 - NC_WINDOW) and counts.fresh("a", 10.0, 1001 - NC_WINDOW)
    assert not counts.fresh("a", 10.0, 1000) and counts.fresh("a", 10.0, 999)
