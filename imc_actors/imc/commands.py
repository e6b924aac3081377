"""Commands: telling a command from chat, parsing it, and resolving its arguments.

Pure (spec §1, §2, §4): :func:`parse_command` turns a MESSAGE body into a :class:`Command`
(or ``None`` for chat), :func:`resolve` completes its arguments into a :class:`Target` (which
room, which user, which role). Both raise :class:`CommandError` carrying the SIP code and the
exact notice text for the sender.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..sip import USER_SAFE, complete_argument
from . import texts
from .effects import MAX_REASON_LENGTH, MAX_STORED_LENGTH

__all__ = [
    "COMMANDS",
    "fits",
    "ROLES",
    "Command",
    "CommandError",
    "Target",
    "complete_argument",
    "parse_command",
    "resolve",
]

#: Canonical command names.
COMMANDS = (
    "create",
    "join",
    "invite",
    "accept",
    "reject",
    "remove",
    "leave",
    "destroy",
    "members",
    "rooms",
    "add",
    "modify",
    "help",
    # moderation (issue 16 items 4-5)
    "ban",
    "unban",
    "bans",
    "kick",
    "limit",
    # issue 16: the archive, the topic, the room's card
    "history",
    "topic",
    "info",
)
_ALIASES = {"deny": "reject", "exit": "leave", "list": "members"}
_NAMES = {name: name for name in COMMANDS} | _ALIASES

#: Roles accepted by ``#modify`` (lower case).
ROLES = ("owner", "admin", "member")

#: Commands that need a user argument first (``#modify`` also needs a role).
_USER_COMMANDS = frozenset({"invite", "add", "remove"})
#: Commands that name no room.
_ROOMLESS = frozenset({"rooms", "help"})

_MAX_TOKENS = 5  # name + 4 arguments; further tokens are ignored (spec §2)
_LINE_END = re.compile(rb"[\r\n\x00]")
_BLANKS = re.compile(r"[ \t]+")

@dataclass(frozen=True, slots=True)
class Command:
    """A parsed command line.

    ``name`` is canonical (aliases resolved, lower case), ``typed`` is the name as typed,
    ``args`` the tokens after the name (at most 4). ``start_char`` is the start character
    the body was parsed with; texts about the command (``send '#help'``) use it. ``rest`` is
    the whole line after the name, blanks around it removed (``#ban``/``#kick`` take their
    reason from it and ``#topic`` its text, spaces included).
    """

    name: str
    typed: str
    args: tuple[str, ...] = ()
    start_char: str = "#"
    rest: str = field(default="", compare=False)  # derived from the same line as ``args``


class CommandError(Exception):
    """A command refused before reaching a room: ``code`` (400/403/404) and ``text``.

    ``text`` is the exact ``*** ...`` notice for the sender (spec §3: every 4xx is also a
    notice).
    """

    def __init__(self, code: int, text: str) -> None:
        super().__init__(code, text)
        self.code = code
        self.text = text

    def __str__(self) -> str:
        return f"{self.code} {self.text}"


def parse_command(body: bytes, start_char: str) -> Command | None:
    """Parse ``body`` as a command, or return ``None`` when it is chat.

    A body is a command iff it begins with the first character of ``start_char`` (no
    trimming). Only the first line counts (it stops at CR, LF or NUL); tokens are split on
    spaces and tabs; at most 5 tokens are read. Raises :class:`CommandError` (400) for a
    missing or unknown command name. Invalid UTF-8 is decoded with replacement characters.
    """
    if not start_char:
        raise ValueError("start_char must not be empty")
    start = start_char[0]
    prefix = start.encode("utf-8")
    if not body.startswith(prefix):
        return None
    end = _LINE_END.search(body, len(prefix))
    line = body[len(prefix) : end.start() if end else len(body)].decode("utf-8", "replace")
    if not line or line[0] in " \t":
        raise CommandError(400, texts.missing_command(start))
    text = line.rstrip(" \t")
    tokens = _BLANKS.split(text, maxsplit=_MAX_TOKENS)[:_MAX_TOKENS]
    typed = tokens[0]
    name = _NAMES.get(typed.lower())
    if name is None:
        raise CommandError(400, texts.invalid_command(typed, start))
    return Command(name, typed, tuple(tokens[1:]), start, text[len(typed) :].lstrip(" \t"))


def fits(uri: str) -> bool:
    """The user and host of ``sip:user@host`` each fit a column of the store."""
    user, _, host = uri.partition(":")[2].rpartition("@")
    return len(user) <= MAX_STORED_LENGTH and len(host) <= MAX_STORED_LENGTH


@dataclass(frozen=True, slots=True)
class Target:
    """Where a command applies, after argument completion (spec §1, §4).

    ``room_name``/``room_domain``: the room as spelled in the argument or the Request-URI
    (``None`` for ``#rooms`` and ``#help``). ``user``: the completed ``sip:user@host`` for
    ``#invite``, ``#add``, ``#remove`` and ``#modify``. ``role``: ``owner``, ``admin`` or
    ``member`` (lower case) for ``#modify``. ``private``: ``#create ... private``.
    Moderation: ``user`` is also the ``#ban``/``#unban``/``#kick`` user (``sip:*@host`` for a
    whole domain, ``#ban``/``#unban`` only); ``reason`` the ``#ban``/``#kick`` reason (may be
    empty, cut to :data:`~imc_actors.imc.effects.MAX_REASON_LENGTH`); ``limit`` the number
    of ``#limit <n>`` (None: ``#limit`` alone asks for the limit).
    ``count``: the number of lines ``#history`` asks for (None: the default).
    """

    room_name: str | None
    room_domain: str | None
    user: str | None = None
    role: str | None = None
    private: bool = False
    reason: str = ""
    limit: int | None = None
    count: int | None = None

    @property
    def room_uri(self) -> str | None:
        """``sip:name@domain`` of the room, or ``None``."""
        if self.room_name is None:
            return None
        return f"sip:{self.room_name}@{self.room_domain}"


def _complete_or_400(arg: str, default_host: str) -> str:
    try:
        return complete_argument(arg, default_host)
    except ValueError:
        raise CommandError(400, texts.invalid_address(arg)) from None


def resolve(
    command: Command,
    *,
    ruri_user: str,
    ruri_host: str,
    manager_user: str,
    sender: str | None = None,
) -> Target:
    """Work out the room, user, role and private flag a command applies to.

    The room comes from the room argument (completed with the Request-URI host) or else from
    the Request-URI (``ruri_user@ruri_host``, ``ruri_user`` in canonical form). At the manager
    URI a command that needs a room and names none is refused; a room argument naming the
    manager user is an invalid address (the manager is not a room). Checks, in order: missing
    argument, role, user address, ``#create``'s second argument, room (a name that needs
    escapes is invalid), then what the store could not hold: the room URI over
    :data:`~imc_actors.imc.effects.MAX_STORED_LENGTH` characters (414 when the room is the
    Request-URI's, else 400), the user's user or host part over it, and, when ``sender``
    (``sip:user@host``) is given, the sender's. Raises :class:`CommandError` (400, 414).
    """
    name, args = command.name, command.args
    if name in _ROOMLESS:
        return Target(None, None)
    user: str | None = None
    role: str | None = None
    private = False
    reason = ""
    limit: int | None = None
    count: int | None = None
    room_arg: str | None
    if name == "topic":  # the rest of the line is the text: the room is the Request-URI's
        room_arg = None
    elif name == "history":  # [<number>] [<room>]: a first argument of digits is the number
        room_arg = args[0] if args else None
        count = _number(args[0]) if args else None
        if count is None and args and _looks_numeric(args[0]):
            count = 0  # '٣' or '²': meant as a count, and refused as one (not as an address)
        if count is not None:
            room_arg = args[1] if len(args) > 1 else None
    elif name == "create":
        room_arg = args[0] if args else None
        if len(args) >= 2:
            if args[1].lower() != "private":
                raise CommandError(400, texts.SECOND_ARGUMENT_PRIVATE)
            private = True
        elif room_arg is not None and room_arg.lower() == "private":
            room_arg, private = None, True
    elif name in _USER_COMMANDS:
        if not args:
            raise CommandError(400, texts.missing_argument(command.start_char))
        user = _complete_or_400(args[0], ruri_host)
        room_arg = args[1] if len(args) > 1 else None
    elif name == "modify":
        if len(args) < 2:
            raise CommandError(400, texts.missing_argument(command.start_char))
        role = args[1].lower()
        if role not in ROLES:
            raise CommandError(400, texts.INVALID_ROLE)
        user = _complete_or_400(args[0], ruri_host)
        room_arg = args[2] if len(args) > 2 else None
    elif name in _MODERATION_ARGS:
        user, room_arg, reason, limit = _moderation_args(command, ruri_host)
    else:
        room_arg = args[0] if args else None

    manager = manager_user.lower()
    if room_arg is None:
        if ruri_user.lower() == manager:
            raise CommandError(400, texts.MISSING_ROOM_NAME)
        room_name, room_domain, too_long = ruri_user, ruri_host, 414
    else:
        room_uri = _complete_or_400(room_arg, ruri_host)
        room_name, _, room_domain = room_uri[4:].partition("@")
        if room_name.lower() == manager:  # was "Invalid address", though it is a valid one
            raise CommandError(400, texts.manager_is_no_room(room_arg))
        too_long = 400
    if not USER_SAFE.issuperset(room_name):
        raise CommandError(400, texts.invalid_room_name(room_name))
    if len(room_name) + len(room_domain) + 5 > MAX_STORED_LENGTH:  # sip:name@domain
        raise CommandError(too_long, texts.room_name_too_long(MAX_STORED_LENGTH))
    if user is not None and not fits(user):
        raise CommandError(400, texts.address_too_long(MAX_STORED_LENGTH))
    if sender is not None and not fits(sender):
        raise CommandError(400, texts.sender_too_long(MAX_STORED_LENGTH))
    return Target(room_name, room_domain, user, role, private, reason, limit, count)


# --------------------------------------------------------------------------- moderation
#: ``#ban <user|*@domain> [reason]`` and ``#kick <user> [reason]``: the reason is the rest of
#: the line, so they take no room argument (the room is the Request-URI's).
_REASON_COMMANDS = frozenset({"ban", "kick"})
#: ``#unban <user|*@domain> [<room>]`` and ``#limit [<n>] [<room>]`` (``#bans [<room>]`` takes
#: arguments as ``#members`` does).
_MODERATION_ARGS = _REASON_COMMANDS | {"unban", "limit"}
#: The user part that bans a whole domain (``*@example.com``; ``*`` alone: the room's domain).
WILDCARD = "*"


def _number(token: str) -> int | None:
    """The count a token of ASCII digits gives (``#history <n>``, ``#limit <n>``), at most
    10**9 (so a long one is simply too large, never an int conversion error); None for any
    other token (``²`` is a digit to ``str.isdigit``, not to us)."""
    if not (token.isascii() and token.isdigit()):
        return None
    return int(token) if len(token) <= 9 else 10**9


def _looks_numeric(token: str) -> bool:
    """A token of digits outside ASCII (``٣``, ``²``): no room is named so (room names are
    ASCII), so the sender meant a count; it is refused as a count rather than an address."""
    return token.isdigit() or token.isdecimal()


def _moderation_args(
    command: Command, ruri_host: str
) -> tuple[str | None, str | None, str, int | None]:
    """``(user, room argument, reason, limit)`` of a moderation command (see :class:`Target`)."""
    name, args = command.name, command.args
    if name == "limit":
        number = _number(args[0]) if args else None
        if number is not None:
            return None, args[1] if len(args) > 1 else None, "", number
        if args and (args[0][:1] in "-+0123456789" or _looks_numeric(args[0])):
            raise CommandError(400, texts.invalid_limit(command.start_char))
        return None, args[0] if args else None, "", None
    if not args:
        raise CommandError(400, texts.missing_argument(command.start_char))
    user = _complete_or_400(args[0], ruri_host)
    if name == "kick" and user.partition(":")[2].rpartition("@")[0] == WILDCARD:
        raise CommandError(400, texts.invalid_address(args[0]))
    if name == "unban":
        return user, args[1] if len(args) > 1 else None, "", None
    parts = _BLANKS.split(command.rest, maxsplit=1)
    reason = parts[1][:MAX_REASON_LENGTH] if len(parts) > 1 else ""
    return user, None, reason, None
