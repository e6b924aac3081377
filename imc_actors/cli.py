"""``imc-actors`` command line: ``serve``, ``db init``, ``db check``, the management client
``rooms``, ``members ROOM``, ``rpc METHOD [ARGS]`` (JSON-RPC against a running server), and
``chat USER@DOMAIN`` (a SIP chat session in the terminal, :mod:`imc_actors.chat`)."""

from __future__ import annotations

import argparse
import faulthandler
import gc
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import trio

from .config import LOG_LEVELS, TABLE_FIELDS, Config, ConfigError, default_text
from .control.logs import JsonFormatter
from .control.logs import setup_logging as _setup_logging

if TYPE_CHECKING:
    from .workers import WorkerSlot

PROG = "imc-actors"


def _setting(parser: argparse.ArgumentParser, flag: str, name: str, text: str, **kwargs: Any) -> None:
    """A flag for Config field ``name``; its help ends with the Config default."""
    default = default_text(name).replace("%", "%%")
    parser.add_argument(flag, dest=name, help=f"{text} (default: {default})", **kwargs)


def _config_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="TOML file (keys as in README; env IMC_CONFIG)")
    _setting(parser, "--db-url", "db_url", "peewee URL: sqlite:///path, postgresql://…, mysql://…", metavar="URL")
    _setting(parser, "--rooms-table", "rooms_table", "the rooms table", metavar="NAME")
    _setting(parser, "--members-table", "members_table", "the members table", metavar="NAME")
    _setting(parser, "--pending-table", "pending_table", "notices waiting for unreachable members", metavar="NAME")
    _setting(parser, "--location-table", "location_table", "the registrar's bindings", metavar="NAME")
    _setting(parser, "--bans-table", "bans_table", "the rooms' bans", metavar="NAME")
    _setting(parser, "--limits-table", "limits_table", "the rooms' own member limits (#limit)", metavar="NAME")
    _setting(parser, "--history-table", "history_table", "the archive of chat lines (#history)", metavar="NAME")
    _setting(parser, "--room-info-table", "room_info_table", "the rooms' topics and creation times",
             metavar="NAME")
    _setting(parser, "--db-timeout", "db_timeout", "seconds a database write may take before it "
             "fails with 503 (nothing of it is written)", metavar="SECONDS")
    # ownership (issue 13)
    _setting(parser, "--lease-table", "lease_table", "which node serves which room", metavar="NAME")
    _setting(parser, "--node-table", "node_table", "the nodes of a cluster", metavar="NAME")
    _setting(parser, "--metrics-table", "metrics_table", "each node's metrics", metavar="NAME")
    _auth_table_flags(parser)


# -- authentication (README "Users and passwords") ------------------------------------------
def _auth_table_flags(parser: argparse.ArgumentParser) -> None:
    _setting(parser, "--subscriber-table", "subscriber_table", "users and password hashes "
             "(Kamailio auth_db's table)", metavar="NAME")
    _setting(parser, "--secret-table", "secret_table", "the nonce secret of digest authentication",
             metavar="NAME")


def _auth_flags(serve: argparse.ArgumentParser) -> None:
    _setting(serve, "--auth", "auth", "digest authentication: off, register (REGISTER only) or "
             "all (REGISTER and MESSAGE); unset is off only when every listen address is "
             "loopback", choices=["off", "register", "all"])


def _user_parser(sub: Any) -> None:
    """``user add|passwd|del|list`` (:mod:`imc_actors.usercmd`)."""
    user = sub.add_parser("user", help="add, change, delete and list users (digest passwords)",
                          description="Manage the users of digest authentication in the "
                          "subscriber table of db_url (only password hashes are written).",
                          epilog="Exit status: 0 done, 1 refused or database error, 2 usage error.")
    actions = user.add_subparsers(dest="user_command", required=True, metavar="ACTION")
    for name, text in (("add", "add a user"), ("passwd", "change a user's password")):
        action = actions.add_parser(name, help=text, description=text[0].upper() + text[1:] +
                                    "; without --password it is read from the terminal (twice) "
                                    "or from the first line of standard input.")
        action.add_argument("address", metavar="USER@DOMAIN")
        action.add_argument("--password", metavar="PW", help="the password (visible to other "
                            "local users in the process list: prefer the prompt or stdin)")
        _config_flags(action)
    delete = actions.add_parser("del", help="delete a user", description="Delete a user.")
    delete.add_argument("address", metavar="USER@DOMAIN")
    _config_flags(delete)
    listing = actions.add_parser("list", help="list the users", description="List the users "
                                 "(USER@DOMAIN, one a line), of DOMAIN only when given.")
    listing.add_argument("address", metavar="DOMAIN", nargs="?")
    _config_flags(listing)


