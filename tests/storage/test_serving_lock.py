"""One process without a node name, or nodes only, per database (store.instance), on SQLite,
PostgreSQL and MySQL/MariaDB: a second plain server on the same database used to start and
split every room between the two member lists without a word."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from imc_actors import Config, IncomingMessage, open_conference
from imc_actors.store.instance import DatabaseInUse, LockLost, ServingLock, serving_lock
from imc_actors.store.urls import DatabaseURL
from tests.storage.conftest import Tables, engine_of

DOMAIN = "example.com"


def config_for(db_url: str, tables: Tables, node: str | None = None) -> Config:
    return Config(
        db_url=db_url, domains=(DOMAIN,), node=node, lease_ttl=2.0, **tables.by_parameter()
    )


@pytest.fixture
def lock_of(db_url: str, tables: Tables) -> Iterator[type[ServingLock]]:
    made: list[ServingLock] = []

    def make(node: str | None = None) -> ServingLock:
        lock = serving_lock(DatabaseURL.parse(db_url), tables.rooms, node, tables.nodes)
        assert lock is not None
        made.append(lock)
        return lock

    yield make  # type: ignore[misc]
    for lock in made:
        lock.release()


async def test_a_second_conference_without_a_node_name_is_refused_until_the_first_ends(
    db_url: str, tables: Tables
) -> None:
    config = config_for(db_url, tables)
    async with open_conference(config) as first:
        answer = await first.handle(IncomingMessage(f"sip:imc@{DOMAIN}", f"sip:alice@{DOMAIN}", b"#create chat"))
        assert answer.code == 200
        with pytest.raises(DatabaseInUse) as refused:
            async with open_conference(config):
                pytest.fail("two conferences without a node name served one database")
        assert "without a node name" in str(refused.value)
        assert "split every room" in str(refused.value)
        assert first.room(f"sip:chat@{DOMAIN}") is not None  # the running one goes on
    async with open_conference(config) as again:  # let go when the block ended
        assert again.room(f"sip:chat@{DOMAIN}") is not None


async def test_nodes_share_a_database_with_each_other_but_not_with_a_plain_server(
    db_url: str, tables: Tables
) -> None:
    async with open_conference(config_for(db_url, tables, "n1")):
        async with open_conference(config_for(db_url, tables, "n2")):
            with pytest.raises(DatabaseInUse) as refused:
                async with open_conference(config_for(db_url, tables)):
                    pytest.fail("a plain server started beside nodes")
            assert "start this one with --node NAME" in str(refused.value)
    async with open_conference(config_for(db_url, tables)):
        with pytest.raises(DatabaseInUse) as refused:
            async with open_conference(config_for(db_url, tables, "n1")):
                pytest.fail("a node started beside a plain server")
        assert "nodes cannot share the database with it" in str(refused.value)


def test_other_rooms_tables_are_other_deployments(db_url: str, tables: Tables, lock_of) -> None:  # type: ignore[no-untyped-def]
    lock_of().acquire()
    other = serving_lock(DatabaseURL.parse(db_url), tables.rooms + "_b", None, tables.nodes)
    assert other is not None
    try:
        other.acquire()  # no refusal: another set of tables
    finally:
        other.release()


def test_a_killed_holder_lets_the_lock_go_at_once(db_url: str, tables: Tables, lock_of) -> None:  # type: ignore[no-untyped-def]
    holder = _holder(db_url, tables.rooms, tables.nodes)
    try:
        mine = lock_of()
        with pytest.raises(DatabaseInUse) as refused:
            mine.acquire()
        if engine_of(db_url) == "sqlite":
            assert f"pid {holder.pid}" in str(refused.value)  # the lock file names its holder
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        if engine_of(db_url) == "sqlite":
            mine.acquire()  # the kernel let the flock go with the process
        else:  # the server ends the dead client's session when it reads its closed socket
            _until_acquired(mine, tables)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


def _holder(
    db_url: str, rooms: str = "imc_rooms", nodes: str = "imc_nodes", wrapper: list[str] | None = None
) -> subprocess.Popen[bytes]:
    """Another process (under ``wrapper``) holding a plain server's lock on ``db_url``, once
    this returns; it holds it until it is killed."""
    script = textwrap.dedent(f"""
        import sys
        from imc_actors.store.instance import serving_lock
        from imc_actors.store.urls import DatabaseURL
        lock = serving_lock(DatabaseURL.parse({db_url!r}), {rooms!r}, None, {nodes!r})
        lock.acquire()
        print("held", flush=True)
        sys.stdin.read()
    """)
    holder = subprocess.Popen(
        [*(wrapper or []), sys.executable, "-c", script],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert holder.stdout is not None and holder.stderr is not None
    line = holder.stdout.readline()
    if line != b"held\n":
        holder.kill()
        holder.wait()
        pytest.fail(f"the holder did not take the lock: {holder.stderr.read().decode()}")
    return holder


def _until_acquired(lock: ServingLock, tables: Tables) -> None:
    """Acquire ``lock`` once the server has ended the dead holder's session: another
    connection waits for the lock on the server's side (no polling here), then lets it go."""
    from imc_actors.store import instance
    from imc_actors.store.urls import open_database

    url = lock._url  # noqa: SLF001 - the engine the lock is on
    db = open_database(url, lock_timeout=10.0)
    try:
        if url.engine == "postgresql":
            key = instance.postgresql_key("public", tables.rooms)
            db.execute_sql("SELECT pg_advisory_lock(%s, %s)", key)
            db.execute_sql("SELECT pg_advisory_unlock(%s, %s)", key)
        else:
            name = instance._mysql_name(url.database, tables.rooms.lower(), None)
            assert db.execute_sql("SELECT GET_LOCK(%s, 10)", (name,)).fetchone() == (1,)
            db.execute_sql("SELECT RELEASE_LOCK(%s)", (name,))
    finally:
        db.close()
    lock.acquire()


