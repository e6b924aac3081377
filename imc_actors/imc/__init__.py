"""The pure IMC domain: commands, room state, ``apply`` and the effects it returns.

No I/O, no Trio: everything here is a function of its arguments (spec §1, §2, §4, §5).
"""

from . import texts
from .commands import (
    COMMANDS,
    ROLES,
    Command,
    CommandError,
    Target,
    complete_argument,
    parse_command,
    resolve,
)
from .effects import (
    ADMIN,
    INVITED,
    OWNER,
    PRIVATE,
    BanDelete,
    BanSet,
    LimitSet,
    MemberDelete,
    MemberUpsert,
    Notice,
    Outcome,
    RoomDelete,
    RoomUpsert,
    Write,
)
from .room import (
    AdminAction,
    InviteFailed,
    Policy,
    RoomRequest,
    apply,
    help_text,
    new_room,
    notice_error,
    rooms_reply,
)
from .state import Ban, Member, RoomState, member_key

__all__ = [
    "ADMIN",
    "AdminAction",
    "Ban",
    "BanDelete",
    "BanSet",
    "LimitSet",
    "COMMANDS",
    "INVITED",
    "OWNER",
    "PRIVATE",
    "ROLES",
    "Command",
    "CommandError",
    "InviteFailed",
    "Member",
    "MemberDelete",
    "MemberUpsert",
    "Notice",
    "Outcome",
    "Policy",
    "RoomDelete",
    "RoomRequest",
    "RoomState",
    "RoomUpsert",
    "Target",
    "Write",
    "apply",
    "complete_argument",
    "help_text",
    "member_key",
    "new_room",
    "notice_error",
    "parse_command",
    "resolve",
    "rooms_reply",
    "texts",
]