def _user(config: Config, args: argparse.Namespace) -> int:
    from .usercmd import run_user

    return run_user(config, args.user_command, args.address, getattr(args, "password", None))


# -------------------------------------------------------------------------------------------


def _client_flags(parser: argparse.ArgumentParser, *, json_flag: bool) -> None:
    parser.add_argument("--rpc", dest="rpc_url", metavar="URL",
                        help="the server's JSON-RPC URL (default: from rpc_listen in the "
                        "configuration, else http://127.0.0.1:5080/RPC)")
    parser.add_argument("--config", metavar="FILE", help="TOML file to read rpc_listen from (env IMC_CONFIG)")
    parser.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS",
                        help="how long to wait for the server (default 10)")
    parser.add_argument("--token", metavar="TOKEN",
                        help="the server's rpc_token, sent as Authorization: Bearer (default: "
                        "IMC_RPC_TOKEN, else rpc_token in the configuration)")
    if json_flag:
        parser.add_argument("--json", dest="as_json", action="store_true",
                            help="print the JSON-RPC result instead of a table")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="SIP instant-message conferencing server (Kamailio imc compatible).",
        epilog="Every setting can also come from a TOML file (--config) or an IMC_<NAME> "
        "environment variable; flags win over the environment, which wins over the file.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the server", description="Run the SIP IMC server.")
    _config_flags(serve)
    _setting(serve, "--listen", "listen", "listen address (transport udp, tcp, tls, ws or wss, e.g. "
             "tls:127.0.0.1:5061 with --tls-cert/--tls-key, ws:127.0.0.1:5066 for browsers, "
             "wss:127.0.0.1:7443 with --tls-cert/--tls-key), "
             "repeatable; port 0 picks a free one",
             action="append", metavar="TRANSPORT:HOST:PORT")
    _setting(serve, "--domain", "domains", "a domain the server is responsible for, repeatable",
             action="append", metavar="HOST")
    _setting(serve, "--outbound-proxy", "outbound_proxy", "send every outgoing MESSAGE through this proxy",
             metavar="URI")
    _setting(serve, "--max-transactions", "max_transactions", "most SIP server transactions alive at "
             "once; a new request beyond them is answered 503 with Retry-After", metavar="N")
    _setting(serve, "--tcp-max-connections", "tcp_max_connections", "most accepted SIP TCP connections "
             "open at once; a new one beyond them is closed at once", metavar="N")
    _setting(serve, "--tcp-max-per-ip", "tcp_max_per_ip", "most accepted SIP TCP connections open at "
             "once from one address", metavar="N")
    _setting(serve, "--tcp-idle-timeout", "tcp_idle_timeout", "seconds after which an idle SIP TCP "
             "connection is closed", metavar="SECONDS")
    _setting(serve, "--flood-rate", "flood_rate", "new SIP requests a second each source address may "
             "send (0: no limit); beyond its burst a source gets 503 with Retry-After", metavar="N")
    _setting(serve, "--flood-burst", "flood_burst", "new SIP requests a source address may send at once",
             metavar="N")
    # TLS (README "TLS")
    _setting(serve, "--tls-cert", "tls_cert", "PEM certificate chain of the tls: listen addresses",
             metavar="FILE")
    _setting(serve, "--tls-key", "tls_key", "PEM private key of --tls-cert", metavar="FILE")
    _setting(serve, "--tls-ca", "tls_ca", "PEM CA certificates outgoing TLS connections trust "
             "(none: the system's)", metavar="FILE")
    # moderation and limits (README "Moderation")
    _setting(serve, "--max-members", "max_members", "most entries (members and pending invitations) "
             "a room lists; owners may lower it per room with #limit", metavar="N")
    _setting(serve, "--max-rooms-per-user", "max_rooms_per_user", "most rooms one user may own "
             "(creating one more is refused)", metavar="N")
    _setting(serve, "--max-rooms", "max_rooms", "most rooms this server (each worker or node) "
             "holds: creating one more is refused", metavar="N")
    _setting(serve, "--max-members-total", "max_members_total", "most members and invitations "
             "of all rooms this server (each worker or node) holds: adding one more is refused",
             metavar="N")
    _setting(serve, "--chat-rate", "chat_rate", "chat messages a second each sender may send in a "
             "room (0: no limit); beyond its burst 503 with Retry-After", metavar="N")
    _setting(serve, "--chat-burst", "chat_burst", "chat messages a sender may send in a room at once",
             metavar="N")
    _setting(serve, "--node", "node", "this node's name: hold room leases in the database, "
             "fence every room write by them, forward MESSAGEs for other nodes' rooms to them "
             "and take over the rooms of dead nodes", metavar="NAME")
    _setting(serve, "--lease-ttl", "lease_ttl", "seconds a room lease lasts unless renewed",
             metavar="SECONDS")
    _setting(serve, "--workers", "workers", "processes sharing the SIP ports (SO_REUSEPORT), "
             "each a node named NODE-i (NODE: --node, else the host name) on the same database, "
             "supervised by this one", metavar="N")
    _setting(serve, "--log-level", "log_level", "least severe level logged", choices=list(LOG_LEVELS))
    _setting(serve, "--log-format", "log_format", "text lines, or one JSON object per line",
             choices=["text", "json"])
    _setting(serve, "--rpc-listen", "rpc_listen", "serve JSON-RPC (/RPC), /metrics, the status page "
             "(/) and the browser chat page (/chat) on this address (e.g. 127.0.0.1:5080; port 0 picks a free one)", metavar="HOST:PORT")
    _setting(serve, "--mi-fifo", "mi_fifo", "serve the MI FIFO at PATH (created if absent)", metavar="PATH")
    _setting(serve, "--reply-dir", "reply_dir", "where MI FIFO reply FIFOs are", metavar="DIR")
    _auth_flags(serve)

    client_help = (
        "Exit status: 0 ok, 1 the server answered an error (e.g. room not found), "
        "2 usage error, 3 server unreachable, 4 the server wants a token or refused it."
    )
    rooms = sub.add_parser("rooms", help="list the rooms of a running server",
                           description="List every room with its member count and owner (imc.list_rooms).",
                           epilog=client_help)
    _client_flags(rooms, json_flag=True)
    members = sub.add_parser("members", help="list a room's members on a running server",
                             description="List a room's members in joining order, invited ones "
                             "included (imc.list_members).", epilog=client_help)
    members.add_argument("room", metavar="ROOM", help="room URI, e.g. sip:chat@example.com (sip: may be left out)")
    _client_flags(members, json_flag=True)
    nodes = sub.add_parser(
        "nodes",
        help="list the nodes of a running server's cluster",
        description="List the nodes sharing the server's database: liveness, rooms held, "
        "heartbeat age, SIP addresses (imc.nodes).",
        epilog=client_help,
    )
    _client_flags(nodes, json_flag=True)
    rpc = sub.add_parser("rpc", help="call any JSON-RPC method of a running server",
                         description="Call METHOD with ARGS as positional parameters and print the "
                         "result as JSON. An argument that parses as JSON is sent as that value "
                         "(3, true, {...}); anything else as a string.", epilog=client_help)
    rpc.add_argument("method", metavar="METHOD", help="e.g. imc.list_rooms, imc.list_members, system.listMethods")
    rpc.add_argument("args", metavar="ARGS", nargs="*", help="positional parameters")
    _client_flags(rpc, json_flag=False)

    chat = sub.add_parser(
        "chat", help="talk to a running server from the terminal (or a script)",
        description="Register USER@DOMAIN with the server and chat: incoming notices and lines "
        "print as '[room] text', typed lines go to the current room ('/room NAME' selects it, "
        "'/help' lists the rest), '#' commands go to the current room or to the manager. With "
        "a pipe as input it sends each line in order, waits for the last notices, unregisters "
        "and exits 0.",
        epilog="Exit status: 0 normal end, 1 registration failed, 2 bad argument.",
    )  # fmt: skip
    chat.add_argument("user", metavar="USER@DOMAIN", help="who you are, e.g. alice@127.0.0.1 "
                      "(without @DOMAIN: the server's host)")
    chat.add_argument("--server", default="127.0.0.1:5060", metavar="HOST:PORT",
                      help="the server's SIP address (default 127.0.0.1:5060, what serve listens on)")
    chat.add_argument("--local", metavar="IP[:PORT]",
                      help="the address to send from and be reached at (default: the one the "
                      "system sends from to the server, on a free port)")
    chat.add_argument("--password", metavar="PW",
                      help="answer the server's digest challenges (auth) with this password")
    chat.add_argument("--wait", type=float, default=0.5, metavar="SECONDS",
                      help="at the end of input, quit once nothing has arrived for this long "
                      "(at most ten times it; default 0.5)")
    chat.add_argument("--manager-user", dest="manager_user", default="imc-manager", metavar="USER",
                      help="the server's manager_user (default imc-manager)")
    chat.add_argument("--command-char", dest="command_char", default="#", metavar="C",
                      help="the server's imc_cmd_start_char (default #)")

    db = sub.add_parser("db", help="database tools", description="Create or check the database tables.")
    db_sub = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    for name, text in (("init", "create the tables for db_url (idempotent)"),
                       ("check", "say whether the database at db_url fits")):
        action = db_sub.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        _config_flags(action)
    _user_parser(sub)
    return parser