def test_a_lock_whose_connection_was_lost_is_taken_again_or_lost_to_a_taker_meanwhile(
    db_url: str, tables: Tables, lock_of  # type: ignore[no-untyped-def]
) -> None:
    if engine_of(db_url) == "sqlite":
        pytest.skip("a SQLite lock is a file lock: no connection to lose")
    first = lock_of()
    first.acquire()
    first.check()  # alive: nothing to do
    _kill_session(db_url, first)
    second = lock_of()
    second.acquire()  # the lost session let it go, and another server took it
    with pytest.raises(LockLost) as lost:
        first.check()
    assert "the database lock was lost with its connection" in str(lost.value)
    assert "another imc-actors process" in str(lost.value) and "stopping" in str(lost.value)
    assert "stop it first" not in str(lost.value)  # the advice is for a server starting
    first.check()  # let go: nothing more to check
    second.release()
    third = lock_of()
    third.acquire()  # the lost one holds nothing


def _kill_session(db_url: str, lock: ServingLock) -> None:
    """End ``lock``'s database session from another connection (a server restart, a proxy
    timeout, MySQL's ``wait_timeout``), and return once it has ended (waiting on the server's
    side: PostgreSQL's terminate with a timeout, MySQL's lock wait)."""
    from imc_actors.store import instance
    from imc_actors.store.urls import open_database

    url = DatabaseURL.parse(db_url)
    db = open_database(url, lock_timeout=10.0)
    try:
        if url.engine == "postgresql":
            session = lock.session
            assert db.execute_sql("SELECT pg_terminate_backend(%s, 10000)", (session,)).fetchone() == (True,)
        else:
            session = lock.session
            db.execute_sql(f"KILL {int(session)}")
            name = instance._mysql_name(url.database, lock._table, None)  # noqa: SLF001
            assert db.execute_sql("SELECT GET_LOCK(%s, 10)", (name,)).fetchone() == (1,)
            db.execute_sql("SELECT RELEASE_LOCK(%s)", (name,))
    finally:
        db.close()


def test_in_memory_sqlite_needs_no_lock_and_a_file_lock_beside_the_database(tmp_path: Path) -> None:
    assert serving_lock(DatabaseURL.parse("sqlite:///:memory:"), "imc_rooms", None) is None
    lock = serving_lock(DatabaseURL.parse(f"sqlite:///{tmp_path}/imc.db"), "imc_rooms", None)
    assert lock is not None and lock.path == f"{tmp_path}/imc.db.lock"
    other = serving_lock(DatabaseURL.parse(f"sqlite:///{tmp_path}/imc.db"), "Chat_Rooms", None)
    assert other is not None and other.path == f"{tmp_path}/imc.db.chat_rooms.lock"
    lock.acquire()
    try:
        assert Path(lock.path).read_text() == f"{os.getpid()}\n"
    finally:
        lock.release()


