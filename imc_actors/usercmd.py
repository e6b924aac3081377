"""``imc-actors user add|passwd|del|list``: the users digest authentication checks
(README "Users and passwords"), in the ``subscriber`` table of ``db_url``.

Exit status as ``db``: 0 done, 1 refused or the database failed (the message says which),
2 usage error (a bad USER@DOMAIN, an empty password, a bad configuration).
"""

from __future__ import annotations

import getpass
import logging
import sys
from typing import TextIO

from .config import Config
from .imc.effects import MAX_STORED_LENGTH
from .imc.texts import shown
from .sip import aor_key, canonical

__all__ = ["read_password", "run_user"]

PROG = "imc-actors"
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2




class UsageError(Exception):
    pass


def _split(address: str) -> tuple[str, str]:
    """``user@domain`` (``sip:`` allowed) -> (user, domain lower-cased)."""
    text = address.removeprefix("sip:")
    user, at, domain = text.rpartition("@")
    if not at or not user or not domain or any(c in text for c in " \t:;<>\""):
        raise UsageError(f"{address!r} is not USER@DOMAIN")
    try:  # what a From could name: no control characters, no escapes a terminal runs
        canonical(f"sip:{text}")
    except ValueError:
        raise UsageError(f"{address!r} is not USER@DOMAIN (a SIP user and host)") from None
    if len(user) > MAX_STORED_LENGTH or len(domain) > MAX_STORED_LENGTH:
        raise UsageError(f"user and domain may have at most {MAX_STORED_LENGTH} characters each")
    return user, domain.lower()


def _twin(rows: list[tuple[str, str]], user: str, domain: str) -> str | None:
    """Another spelling of ``user@domain`` among ``rows`` (``Alice`` for ``alice``, ``a%62c``
    for ``abc``): a digest answer as either authenticates the same sender, so a second row
    would give one identity two passwords. None when there is none (or only the same one)."""
    key = aor_key(f"sip:{user}@{domain}")
    for username, host in rows:
        if username == user:
            continue  # the same row: set_user says it exists
        try:
            if aor_key(f"sip:{username}@{host}") == key:
                return f"{username}@{host}"
        except ValueError:
            continue  # a row made elsewhere that names no SIP user
    return None


def read_password(stdin: TextIO) -> str:
    """The password from the terminal (asked twice, not echoed) or the first line of ``stdin``."""
    if stdin.isatty():
        first = getpass.getpass("password: ")
        if getpass.getpass("again: ") != first:
            raise UsageError("the two passwords differ")
        password = first
    else:
        password = stdin.readline().rstrip("\r\n")
    if not password:
        raise UsageError("empty password")
    return password


def run_user(config: Config, action: str, address: str | None, password: str | None,
             stdin: TextIO | None = None) -> int:  # fmt: skip
    """Carry out one ``user`` action; print one line (errors on stderr); return the exit status."""
    from .conference import open_repository
    from .store.repository import StoreError

    logging.getLogger("imc_actors.store").setLevel(logging.ERROR)
    try:
        if action == "list":
            domain = address.lower() if address else None
            user = name = ""
        else:
            assert address is not None
            user, domain = _split(address)
            name = f"{user}@{domain}"
            if action in ("add", "passwd") and password is None:
                password = read_password(stdin or sys.stdin)
            if password is not None and not password:
                raise UsageError("empty password")
    except UsageError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        with open_repository(config) as repository:  # tables made if absent, as serve does
            if action == "list":
                for username, host in repository.list_users(domain):
                    print(shown(f"{username}@{host}"))  # a row made elsewhere: no raw escapes
                return EXIT_OK
            if action == "del":
                done = repository.delete_user(user, domain)
                why = f"no user {name}"
                text = f"user {name} deleted"
            else:
                assert password is not None and domain is not None
                twin = _twin(repository.list_users(domain), user, domain) if action == "add" else None
                if twin is not None:  # two rows, two passwords, one identity
                    print(f"{PROG}: user {shown(twin)} exists, and names compare case-insensitively "
                          f"with escapes decoded (user passwd changes its password)", file=sys.stderr)  # fmt: skip
                    return EXIT_FAILED
                done = repository.set_user(user, domain, password, create=action == "add")
                why = f"user {name} exists (user passwd changes its password)" if action == "add" \
                    else f"no user {name} (user add creates it)"  # fmt: skip
                text = f"user {name} added" if action == "add" else f"password of {name} changed"
    except StoreError as exc:
        print(f"{PROG}: db_url: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if not done:
        print(f"{PROG}: {why}", file=sys.stderr)
        return EXIT_FAILED
    print(f"{PROG}: {text}")
    return EXIT_OK
