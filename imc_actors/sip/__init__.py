"""Pure SIP: parse, build, URIs and non-INVITE transactions. No trio, no sockets.

Everything the rest of imc-actors needs from SIP is re-exported here; the modules behind it
are an implementation detail.
"""

from . import _guard
from . import parse as _parse_module
from ._guard import (
    DEFAULT_LIMITS,
    MAX_FIELD,
    MAX_HEADER_LINES,
    MAX_LINE,
    MAX_MESSAGE,
    ParserLimits,
    SipParseError,
)
from .build import (
    build_request,
    build_response,
    is_own_branch,
    is_own_call_id,
    new_branch,
    new_call_id,
    new_mark,
    new_tag,
    reason_phrase,
)
from .message import Request, Response
from .parse import parse, parse_stream, salvage_response
from .transaction import ClientTransaction, ServerTransaction, client_key, server_key
from .uri import (
    USER_SAFE,
    aor_key,
    canonical,
    canonical_user,
    complete_argument,
    split_addresses,
    split_outside,
    split_uri,
    split_user_host,
)

__all__ = [
    "DEFAULT_LIMITS",
    "MAX_FIELD",
    "MAX_HEADER_LINES",
    "MAX_LINE",
    "MAX_MESSAGE",
    "ClientTransaction",
    "ParserLimits",
    "Request",
    "Response",
    "ServerTransaction",
    "SipParseError",
    "USER_SAFE",
    "aor_key",
    "build_request",
    "build_response",
    "canonical",
    "canonical_user",
    "client_key",
    "complete_argument",
    "is_own_branch",
    "is_own_call_id",
    "new_branch",
    "new_call_id",
    "new_mark",
    "new_tag",
    "parse",
    "parse_stream",
    "parser_limits",
    "reason_phrase",
    "salvage_response",
    "set_parser_limits",
    "server_key",
    "split_addresses",
    "split_outside",
    "split_uri",
    "split_user_host",
]


def parser_limits() -> ParserLimits:
    """The parser's limits in force now."""
    return ParserLimits(_guard.MAX_MESSAGE, _guard.MAX_HEADER_LINES, _guard.MAX_LINE, _guard.MAX_FIELD)


def set_parser_limits(limits: ParserLimits) -> ParserLimits:
    """Make ``limits`` the parser's, for the whole process (every server in it: the parser is
    a set of plain functions with memoised parts, which are cleared); returns the previous
    ones. Raises ValueError for limits out of :attr:`ParserLimits.RANGES` or order."""
    problem = limits.problem()
    if problem is not None:
        raise ValueError(f"{problem[0]} {problem[1]}")
    previous = parser_limits()
    for module in (_guard, _parse_module):
        module.MAX_MESSAGE = limits.max_message  # type: ignore[attr-defined]
        module.MAX_HEADER_LINES = limits.max_header_lines  # type: ignore[attr-defined]
        module.MAX_FIELD = limits.max_field  # type: ignore[attr-defined]
    _guard.MAX_LINE = limits.max_line
    _parse_module.clear_caches()
    return previous