def load_config(args: argparse.Namespace, *, client: bool = False) -> Config:
    overrides = {
        name: getattr(args, name)
        for name in Config.names()
        if getattr(args, name, None) is not None
    }
    path = args.config or os.environ.get("IMC_CONFIG")
    return Config.from_sources(path, overrides=overrides, client=client)


def setup_logging(config: Config) -> None:
    """Log at ``log_level`` to stderr as ``log_format`` (text, or one JSON object per line)."""
    _setup_logging(config.log_level, config.log_format)


#: The collector's thresholds for ``imc-actors serve`` (see :func:`_tune_gc`).
GC_THRESHOLDS = (50_000, 20, 100)


def _tune_gc() -> None:
    """The garbage collector, set for a server (this process is ours, an embedding app's is not).

    Everything loaded at startup (the rooms, the modules) lives as long as the process: frozen,
    the collector stops rescanning it. And the serving path allocates a few hundred container
    objects per message, nearly all freed by reference counting, while transactions live for
    Timer J (32 s) and are rescanned by every young collection until they die: the first
    generation is collected every 50,000 net allocations instead of 700, the older ones rarely.
    Measured under SIPp churn at 1,000 pairs/s: 0.25 s of collection per trial instead of
    0.65 s with (10,000, 20, 20), and no 130 ms second-generation pauses; pauses of about
    20 ms instead.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def announce(config: Config, message: str, level: int = logging.INFO) -> None:
    """One line of ``serve``'s own on stderr, shown at every ``log_level``: ``imc-actors:
    <message>``, or with ``log_format = "json"`` a JSON object like every log line (logger
    ``imc_actors.cli``), so that every line on stderr is JSON."""
    if config.log_format == "json":
        record = logging.LogRecord("imc_actors.cli", level, __file__, 0, message, None, None)
        line = JsonFormatter().format(record)
    else:
        line = f"{PROG}: {message}"
    print(line, file=sys.stderr, flush=True)


class _NotTheTransportsListeningLine(logging.Filter):
    """``serve`` says where it listens once (:func:`announce`, when everything is up): the
    transport's own INFO line about its sockets would be a second one."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno == logging.INFO and str(record.msg).startswith("SIP transport listening on"))


