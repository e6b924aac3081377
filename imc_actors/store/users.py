"""Users and the nonce secret: Kamailio's ``subscriber`` table and imc-actors' ``imc_secret``.

Called by :class:`~imc_actors.store.repository.Repository` inside its reconnect-and-retry
wrapper. Reading accepts any Kamailio row (plaintext ``password``, MD5 ``ha1``, or both);
writing (``imc-actors user add|passwd``) stores no plaintext: ``password`` is left empty and
the three HA1 columns are filled (``ha1``, ``ha1b``, ``ha1_sha256``).

A Kamailio table that lacks our ``ha1_sha256`` column is read without it (its users can
answer the MD5 challenge only, or SHA-256 when ``password`` is set); ``db init`` adds it.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import peewee

from ..sip.digest import ha1
from .models import MAX_LENGTH, SHA256_COLUMN, Models

__all__ = ["Subscriber", "delete_user", "list_users", "load_secret", "load_subscriber", "set_user"]

#: The name of the nonce secret's row in the secret table.
NONCE_SECRET = "nonce"


@dataclass(frozen=True, slots=True)
class Subscriber:
    """One user's row: what digest verification needs. Empty strings where the row has none."""

    username: str
    domain: str
    password: str
    ha1: str
    ha1_sha256: str

    def ha1_for(self, algorithm: str, realm: str) -> str | None:
        """The HA1 for ``algorithm`` (``MD5`` or ``SHA-256``) in ``realm``, from the stored
        hash, else from the plaintext password; None when the row can answer neither."""
        stored = self.ha1 if algorithm == "MD5" else self.ha1_sha256
        if stored and realm.lower() == self.domain.lower():
            return stored.lower()
        if self.password:
            return ha1(algorithm, self.username, realm, self.password)
        return None


def has_sha256_column(db: peewee.Database, table: str) -> bool:
    return any(column.name.lower() == SHA256_COLUMN for column in db.get_columns(table))


def load_subscriber(
    db: peewee.Database, models: Models, username: str, domain: str, *, sha256: bool
) -> Subscriber | None:
    """The row of ``username`` at ``domain`` (exact match, as Kamailio's auth_db), or None.
    ``sha256``: whether the table has the ``ha1_sha256`` column."""
    table = models.subscriber
    columns = [table.username, table.domain, table.password, table.ha1]
    if sha256:
        columns.append(table.ha1_sha256)
    row = (
        table.select(*columns)
        .where((table.username == username) & (table.domain == domain))
        .limit(1).tuples().first()
    )  # fmt: skip
    if row is None:
        return None
    user, host, password, md5 = row[:4]
    return Subscriber(user, host, password or "", md5 or "", (row[4] if sha256 else "") or "")


def _check(username: str, domain: str) -> None:
    if not username or not domain or len(username) > MAX_LENGTH or len(domain) > MAX_LENGTH:
        raise ValueError(f"user and domain must have 1 to {MAX_LENGTH} characters")


def set_user(db: peewee.Database, models: Models, username: str, domain: str, password: str,
             *, create: bool) -> bool:  # fmt: skip
    """Store ``password``'s hashes for the user (``create``: a new user, else an existing
    one's new password). False, changing nothing, when the user exists (``create``) or does
    not (not ``create``)."""
    _check(username, domain)
    table = models.subscriber
    values = {
        "password": "",
        "ha1": ha1("MD5", username, domain, password),
        "ha1b": ha1("MD5", f"{username}@{domain}", domain, password),
        SHA256_COLUMN: ha1("SHA-256", username, domain, password),
    }
    mine = (table.username == username) & (table.domain == domain)
    with db.atomic():
        exists = table.select().where(mine).exists()
        if exists == create:
            return False
        if create:
            table.insert(username=username, domain=domain, **values).execute()
        else:
            table.update(**values).where(mine).execute()
    return True


def delete_user(models: Models, username: str, domain: str) -> bool:
    """Delete the user; False when there was none."""
    table = models.subscriber
    return bool(table.delete().where((table.username == username) & (table.domain == domain)).execute())


def list_users(models: Models, domain: str | None) -> list[tuple[str, str]]:
    """``(username, domain)`` of every user (of ``domain`` when given), sorted."""
    table = models.subscriber
    query = table.select(table.username, table.domain)
    if domain is not None:
        query = query.where(table.domain == domain)
    return sorted(query.order_by(table.domain, table.username).tuples())


def load_secret(db: peewee.Database, models: Models) -> bytes:
    """The nonce secret, made (32 random bytes) and stored on first use; two processes
    starting at once agree on the first one written (the name is unique)."""
    table = models.secret
    for _ in range(2):
        value = table.select(table.value).where(table.name == NONCE_SECRET).scalar()
        if value:
            return bytes.fromhex(value)
        try:
            with db.atomic():
                table.insert(name=NONCE_SECRET, value=secrets.token_hex(32)).execute()
        except peewee.IntegrityError:
            continue  # another process wrote it first: read theirs
    value = table.select(table.value).where(table.name == NONCE_SECRET).scalar()
    return bytes.fromhex(value)
