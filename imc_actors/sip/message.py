"""SIP message records produced by :func:`imc_actors.sip.parse`.

Headers keep their received text (after normalisation of folding and compact names), so
responses can copy Via/From/To/Call-ID/CSeq byte for byte.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Request:
    """A parsed, validated SIP request.

    ``headers`` is every header line in received order as ``(canonical name, value)``;
    compact forms are expanded (``f`` -> ``From``), folding is undone and the value is
    stripped. ``uri`` is the Request-URI text. The mandatory headers (Via, From, To,
    Call-ID, CSeq) are present and well-formed, else parsing raised.
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
        lname = name.lower()
        for key, value in self.headers:
            if key.lower() == lname:
                return value
        return None

    def header_list(self, name: str) -> list[str]:
        """Every value of header ``name``, in order (comma-joined values are not split)."""
        lname = name.lower()
        return [value for key, value in self.headers if key.lower() == lname]


@dataclass(frozen=True, slots=True)
class Response:
    """A parsed SIP response (what our client transactions receive)."""

    code: int
    reason: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    call_id: str
    cseq: int
    cseq_method: str
    branch: str | None

    def header(self, name: str) -> str | None:
        lname = name.lower()
        for key, value in self.headers:
            if key.lower() == lname:
                return value
        return None

    def header_list(self, name: str) -> list[str]:
        lname = name.lower()
        return [value for key, value in self.headers if key.lower() == lname]