class _Phase:
    """Whether ``serve`` got past startup: an error before that is a ``cannot start`` line,
    one after it a crash (with its traceback)."""

    started = False


async def _serve(config: Config, slot: WorkerSlot | None = None, phase: _Phase | None = None) -> None:
    """One server until SIGINT or SIGTERM; as a worker of ``serve --workers N`` (``slot``) it
    shares the ports, binds its private address and tells the parent instead of saying
    where it listens."""
    from .server import open_server

    transport_log = logging.getLogger("imc_actors.transport.endpoint")
    quiet = _NotTheTransportsListeningLine()
    transport_log.addFilter(quiet)
    private = slot.private_host if slot is not None else None
    try:
        steering = slot.steering() if slot is not None else None
        async with open_server(
            config, shared_ports=slot is not None, private_host=private, steering=steering,
            node_free=slot is not None and slot.restarted,
        ) as server:  # fmt: skip
            if phase is not None:
                phase.started = True
            _tune_gc()
            # catch the signals before saying "listening": a supervisor may stop us at once
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                if slot is not None:
                    slot.ready(server)
                else:
                    announce(config, "listening on " + " ".join(str(a) for a in server.addresses))
                    if server.http_url is not None:
                        announce(config, f"management on {server.http_url} (JSON-RPC {server.rpc_url})")
                    if server.mi_fifo is not None:
                        announce(config, f"MI FIFO at {server.mi_fifo}")
                async for signum in signals:
                    if slot is None:  # a worker's parent has said so already
                        announce(config, f"{signal.Signals(signum).name}, shutting down")
                    break
    finally:
        transport_log.removeFilter(quiet)


