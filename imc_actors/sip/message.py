"""SIP message records produced by :func:`imc_actors.sip.parse`.

Headers keep their received text (after normalisation of folding and compact names), so
responses can copy Via/From/To/Call-ID/CSeq byte for byte.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._guard import KNOWN_NAMES


def _first(headers: tuple[tuple[str, str], ...], name: str) -> str | None:
    """First value of header ``name``. ``parse`` stores known names in canonical spelling,
    so the first pass compares exact strings; the second (only on a miss) lower-cases, for
    unknown names and for records built by hand."""
    lname = name.lower()
    canonical = KNOWN_NAMES.get(lname)
    if canonical is not None:
        for key, value in headers:
            if key == canonical:
                return value
        lname = canonical.lower()
    for key, value in headers:
        if key.lower() == lname:
            return value
    return None


def _lookup(headers: tuple[tuple[str, str], ...], name: str) -> list[str]:
    """Every value of header ``name``, in order (same matching as :func:`_first`)."""
    lname = KNOWN_NAMES.get(name.lower(), name).lower()
    return [value for key, value in headers if KNOWN_NAMES.get(key.lower(), key).lower() == lname]


@dataclass(frozen=True, slots=True)
class Request:
    """A parsed, validated SIP request.

    ``headers`` is every header line in received order as ``(canonical name, value)``;
    compact forms are expanded (``f`` -> ``From``), folding is undone and the value is
    stripped. ``uri`` is the Request-URI text. The mandatory headers (Via, From, To,
    Call-ID, CSeq) are present and well-formed, else parsing raised.

    ``from_uri``/``to_uri`` are the URI text as written inside From/To; ``from_tag``,
    ``to_tag`` and ``branch`` are parameter values as sipmessage reads them (percent-escapes
    resolved), None when absent. ``via_sent_by`` is ``host[:port]`` of the top Via,
    lower-cased; ``max_forwards`` is None when the header is absent. ``body`` is exactly
    Content-Length bytes (the rest of the datagram when there is no Content-Length).
    """

    method: str
    uri: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    # Parsed once for routing and transactions:
    call_id: str
    cseq: int
    cseq_method: str
    from_uri: str  # URI text inside From (no display name, no header params)
    from_tag: str | None
    to_uri: str
    to_tag: str | None
    branch: str | None  # top Via branch parameter
    via_sent_by: str  # top Via sent-by host[:port], lower-cased
    max_forwards: int | None

    def header(self, name: str) -> str | None:
        """First value of header ``name`` (case-insensitive, canonical or compact), or None."""
        return _first(self.headers, name)

    def header_list(self, name: str) -> list[str]:
        """Every value of header ``name``, in order (comma-joined values are not split)."""
        return _lookup(self.headers, name)


@dataclass(frozen=True, slots=True)
class Response:
    """A parsed SIP response (what our client transactions receive).

    ``code`` is the status code (100-699) and ``reason`` the reason phrase as received.
    ``headers`` and ``body`` are as in :class:`Request`. ``call_id``, ``cseq`` (number) and
    ``cseq_method`` come from Call-ID and CSeq; ``branch`` is the top Via's branch parameter
    (what :func:`imc_actors.sip.client_key` matches on), or None. Via, From, To, Call-ID and
    CSeq are present, else parsing raised.
    """

    code: int
    reason: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    call_id: str
    cseq: int
    cseq_method: str
    branch: str | None

    def header(self, name: str) -> str | None:
        """First value of header ``name`` (case-insensitive, canonical or compact), or None."""
        return _first(self.headers, name)

    def header_list(self, name: str) -> list[str]:
        """Every value of header ``name``, in order (comma-joined values are not split)."""
        return _lookup(self.headers, name)
