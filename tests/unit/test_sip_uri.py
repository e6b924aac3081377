"""aor_key / canonical / complete_argument / split_uri (spec §1)."""

from __future__ import annotations

import pytest

from imc_actors.imc.state import member_key
from imc_actors.sip import aor_key, canonical, complete_argument, split_uri
from imc_actors.sip.uri import canonical_user


@pytest.mark.parametrize(
    ("uri", "user", "host"),
    [
        ("sip:bob@example.com", "bob", "example.com"),
        ("sip:Bob@Example.COM", "Bob", "Example.COM"),
        ("sips:bob@example.com:5061;transport=tls", "bob", "example.com"),
        ("sip:bob:secret@example.com", "bob", "example.com"),
        ('"Bob B." <sip:bob@example.com;transport=tcp>;tag=1', "bob", "example.com"),
        ("<sip:bob@192.0.2.1:5060>", "bob", "192.0.2.1"),
        ("sip:bob@[2001:db8::1]:5060", "bob", "[2001:db8::1]"),
        ("SIP:bob@example.com", "bob", "example.com"),
        ("sip:%62ob@example.com", "bob", "example.com"),
        ("sip:a%20b@example.com", "a%20b", "example.com"),
        ("  sip:bob@example.com  ", "bob", "example.com"),
    ],
)
def test_split_uri(uri: str, user: str, host: str) -> None:
    assert split_uri(uri) == (user, host)


@pytest.mark.parametrize(
    "uri",
    ["", "bob", "bob@example.com", "sip:example.com", "sip:@example.com", "tel:+15551234",
     "http://example.com", "sip:bob@", "sip:bo b@example.com", "<sip:bob@example.com",
     "sip:bob@exa_mple.com", "@@"],
)  # fmt: skip
def test_split_uri_rejects(uri: str) -> None:
    with pytest.raises(ValueError):
        split_uri(uri)
    with pytest.raises(ValueError):
        canonical(uri)
    with pytest.raises(ValueError):
        aor_key(uri)


def test_canonical_keeps_case_drops_the_rest() -> None:
    assert canonical('"Room" <sips:Chat@Example.com:5061;transport=tls>;tag=x') == (
        "sip:Chat@Example.com"
    )
    assert canonical("sip:%63hat@example.com") == "sip:chat@example.com"


def test_aor_key_is_case_insensitive_identity() -> None:
    assert aor_key("sip:Bob@Example.COM") == "bob@example.com"
    assert aor_key("<sip:BOB@example.com:5060>") == aor_key("sip:bob@EXAMPLE.com")
    assert aor_key("sip:%42ob@example.com") == "bob@example.com"


@pytest.mark.parametrize(
    "uri",
    ["sip:Bob@Example.COM", "sip:a%20b@x.org", "sips:X@[2001:DB8::1]:5061", "sip:%41@x.org"],
)
def test_aor_key_agrees_with_member_key(uri: str) -> None:
    assert aor_key(uri) == member_key(canonical(uri))


@pytest.mark.parametrize(
    ("arg", "expected"),
    [
        ("bob", "sip:bob@conf.example.com"),
        ("Bob", "sip:Bob@conf.example.com"),
        ("bob@x.org", "sip:bob@x.org"),
        ("sip:bob@x.org", "sip:bob@x.org"),
        ("sip:bob@x.org;transport=tcp", "sip:bob@x.org"),
        ("sip:bob@x.org:5070", "sip:bob@x.org"),
        ("sips:bob@x.org", "sip:bob@x.org"),
        ("sip:bob", "sip:bob@conf.example.com"),
    ],
)
def test_complete_argument(arg: str, expected: str) -> None:
    assert complete_argument(arg, "conf.example.com") == expected


@pytest.mark.parametrize(
    "arg",
    ["bad uri", "sip:@x", "@@", "", "@", "bob@", "tel:+15551234", "http://x.org",
     "bob:secret@x.org:5060:1", "sip:bob@x org", "mailto:bob@x.org",
     # the command grammar (spec §1): no name-addr, no parameters before the host
     "<sip:bob@x.org>", "sip:bob;transport=tcp"],
)  # fmt: skip
def test_complete_argument_rejects(arg: str) -> None:
    with pytest.raises(ValueError):
        complete_argument(arg, "conf.example.com")


@pytest.mark.parametrize(
    ("user", "expected"),
    [
        ("chat", "chat"),
        ("%63hat", "chat"),
        ("%43HAT", "CHAT"),  # case of the letters is kept; they compare case-insensitively
        ("imc%2Dmanager", "imc-manager"),
        ("imc%2dmanager", "imc-manager"),
        ("a%20b", "a%20b"),
        ("a b", "a%20b"),
        ("a%40b", "a%40b"),
        ("a;b", "a%3Bb"),
        ("a%3bb", "a%3Bb"),
        ("a?b/c", "a%3Fb%2Fc"),
        ("caf%c3%a9", "caf%C3%A9"),
        ("%FF", "%FF"),
        ("%zz", "%25zz"),
        ("b.o-b_+1!~*'()&=$,", "b.o-b_+1!~*'()&=$,"),
    ],
)
def test_canonical_user(user: str, expected: str) -> None:
    assert canonical_user(user) == expected
    assert canonical_user(expected) == expected  # idempotent


def test_escapes_never_merge_distinct_users() -> None:
    """Undecodable bytes stay what they were (sipmessage's own decoding maps them all to
    U+FFFD, which would make sip:%FFbob and sip:%FEbob one member)."""
    assert aor_key("sip:%FFbob@x.org") != aor_key("sip:%FEbob@x.org")
    assert split_uri("sip:%FFbob@x.org") == ("%FFbob", "x.org")


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("sip:imc%2Dmanager@x.org", "sip:imc-manager@x.org"),
        ("<sip:%63hat@x.org;transport=tcp>", "sip:chat@x.org"),
        ('"A <b>" <sip:%61lice:pw%40x@x.org>;tag=1', "sip:alice@x.org"),
        ("sip:a;b@x.org", "sip:a%3Bb@x.org"),
    ],
)
def test_canonical_unescapes_the_user(uri: str, expected: str) -> None:
    assert canonical(uri) == expected