def serve(config: Config, slot: WorkerSlot | None = None) -> int:
    """``serve``'s exit code: 0 after SIGINT/SIGTERM, 1 when it cannot start or loses its
    database lock to another server (one line says why), 130 on KeyboardInterrupt. ``slot``: as one worker of ``serve --workers N``."""
    from .store.instance import LockLost
    from .store.repository import StoreError

    phase = _Phase()
    try:
        trio.run(_serve, config, slot, phase)
    except (OSError, StoreError, BaseExceptionGroup) as exc:
        error = _startup_error(exc)
        where = f"worker {slot.index} (node {slot.node}) " if slot is not None else ""
        if isinstance(error, LockLost):  # another server took the database over: one line
            announce(config, f"{where}{error}", logging.ERROR)
            return 1
        if phase.started:
            error = None
        if error is None:
            raise
        # OSError(errno, text) reads "[Errno n] text": the text alone says it
        why = error.strerror if isinstance(error, OSError) and error.strerror and error.filename is None else error
        announce(config, f"{where}cannot start: {why}", logging.ERROR)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


def _serve_workers(config: Config) -> int:
    """``serve`` with ``workers`` > 1 (:mod:`imc_actors.workers`)."""
    from .workers import supervise, workers_refusal

    refusal = workers_refusal(config)
    if refusal is not None:
        announce(config, refusal, logging.ERROR)
        return 2
    from . import server  # noqa: F401  (imported once here, not again in every forked worker)

    return supervise(config, serve, lambda text, level: announce(config, text, level))


def _db(config: Config, action: str) -> int:
    from .conference import repository_of
    from .store.repository import StoreError

    # a one-shot command answers in one line; the store's retry warnings are for servers
    logging.getLogger("imc_actors.store").setLevel(logging.ERROR)

    try:
        repository = repository_of(config)
        if action == "init":
            repository.init_schema()  # creates what is absent, leaves what is there as it is
        problems = repository.check_schema()  # so after init too: a table that is there may not fit
    except StoreError as exc:
        print(f"{PROG}: db_url: {exc}", file=sys.stderr)
        return 1
    if problems:
        for problem in problems:
            print(f"{PROG}: {problem}", file=sys.stderr)
        return 1
    if action == "init":
        tables = [getattr(config, name) for name in TABLE_FIELDS]
        print(f"{PROG}: tables {', '.join(tables)} ready")
    else:
        print(f"{PROG}: database fits")
    return 0


