"""Registrar (spec §7, RFC 3261 §10.3): every branch, with explicit times."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from imc_actors.registrar import MAX_ANSWER, Registrar, answer_fits, parse_contacts
from imc_actors.sip import Request, build_request, build_response, parse

AOR = "sip:alice@example.org"
PHONE = "sip:alice@192.0.2.1:5060"
LAPTOP = "sip:alice@192.0.2.2:5070;transport=tcp"


def register(
    contacts: Sequence[str] = (),
    *,
    expires: int | str | None = None,
    to: str = AOR,
    call_id: str = "reg-1@192.0.2.1",
    cseq: int = 1,
    extra: Sequence[tuple[str, str]] = (),
) -> Request:
    """A parsed REGISTER with one Contact header per entry of ``contacts``."""
    headers = [("Contact", c) for c in contacts]
    if expires is not None:
        headers.append(("Expires", str(expires)))
    headers.extend(extra)
    data = build_request(
        "REGISTER", "sip:example.org", from_uri=to, from_tag="ft", to_uri=to, call_id=call_id,
        cseq=cseq, via_host="192.0.2.1", via_port=5060, via_transport="UDP",
        branch="z9hG4bKtest", headers=headers,
    )  # fmt: skip
    request = parse(data)
    assert isinstance(request, Request)
    return request


def contacts_of(reply) -> list[str]:
    return [value for name, value in reply.headers if name == "Contact"]


@pytest.fixture
def reg() -> Registrar:
    return Registrar(["example.org", "Other.Example"], min_expires=60, max_expires=3600,
                     default_expires=1800)  # fmt: skip


def test_register_default_expiry(reg: Registrar) -> None:
    reply = reg.register(register([f"<{PHONE}>"]), now=100.0)
    assert reply.code == 200
    assert contacts_of(reply) == [f"<{PHONE}>;expires=1800"]
    assert reg.lookup("alice@example.org", 100.0) == [PHONE]
    assert reg.bindings(100.0) == {"alice@example.org": [(PHONE, 1900.0)]}


def test_expires_header_and_contact_param(reg: Registrar) -> None:
    reply = reg.register(register([f"<{PHONE}>", f"<{LAPTOP}>;expires=120"], expires=600), now=0.0)
    assert reply.code == 200
    assert sorted(contacts_of(reply)) == sorted(
        [f"<{PHONE}>;expires=600", f"<{LAPTOP}>;expires=120"]
    )


def test_expiry_above_max_is_shortened(reg: Registrar) -> None:
    reply = reg.register(register([f"<{PHONE}>"], expires=99999), now=0.0)
    assert contacts_of(reply) == [f"<{PHONE}>;expires=3600"]


def test_malformed_expires_counts_as_3600(reg: Registrar) -> None:
    reply = reg.register(register([f"<{PHONE}>;expires=soon"]), now=0.0)
    assert contacts_of(reply) == [f"<{PHONE}>;expires=3600"]


def test_interval_too_brief(reg: Registrar) -> None:
    reply = reg.register(register([f"<{PHONE}>", f"<{LAPTOP}>"], expires=30), now=0.0)
    assert reply.code == 423
    assert reply.reason == "Interval Too Brief"
    assert ("Min-Expires", "60") in reply.headers
    assert reg.lookup("alice@example.org", 0.0) == []


def test_interval_too_brief_in_contact_param_applies_nothing(reg: Registrar) -> None:
    reply = reg.register(register([f"<{PHONE}>", f"<{LAPTOP}>;expires=5"], expires=600), 0.0)
    assert reply.code == 423
    assert reg.lookup("alice@example.org", 0.0) == []


def test_expires_zero_removes_one_binding(reg: Registrar) -> None:
    reg.register(register([f"<{PHONE}>", f"<{LAPTOP}>"], cseq=1), now=0.0)
    reply = reg.register(register([f"<{PHONE}>"], expires=0, cseq=2), now=10.0)
    assert reply.code == 200
    assert contacts_of(reply) == [f"<{LAPTOP}>;expires=1790"]
    assert reg.lookup("alice@example.org", 10.0) == [LAPTOP]


def test_wildcard_removes_all(reg: Registrar) -> None:
    reg.register(register([f"<{PHONE}>", f"<{LAPTOP}>"], cseq=1), now=0.0)
    reply = reg.register(register(["*"], expires=0, cseq=2), now=1.0)
    assert reply.code == 200
    assert contacts_of(reply) == []
    assert reg.lookup("alice@example.org", 1.0) == []
    assert reg.bindings(1.0) == {}


@pytest.mark.parametrize(
    ("contacts", "expires"),
    [
        (["*"], None),  # no Expires header
        (["*"], 30),  # Expires not 0
        (["*", f"<{PHONE}>"], 0),  # wildcard with another contact
        ([f"<{PHONE}>, *"], 0),  # ... in the same header
    ],
)
def test_wildcard_misuse_is_400(reg: Registrar, contacts: list[str], expires: int | None) -> None:
    reg.register(register([f"<{LAPTOP}>"], cseq=1), now=0.0)
    reply = reg.register(register(contacts, expires=expires, cseq=2), now=1.0)
    assert reply.code == 400
    assert reg.lookup("alice@example.org", 1.0) == [LAPTOP]


@pytest.mark.parametrize(
    "contact",
    ["<<<>>>", "<tel:+123>", "<sip:x@192.0.2.9:99999>", "<sip:x@192.0.2.9:0>",
     "<sip:x@192.0.2.9;transport=sctp>", "<sip:x@999.0.0.1>",
     f"<sip:x@{'a' * 64}.example.org>",
     "<sip:x@a..example.org>", f"<sip:x@{('a' * 50 + '.') * 5}org>",
     # no one host's address (a tour: all three were bound with 200)
     "<sip:x@0.0.0.0:5000>", "<sip:x@224.0.0.1:5000>", "<sip:x@255.255.255.255>",
     "<sip:x@[::]:5000>", "<sip:x@[ff02::1]>"],
)  # fmt: skip
def test_a_contact_nothing_could_be_delivered_to_is_400_and_registers_nothing(
    reg: Registrar, contact: str
) -> None:
    # they were bound (200) and failed only at delivery: notices stored, DNS lookups of "<<"
    reg.register(register([f"<{LAPTOP}>"], cseq=1), now=0.0)
    reply = reg.register(register([f"<{PHONE}>", contact], cseq=2), now=1.0)
    assert (reply.code, reply.reason) == (400, "Invalid Contact")
    assert reply.body  # says which and why
    assert reg.lookup("alice@example.org", 1.0) == [LAPTOP]
    assert reg.register(register([contact], expires=0, cseq=3), now=2.0).code == 200  # removal


def test_no_contact_lists_bindings(reg: Registrar) -> None:
    reg.register(register([f"<{PHONE}>"], expires=600, cseq=1), now=0.0)
    reg.register(register([f"<{LAPTOP}>"], expires=900, cseq=2), now=100.0)
    reply = reg.register(register([], cseq=3), now=200.0)
    assert reply.code == 200
    # most recent first, remaining seconds
    assert contacts_of(reply) == [f"<{LAPTOP}>;expires=800", f"<{PHONE}>;expires=400"]


def test_query_for_unknown_aor_is_empty_200(reg: Registrar) -> None:
    reply = reg.register(register([], to="sip:nobody@example.org"), now=0.0)
    assert reply.code == 200
    assert contacts_of(reply) == []


def test_domain_not_served_is_404(reg: Registrar) -> None:
    reply = reg.register(register([f"<{PHONE}>"], to="sip:alice@elsewhere.net"), now=0.0)
    assert reply.code == 404
    assert reg.bindings(0.0) == {}


def test_domains_compare_case_insensitively(reg: Registrar) -> None:
    reply = reg.register(register([f"<{PHONE}>"], to="sip:Bob@OTHER.example"), now=0.0)
    assert reply.code == 200
    assert reg.lookup("BOB@other.EXAMPLE", 0.0) == [PHONE]


def test_to_without_user_is_404(reg: Registrar) -> None:
    reply = reg.register(register([f"<{PHONE}>"], to="sip:example.org"), now=0.0)
    assert reply.code == 404


def test_require_is_420(reg: Registrar) -> None:
    reply = reg.register(register([f"<{PHONE}>"], extra=[("Require", "gruu, path")]), now=0.0)
    assert reply.code == 420
    assert ("Unsupported", "gruu, path") in reply.headers
    assert reg.bindings(0.0) == {}


def test_same_call_id_stale_cseq_is_400_and_applies_nothing(reg: Registrar) -> None:
    reg.register(register([f"<{PHONE}>"], expires=600, cseq=5), now=0.0)
    for stale in (5, 4):
        reply = reg.register(register([f"<{LAPTOP}>", f"<{PHONE}>"], cseq=stale), now=1.0)
        assert (reply.code, reply.reason) == (400, "Invalid CSeq")  # input: never a 500
        assert reg.lookup("alice@example.org", 1.0) == [PHONE]  # LAPTOP not added either


def test_same_call_id_higher_cseq_updates(reg: Registrar) -> None:
    reg.register(register([f"<{PHONE}>"], expires=600, cseq=5), now=0.0)
    reply = reg.register(register([f"<{PHONE}>"], expires=1200, cseq=6), now=1.0)
    assert contacts_of(reply) == [f"<{PHONE}>;expires=1200"]


def test_other_call_id_any_cseq_updates(reg: Registrar) -> None:
    reg.register(register([f"<{PHONE}>"], expires=600, cseq=5), now=0.0)
    reply = reg.register(register([f"<{PHONE}>"], expires=1200, cseq=1, call_id="other"), 1.0)
    assert reply.code == 200
    assert contacts_of(reply) == [f"<{PHONE}>;expires=1200"]


def test_wildcard_with_stale_cseq_is_400(reg: Registrar) -> None:
    reg.register(register([f"<{PHONE}>"], cseq=5), now=0.0)
    reply = reg.register(register(["*"], expires=0, cseq=5), now=1.0)
    assert reply.code == 400
    assert reg.lookup("alice@example.org", 1.0) == [PHONE]


def test_expiry_with_explicit_times(reg: Registrar) -> None:
    reg.register(register([f"<{PHONE}>"], expires=60), now=1000.0)
    assert reg.lookup("alice@example.org", 1059.9) == [PHONE]
    assert reg.lookup("alice@example.org", 1060.0) == []
    assert reg.bindings(1060.0) == {}


def test_expired_binding_not_listed(reg: Registrar) -> None:
    reg.register(register([f"<{PHONE}>"], expires=60, cseq=1), now=0.0)
    reg.register(register([f"<{LAPTOP}>"], expires=600, cseq=2), now=0.0)
    reply = reg.register(register([], cseq=3), now=61.0)
    assert contacts_of(reply) == [f"<{LAPTOP}>;expires=539"]


def test_lookup_most_recent_first_and_refresh_reorders(reg: Registrar) -> None:
    reg.register(register([f"<{PHONE}>"], cseq=1), now=0.0)
    reg.register(register([f"<{LAPTOP}>"], cseq=2), now=1.0)
    assert reg.lookup("Alice@Example.ORG", 2.0) == [LAPTOP, PHONE]
    reg.register(register([f"<{PHONE}>"], cseq=3), now=3.0)
    assert reg.lookup("alice@example.org", 4.0) == [PHONE, LAPTOP]


def test_contact_comparison_ignores_host_case(reg: Registrar) -> None:
    reg.register(register(["<sip:alice@Host.Example:5060>"], cseq=1), now=0.0)
    reg.register(register(["<sip:alice@host.example:5060>"], cseq=2), now=1.0)
    assert reg.lookup("alice@example.org", 1.0) == ["sip:alice@host.example:5060"]


def test_list_and_display_names_in_one_header(reg: Registrar) -> None:
    reply = reg.register(
        register([f'"Alice, at home" <{PHONE}>;q=0.7, {LAPTOP.split(";")[0]};expires=300']),
        now=0.0,
    )
    assert reply.code == 200
    assert sorted(reg.lookup("alice@example.org", 0.0)) == sorted(
        [PHONE, "sip:alice@192.0.2.2:5070"]
    )
    assert "<sip:alice@192.0.2.2:5070>;expires=300" in contacts_of(reply)


def test_purge_drops_expired(reg: Registrar) -> None:
    reg.register(register([f"<{PHONE}>"], expires=60, to="sip:a@example.org"), now=0.0)
    reg.register(register([f"<{PHONE}>"], expires=600, to="sip:b@example.org"), now=0.0)
    assert reg.purge(100.0) == 1
    assert list(reg.bindings(100.0)) == ["b@example.org"]


def test_invalid_limits_rejected() -> None:
    with pytest.raises(ValueError):
        Registrar(["x"], min_expires=100, default_expires=50, max_expires=3600)


def test_parse_contacts() -> None:
    assert parse_contacts("*") == [("*", {})]
    assert parse_contacts('"A;b,c" <sip:a@h;lr>;expires=5;q=0.5, sip:b@h;Expires=7;flag') == [
        ("sip:a@h;lr", {"expires": "5", "q": "0.5"}),
        ("sip:b@h", {"expires": "7", "flag": None}),
    ]
    assert parse_contacts("  ,  ") == []


# -- limits (max_contacts, max_aors) -----------------------------------------------------------


def bound(registrar: Registrar, now: float = 0.0) -> list[str]:
    return registrar.lookup("alice@example.org", now)


def test_beyond_max_contacts_the_least_recently_registered_binding_makes_room() -> None:
    registrar = Registrar(["example.org"], max_contacts=2)
    for i, port in enumerate((5061, 5062, 5063)):
        reply = registrar.register(
            register([f"<sip:alice@192.0.2.1:{port}>"], cseq=i + 1), float(i)
        )
        assert reply.code == 200
    assert bound(registrar, 3.0) == ["sip:alice@192.0.2.1:5063", "sip:alice@192.0.2.1:5062"]
    # refreshing an existing binding never evicts
    assert registrar.register(register(["<sip:alice@192.0.2.1:5062>"], cseq=9), 4.0).code == 200
    assert sorted(bound(registrar, 4.0)) == ["sip:alice@192.0.2.1:5062", "sip:alice@192.0.2.1:5063"]


def test_a_register_with_more_contacts_than_max_contacts_is_refused_whole() -> None:
    registrar = Registrar(["example.org"], max_contacts=3)
    many = [
        ", ".join(f"<sip:alice@192.0.2.1:{5000 + 50 * h + i}>" for i in range(50))
        for h in range(10)
    ]
    reply = registrar.register(register(many), 0.0)  # 500 contacts in 10 headers
    assert reply.code == 403 and "at most 3 contacts" in dict(reply.headers)["Warning"]
    assert bound(registrar) == []


def test_the_evictions_are_part_of_the_durable_update() -> None:
    registrar = Registrar(["example.org"], max_contacts=1)
    assert registrar.register(register([f"<{PHONE}>"]), 0.0).code == 200
    update = registrar.plan(register([f"<{LAPTOP}>"], cseq=2), 1.0)
    assert not isinstance(update, type(registrar.register(register(), 1.0)))
    assert [(uri, seconds) for _, uri, seconds in update.changes] == [(PHONE, 0), (LAPTOP, 3600)]
    kinds = [type(w).__name__ for w in update.writes(1000.0)]
    assert kinds == ["BindingDelete", "BindingSet"]


def test_beyond_max_aors_a_new_address_of_record_gets_503() -> None:
    registrar = Registrar(["example.org"], max_aors=2)
    for user in ("a", "b"):
        assert (
            registrar.register(
                register([f"<sip:{user}@192.0.2.1>"], to=f"sip:{user}@example.org"), 0.0
            ).code
            == 200
        )
    refused = registrar.register(register(["<sip:c@192.0.2.1>"], to="sip:c@example.org"), 0.0)
    assert refused.code == 503 and dict(refused.headers)["Retry-After"] == "60"
    again = registrar.register(register(["<sip:a@192.0.2.9>"], to="sip:a@example.org", cseq=2), 0.0)
    assert again.code == 200  # a known one may still change its bindings
    # an operator sees it fill up (metrics) and learns it is full (a WARNING a minute at most)
    assert (registrar.statistics(), registrar.full) == ((2, 3), 1)


def test_a_full_registrar_is_logged_once_a_minute_and_counted(caplog) -> None:
    registrar = Registrar(["example.org"], max_aors=1)
    assert registrar.register(register(["<sip:a@192.0.2.1>"], to="sip:a@example.org"), 0.0).code == 200
    caplog.set_level("WARNING", logger="imc_actors.registrar")
    for user in ("b", "c", "d"):
        refused = registrar.register(register([f"<sip:{user}@192.0.2.1>"], to=f"sip:{user}@example.org"), 0.0)
        assert refused.code == 503
    assert [r.getMessage() for r in caplog.records] == [
        "the registrar is full: 1 addresses of record have bindings (max_aors); "
        "a REGISTER for a new one gets 503"
    ]
    assert registrar.full == 3


@pytest.mark.parametrize(
    "value", ["9" * 5000, "4294967296", "0" * 5000 + "99999", "99999999999999999999"]
)
def test_expires_beyond_delta_seconds_counts_as_the_largest(reg: Registrar, value: str) -> None:
    """Any number of digits (past Python's 4,300-digit int() limit too) is clamped, not
    converted: 2**32-1, then max_expires."""
    reply = reg.register(register([f"<{PHONE}>;expires={value}"]), now=0.0)
    assert contacts_of(reply) == [f"<{PHONE}>;expires=3600"]
    reply = reg.register(register([f"<{LAPTOP}>"], expires=value, cseq=2), now=0.0)
    assert f"<{LAPTOP}>;expires=3600" in contacts_of(reply)


def test_leading_zeros_are_not_digits_of_a_large_value(reg: Registrar) -> None:
    reply = reg.register(register([f"<{PHONE}>;expires={'0' * 5000}120"]), now=0.0)
    assert contacts_of(reply) == [f"<{PHONE}>;expires=120"]


def test_answer_fits_measures_the_200() -> None:
    request = register([f"<{PHONE}>"])
    assert answer_fits(request, [PHONE])
    assert answer_fits(request, [PHONE] * 100)
    long = "sip:" + "u" * 1000 + "@192.0.2.1"
    assert not answer_fits(request, [long] * 70)
    # Exactly at the limit: the real 200 with ten-digit expires values.
    listed = [("Contact", f"<{long}>;expires=4294967295")] * 3
    size = len(build_response(request, 200, to_tag="t" * 12, headers=listed))
    assert answer_fits(request, [long] * 3, limit=size)
    assert not answer_fits(request, [long] * 3, limit=size - 1)


def test_register_whose_answer_would_be_too_large_changes_nothing() -> None:
    reg = Registrar(["example.org"], max_contacts=200)  # the answer's size is the limit here
    long = "sip:" + "u" * 480 + "@192.0.2.1:{}"
    for batch in range(4):  # 100 bindings of about 520 bytes each
        first = [f"<{long.format(i + 1)}>" for i in range(25 * batch, 25 * batch + 25)]
        assert reg.register(register(first, cseq=batch + 1), now=0.0).code == 200
    more = [f"<{long.format(i + 1)}>" for i in range(100, 125)]
    reply = reg.register(register(more, cseq=10), now=0.0)
    assert (reply.code, reply.reason) == (403, "Too Many Contacts")
    assert str(MAX_ANSWER) in dict(reply.headers)["Warning"]
    assert len(reg.lookup("alice@example.org", 0.0)) == 100
    # A query whose own 200 is too large (copied Vias plus the bindings) is refused too.
    padding = [("X-Pad", "p" * 7000)] * 3  # not copied into the answer
    assert reg.register(register((), cseq=11, extra=padding), now=0.0).code == 200
    vias = [("Via", "SIP/2.0/UDP " + "h" * 7000 + ";branch=z9hG4bKx")] * 3
    assert reg.register(register((), cseq=12, extra=vias), now=0.0).code == 403