async def test_a_running_conference_takes_its_lock_again_after_the_session_was_ended(
    db_url: str, tables: Tables, lock_of, autojump_clock: object  # type: ignore[no-untyped-def]
) -> None:
    if engine_of(db_url) == "sqlite":
        pytest.skip("a SQLite lock is a file lock: no session to end")
    from imc_actors.store.instance import CHECK_INTERVAL

    async with open_conference(config_for(db_url, tables)) as conference:
        held = conference._serving_lock  # noqa: SLF001
        assert held is not None
        _kill_session(db_url, held)
        checked = held.checks + 2  # one check may have been under way already: wait for two
        while held.checks < checked:  # the conference's checks, in a thread (mock clock)
            await trio.sleep(CHECK_INTERVAL)
        with pytest.raises(DatabaseInUse):
            lock_of().acquire()


async def test_a_conference_whose_lock_another_process_took_stops(
    db_url: str, tables: Tables, lock_of, autojump_clock: object  # type: ignore[no-untyped-def]
) -> None:
    # it logged an ERROR and went on serving beside the other: every room served twice
    if engine_of(db_url) == "sqlite":
        pytest.skip("a SQLite lock is a file lock: no session to end")
    from imc_actors.store.instance import CHECK_INTERVAL

    with pytest.raises(BaseExceptionGroup) as ended:
        async with open_conference(config_for(db_url, tables)) as conference:
            held = conference._serving_lock  # noqa: SLF001
            assert held is not None
            _kill_session(db_url, held)
            lock_of().acquire()  # another server started while the session was gone
            while True:  # until the conference's next check ends it (mock clock)
                await trio.sleep(CHECK_INTERVAL)
    lost = ended.value.subgroup(LockLost)
    assert lost is not None, ended.value


def test_a_lock_taken_elsewhere_while_the_database_was_unreachable_is_lost_too(
    db_url: str, tables: Tables, lock_of, caplog: pytest.LogCaptureFixture  # type: ignore[no-untyped-def]
) -> None:
    # A PostgreSQL restart: the first check cannot reach the database (a warning), another
    # server starts meanwhile and takes the lock; the next check finds it taken.
    if engine_of(db_url) == "sqlite":
        pytest.skip("a SQLite lock is a file lock: no connection to lose")
    first = lock_of()
    first.acquire()
    _kill_session(db_url, first)
    reachable = first._url  # noqa: SLF001
    port_one = dict(reachable.params, host="127.0.0.1", port=1)  # nothing listens there
    first._url = DatabaseURL(reachable.engine, reachable.database, port_one, reachable.redacted)  # noqa: SLF001
    with caplog.at_level(logging.WARNING, logger="imc_actors.store"):
        first.check()
        first.check()  # once, not per check
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    first._url = reachable  # noqa: SLF001 - the database is back
    lock_of().acquire()  # and another server took the lock meanwhile
    with pytest.raises(LockLost):
        first.check()


def test_an_sqlite_uri_filename_is_locked_as_the_file_it_opens(tmp_path: Path) -> None:
    # sqlite:///file:/path/imc.db?uri=true opens /path/imc.db: its lock file was
    # "file:/path/imc.db.lock" (which cannot be made: the server did not start), and
    # file::memory: (one database per process) took a lock file that refused a second process
    assert serving_lock(DatabaseURL.parse("sqlite:///file::memory:?uri=true"), "imc_rooms", None) is None
    plain = serving_lock(DatabaseURL.parse(f"sqlite:///{tmp_path}/imc.db"), "imc_rooms", None)
    as_uri = serving_lock(DatabaseURL.parse(f"sqlite:///file:{tmp_path}/imc.db?uri=true"), "imc_rooms", None)
    assert plain is not None and as_uri is not None
    assert as_uri.path == plain.path == f"{tmp_path}/imc.db.lock"
    plain.acquire()
    try:
        with pytest.raises(DatabaseInUse):
            as_uri.acquire()
    finally:
        plain.release()
    literal = serving_lock(DatabaseURL.parse("sqlite:///file:imc.db"), "imc_rooms", None)
    assert literal is not None and literal.path == "file:imc.db.lock"  # no uri: a file so named


