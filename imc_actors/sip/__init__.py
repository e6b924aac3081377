"""Pure SIP: parse, build, URIs and non-INVITE transactions. No trio, no sockets.

Everything the rest of imc-actors needs from SIP is re-exported here; the modules behind it
are an implementation detail.
"""

from ._guard import MAX_FIELD, MAX_HEADER_LINES, MAX_LINE, MAX_MESSAGE, SipParseError
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
    "MAX_FIELD",
    "MAX_HEADER_LINES",
    "MAX_LINE",
    "MAX_MESSAGE",
    "ClientTransaction",
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
    "reason_phrase",
    "salvage_response",
    "server_key",
    "split_addresses",
    "split_outside",
    "split_uri",
    "split_user_host",
]
