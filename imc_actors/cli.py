"""``imc-actors`` command line: ``serve``, ``db init``, ``db check``."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence

import trio

from .config import Config, ConfigError

PROG = "imc-actors"


def _config_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="TOML file (keys as in README; env IMC_CONFIG)")
    parser.add_argument("--db-url", dest="db_url", help="peewee URL: sqlite:///imc.db, postgresql://…, mysql://…")
    parser.add_argument("--rooms-table", dest="rooms_table")
    parser.add_argument("--members-table", dest="members_table")


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
    serve.add_argument(
        "--listen", action="append", metavar="TRANSPORT:HOST:PORT",
        help="listen address, repeatable (default udp:127.0.0.1:5060 and tcp:127.0.0.1:5060; port 0 picks a free one)",
    )
    serve.add_argument("--domain", dest="domains", action="append", metavar="HOST",
                       help="a domain the server is responsible for, repeatable (default: listen hosts)")
    serve.add_argument("--outbound-proxy", dest="outbound_proxy", metavar="URI",
                       help="send every outgoing MESSAGE through this proxy")
    serve.add_argument("--log-level", dest="log_level", choices=["debug", "info", "warning", "error"])
    serve.add_argument("--log-format", dest="log_format", choices=["text", "json"])

    db = sub.add_parser("db", help="database tools", description="Create or check the database tables.")
    db_sub = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    for name, text in (("init", "create the tables for db_url (idempotent)"),
                       ("check", "say whether the database at db_url fits")):
        action = db_sub.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        _config_flags(action)
    return parser


def load_config(args: argparse.Namespace) -> Config:
    overrides = {
        name: getattr(args, name)
        for name in Config.names()
        if getattr(args, name, None) is not None
    }
    return Config.from_sources(args.config or os.environ.get("IMC_CONFIG"), overrides=overrides)


def setup_logging(config: Config) -> None:
    level = getattr(logging, config.log_level.upper())
    if config.log_format == "json":
        fmt = '{"time":"%(asctime)s","level":"%(levelname)s","logger":"%(name)s","message":"%(message)s"}'
    else:
        fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=level, format=fmt, stream=sys.stderr, force=True)


async def _serve(config: Config) -> None:
    from .server import open_server

    async with open_server(config) as server:
        listening = " ".join(str(a) for a in server.addresses)
        print(f"{PROG}: listening on {listening}", file=sys.stderr, flush=True)
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                print(f"{PROG}: {signal.Signals(signum).name}, shutting down", file=sys.stderr, flush=True)
                break


def _db(config: Config, action: str) -> int:
    from .store.repository import Repository, StoreError

    try:
        repository = Repository(config.db_url, config.rooms_table, config.members_table)
        if action == "init":
            repository.init_schema()
            print(f"{PROG}: tables {config.rooms_table}, {config.members_table} ready")
            return 0
        problems = repository.check_schema()
    except StoreError as exc:
        print(f"{PROG}: db_url: {exc}", file=sys.stderr)
        return 1
    if problems:
        for problem in problems:
            print(f"{PROG}: {problem}", file=sys.stderr)
        return 1
    print(f"{PROG}: database fits")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args)
    except ConfigError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    setup_logging(config)
    if args.command == "db":
        return _db(config, args.db_command)
    try:
        trio.run(_serve, config)
    except OSError as exc:
        print(f"{PROG}: cannot start: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