def test_a_lost_lock_connection_taken_again_at_once_is_logged_too(
    db_url: str, tables: Tables, lock_of, caplog: pytest.LogCaptureFixture  # type: ignore[no-untyped-def]
) -> None:
    # a database restart dropped the lock for up to a check interval without a word
    if engine_of(db_url) == "sqlite":
        pytest.skip("a SQLite lock is a file lock: no connection to lose")
    held = lock_of()
    held.acquire()
    _kill_session(db_url, held)
    with caplog.at_level(logging.WARNING, logger="imc_actors.store"):
        held.check()
        held.check()  # alive again: nothing more to say
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and "connection was lost" in messages[0], messages
    assert "held again on a new connection" in messages[0]
    with pytest.raises(DatabaseInUse):
        lock_of().acquire()


def test_a_node_that_has_not_heartbeat_yet_still_keeps_a_plain_server_out(
    db_url: str, tables: Tables, lock_of  # type: ignore[no-untyped-def]
) -> None:
    # MySQL: a plain server looks for the nodes' locks by the names in the node table, and a
    # node's first heartbeat comes after its lock, later in its startup: a plain server that
    # started in between found no name to look at, and both served the database
    repository = tables.repository(db_url)
    repository.init_schema()  # as a server's startup does before it takes its lock
    repository.close()
    lock_of("brand-new").acquire()
    with pytest.raises(DatabaseInUse) as refused:
        lock_of().acquire()
    assert "start this one with --node NAME" in str(refused.value)


def test_a_node_refused_beside_a_plain_server_leaves_no_name_in_the_node_table(
    db_url: str, tables: Tables, lock_of  # type: ignore[no-untyped-def]
) -> None:
    repository = tables.repository(db_url)
    repository.init_schema()
    try:
        lock_of().acquire()
        with pytest.raises(DatabaseInUse):
            lock_of("never-ran").acquire()
        assert "never-ran" not in [node.name for node in repository.nodes()]
    finally:
        repository.close()


def test_a_refusal_on_a_database_server_names_the_session_holding_the_lock(
    db_url: str, tables: Tables, lock_of  # type: ignore[no-untyped-def]
) -> None:
    # SQLite names the holder's pid; on PostgreSQL and MariaDB the refusal named nobody,
    # and the lock's session is one of many 'imc-actors' connections to the database
    if engine_of(db_url) == "sqlite":
        pytest.skip("the SQLite lock file names the holder's pid (test_a_killed_holder...)")
    held = lock_of()
    held.acquire()
    name = "PostgreSQL session" if engine_of(db_url) == "postgresql" else "MySQL connection"
    for node in (None, "n1"):  # a second plain server, and a node
        with pytest.raises(DatabaseInUse) as refused:
            lock_of(node).acquire()
        assert f"process ({name} {held.session} from " in str(refused.value)


async def test_serve_that_lost_its_lock_to_another_server_exits_1_with_one_line(
    db_url: str, tables: Tables
) -> None:
    # PostgreSQL only (one engine is enough for the CLI's part; the others are above): the
    # first server logged an ERROR and went on serving beside the second
    if engine_of(db_url) != "postgresql":
        pytest.skip("the lock's part is tested on every engine above")
    from imc_actors.store import instance
    from imc_actors.store.urls import open_database
    from tests.support.serve import serve_process

    key = instance.postgresql_key("public", tables.rooms)
    flags = tables.flags()
    async with serve_process(db_url, *flags, host="127.0.0.6") as first:
        db = open_database(DatabaseURL.parse(db_url))
        try:  # end the first server's lock session, as a database restart would
            (pid,) = db.execute_sql(
                "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted "
                "AND classid::bigint = %s AND objid::bigint = %s",
                (key[0] & 0xFFFFFFFF, key[1] & 0xFFFFFFFF),
            ).fetchone()
            db.execute_sql("SELECT pg_terminate_backend(%s, 10000)", (pid,))
        finally:
            db.close()
        async with serve_process(db_url, *flags, host="127.0.0.7") as second:
            with trio.fail_after(60):  # the first's next lock check, within CHECK_INTERVAL
                code = await first.process.wait()
                await first.logged(b"stopping")
            assert code == 1
            lines = [line for line in first.log if line.strip()]
            assert lines[-1].startswith(b"imc-actors: the database lock was lost with its connection")
            assert b"Traceback" not in b"\n".join(first.log)
            assert second.process.returncode is None  # the one that holds the lock goes on