def _client(args: argparse.Namespace) -> int:
    """``rooms`` / ``members`` / ``nodes`` / ``rpc``: find the server's URL, call, print; exit codes as in
    :mod:`imc_actors.control.client`."""
    from .control import client
    from .control.listen import DEFAULT_RPC_URL, rpc_url_for

    url, token = args.rpc_url, args.token
    if url is None or token is None:  # --token, else IMC_RPC_TOKEN, else rpc_token in --config
        try:
            config = load_config(args, client=True)  # the server's file: its TLS key may be unreadable
        except ConfigError as exc:
            print(f"{PROG}: {exc}", file=sys.stderr)
            return client.EXIT_USAGE
        if url is None:
            url = rpc_url_for(config.rpc_listen) if config.rpc_listen else DEFAULT_RPC_URL
        if token is None:
            token = config.rpc_token
    if args.command == "rooms":
        return client.run_rooms(url, as_json=args.as_json, timeout=args.timeout, token=token)
    if args.command == "nodes":
        return client.run_nodes(url, as_json=args.as_json, timeout=args.timeout, token=token)
    if args.command == "members":
        return client.run_members(url, args.room, as_json=args.as_json, timeout=args.timeout, token=token)
    return client.run_rpc(url, args.method, args.args, timeout=args.timeout, token=token)


def _chat(args: argparse.Namespace) -> int:
    """``chat``: a terminal session (see :mod:`imc_actors.chat`)."""
    from .chat import ChatOptions, run_chat

    _setup_logging("warning", "text")
    return run_chat(ChatOptions(
        args.user, server=args.server, password=args.password, wait=args.wait,
        manager_user=args.manager_user, command_char=args.command_char, local=args.local,
    ))  # fmt: skip


def _startup_error(exc: BaseException) -> Exception | None:
    """The OSError (a socket, a file) or StoreError (the database: unreachable, or this node
    name already running) that stopped startup, also when nurseries wrapped it in exception
    groups."""
    from .store.repository import StoreError

    if isinstance(exc, OSError | StoreError):
        return exc
    if isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        return _startup_error(exc.exceptions[0])
    return None


#: Exit code of a command whose reader went away (``imc-actors rooms | head``): what a tool
#: killed by SIGPIPE reports in a shell (128 + 13).
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE


def _drop_stdout() -> None:
    # Python flushes stdout again at exit: point it at /dev/null so that flush is silent.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _printing(run: Callable[[], int]) -> int:
    """Run a command that prints; a closed stdout (the reader quit) ends it quietly with
    :data:`EXIT_BROKEN_PIPE` instead of a BrokenPipeError traceback, and a stdout that cannot
    be written (a full disk, ``> /dev/full``) with one line on stderr and exit code 1."""
    try:
        code = run()
        sys.stdout.flush()
    except BrokenPipeError:
        _drop_stdout()
        return EXIT_BROKEN_PIPE
    except OSError as exc:
        _drop_stdout()
        print(f"{PROG}: cannot write the output: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """The ``imc-actors`` command; its exit code. Ctrl-C at any moment (also while a
    subcommand is still importing what it needs) ends it with 130 and no traceback."""
    try:
        return _main(argv)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


#: Exit code after Ctrl-C (SIGINT): what a shell reports for a command it killed (128 + 2).
EXIT_INTERRUPTED = 130


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in ("rooms", "members", "nodes", "rpc"):
        return _printing(lambda: _client(args))
    if args.command == "chat":
        return _chat(args)
    try:
        config = load_config(args)
        if config.rpc_listen is not None:
            from .control.listen import parse_listen

            parse_listen(config.rpc_listen)
    except ConfigError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    setup_logging(config)
    if args.command == "serve":
        # A fault in C code (SIGBUS when SQLite's memory-mapped -shm file can no longer be
        # written, SIGSEGV, SIGFPE, SIGABRT, SIGILL) otherwise ends the server without a
        # word: this writes "Fatal Python error: Bus error" and every thread's stack to
        # stderr first (inherited by the workers of serve --workers N).
        faulthandler.enable(all_threads=True)
    if args.command == "db":
        return _printing(lambda: _db(config, args.db_command))
    if args.command == "user":
        return _printing(lambda: _user(config, args))
    if config.workers > 1:
        return _serve_workers(config)
    return serve(config)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