def test_a_symlink_to_the_database_file_shares_its_lock(tmp_path: Path) -> None:
    # sqlite:///other.db -> imc.db opened the same file with a lock file of its own
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "imc.db").touch()
    (tmp_path / "other.db").symlink_to(tmp_path / "data" / "imc.db")
    real = serving_lock(DatabaseURL.parse(f"sqlite:///{tmp_path}/data/imc.db"), "imc_rooms", None)
    linked = serving_lock(DatabaseURL.parse(f"sqlite:///{tmp_path}/other.db"), "imc_rooms", None)
    assert real is not None and linked is not None
    assert linked.path == real.path == f"{tmp_path}/data/imc.db.lock"
    real.acquire()
    try:
        with pytest.raises(DatabaseInUse):
            linked.acquire()
    finally:
        real.release()



def test_a_database_file_with_a_second_hard_link_is_warned_about(tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    # a hard link is another name with another lock file (and another WAL): only a warning,
    # since a backup tool's hard link must not stop the server
    (tmp_path / "imc.db").touch()
    lock = serving_lock(DatabaseURL.parse(f"sqlite:///{tmp_path}/imc.db"), "imc_rooms", None)
    assert lock is not None
    lock.acquire()
    lock.release()
    assert not [r for r in caplog.records if "hard links" in r.getMessage()]
    os.link(tmp_path / "imc.db", tmp_path / "copy.db")
    lock.acquire()
    lock.release()
    (warning,) = [r for r in caplog.records if "hard links" in r.getMessage()]
    assert warning.levelname == "WARNING"
    assert warning.getMessage().startswith(f"{tmp_path}/imc.db has 2 names (hard links)")


def test_same_named_tables_in_two_postgresql_schemas_are_two_deployments(
    db_url: str, tables: Tables
) -> None:
    # the key was the rooms table's name alone: a deployment in another schema was refused
    if engine_of(db_url) != "postgresql":
        pytest.skip("schemas are a PostgreSQL matter")
    from imc_actors.store.urls import open_database

    url = DatabaseURL.parse(db_url)
    admin = open_database(url)
    admin.execute_sql("CREATE SCHEMA IF NOT EXISTS imc_lock_tour")
    try:
        other = DatabaseURL(url.engine, url.database, dict(url.params, options="-c search_path=imc_lock_tour"), url.redacted)
        public = serving_lock(url, tables.rooms, None)
        elsewhere = serving_lock(other, tables.rooms, None)
        assert public is not None and elsewhere is not None
        public.acquire()
        try:
            elsewhere.acquire()  # not refused: another schema's tables
            elsewhere.release()
            again = serving_lock(url, tables.rooms, None)
            assert again is not None
            with pytest.raises(DatabaseInUse):  # the same schema still is
                again.acquire()
        finally:
            public.release()
    finally:
        admin.execute_sql("DROP SCHEMA IF EXISTS imc_lock_tour CASCADE")
        admin.close()


def test_a_lock_file_this_user_may_only_read_still_locks(tmp_path: Path) -> None:
    # an imc.db.lock left by another user (root's earlier run) stopped startup with
    # "Permission denied", although a lock needs no write; run without root's override
    if not shutil.which("setpriv"):
        pytest.skip("setpriv (util-linux) drops root's permission override")
    database = tmp_path / "imc.db"
    lock_file = tmp_path / "imc.db.lock"
    lock_file.write_text("")
    lock_file.chmod(0o444)
    holder = _holder(f"sqlite:///{database}", wrapper=["setpriv", "--inh-caps=-all", "--bounding-set=-all"])
    try:
        mine = serving_lock(DatabaseURL.parse(f"sqlite:///{database}"), "imc_rooms", None)
        assert mine is not None
        with pytest.raises(DatabaseInUse):  # locked although not written
            mine.acquire()
    finally:
        holder.kill()
        holder.wait()


def test_a_refusal_names_no_pid_of_a_process_that_is_gone(tmp_path: Path) -> None:
    # a holder that could not write the file left an earlier holder's pid in it
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    url = DatabaseURL.parse(f"sqlite:///{tmp_path}/imc.db")
    holder = serving_lock(url, "imc_rooms", None)
    assert holder is not None
    holder.acquire()
    try:
        Path(holder.path).write_text(f"{gone}\n")  # as if it had not written its own
        other = serving_lock(url, "imc_rooms", None)
        assert other is not None
        with pytest.raises(DatabaseInUse) as refused:
            other.acquire()
        assert "(pid" not in str(refused.value)
    finally:
        holder.release()
