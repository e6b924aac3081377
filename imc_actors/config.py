"""One typed configuration object for the whole server.

Built from, in rising precedence: defaults, a TOML file, ``IMC_*`` environment variables
and command-line flags. Field names are the module parameter names of Kamailio's imc where
one exists, and the TOML keys, environment names (``IMC_`` + upper case) and flags
(``--`` + dashes) match them one to one. :meth:`Config.validate` runs once at startup and
raises :class:`ConfigError` naming the bad parameter.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import re
import string
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from .sip._guard import ParserLimits

DEFAULT_LISTEN = ("udp:127.0.0.1:5060", "tcp:127.0.0.1:5060")
#: A ``node`` name: what the lease and node tables can hold (issue 13).
_NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
#: Most ``workers`` one ``serve`` starts (one process per core is the point; 64 is plenty).
MAX_WORKERS = 64
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
#: Upper bounds of ``dns_timeout`` (seconds: Timer F, 64*T1, after which the request has
#: failed anyway) and ``dns_lookups_max`` (each lookup in flight holds an OS thread).
DNS_TIMEOUT_MAX = 32.0
DNS_LOOKUPS_MAX = 1024
#: Largest value of any count (10^12) and of any number of seconds or rate (10^9: about 31
#: years): beyond them a value overflows a database column or a timer, and no setting needs it.
INT_MAX = 10**12
FLOAT_MAX = 1e9
#: Smallest ``lease_ttl`` and nonzero ``metrics_share_interval`` (seconds): below them the
#: renewal and snapshot loops spin (a core at 90 % with no traffic).
LEASE_TTL_MIN = 1.0
SHARE_INTERVAL_MIN = 0.1


class ConfigError(ValueError):
    """A configuration value is wrong; ``param`` names it."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"invalid {param}: {message}")
        self.param = param


#: Listen transports, and the port each takes when none is given (ws/wss: FreeSWITCH's ports).
LISTEN_TRANSPORTS = {"udp": 5060, "tcp": 5060, "tls": 5061, "ws": 5066, "wss": 7443}
#: Listen transports that speak TLS (they need ``tls_cert``/``tls_key``).
SECURE_TRANSPORTS = ("tls", "wss")


@dataclass(frozen=True, slots=True)
class ListenAddress:
    """One SIP listening socket: ``transport`` is ``udp``, ``tcp``, ``tls`` (SIP over TLS,
    ``tls_cert``/``tls_key``), ``ws`` (SIP over WebSocket, RFC 7118) or ``wss`` (SIP over
    WebSocket over TLS, the same certificate as ``tls``); port 0 picks a free one."""

    transport: Literal["udp", "tcp", "tls", "ws", "wss"]
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> ListenAddress:
        """Parse ``udp:127.0.0.1:5060``, ``tcp:[::1]:5060``, ``tls:127.0.0.1:5061``,
        ``ws:127.0.0.1:5066``, ``wss:127.0.0.1:7443`` (transport defaults to udp; the port to
        :data:`LISTEN_TRANSPORTS`' port of the transport)."""
        transport, sep, rest = text.partition(":")
        if not sep or transport.lower() not in LISTEN_TRANSPORTS:
            if sep and transport.isalpha() and not all(c in string.hexdigits for c in transport):
                # sctp:127.0.0.1:5060 was "'sctp:127.0.0.1' is not an IP address"
                raise ValueError(
                    f"unknown transport {transport!r} in {text!r} (udp, tcp, tls, ws or wss)"
                )
            transport, rest = "udp", text
        transport = transport.lower()
        default_port = str(LISTEN_TRANSPORTS[transport])
        if rest.startswith("["):
            host, _, port_text = rest[1:].partition("]")
            port_text = port_text.removeprefix(":")
        else:
            host, _, port_text = rest.rpartition(":")
            if not host:
                host, port_text = rest, default_port
        port_text = port_text or default_port
        if not (port_text.isascii() and port_text.isdigit()):  # not 5_060, +5060 or ٥٠٦٠
            raise ValueError(f"bad port in {text!r}")
        port = int(port_text)
        if not 0 <= port <= 65535:
            raise ValueError(f"bad port in {text!r} (1-65535, or 0 for a free one)")
        if not host:
            raise ValueError(f"expected transport:host:port, got {text!r}")
        return cls(transport, host, port)  # type: ignore[arg-type]

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.transport}:{host}:{self.port}"


@dataclass(slots=True)
class Config:
    """Every setting of the server (spec §11). See README for each parameter."""

    # Storage
    db_url: str = "sqlite:///imc.db"
    rooms_table: str = "imc_rooms"
    members_table: str = "imc_members"
    pending_table: str = "imc_pending"
    location_table: str = "imc_location"
    bans_table: str = "imc_bans"
    limits_table: str = "imc_room_limits"
    history_table: str = "imc_history"
    room_info_table: str = "imc_room_info"
    db_timeout: float = 5.0
    # Ownership (issue 13): room leases and fencing
    node: str | None = None
    lease_ttl: float = 5.0
    lease_table: str = "imc_leases"
    node_table: str = "imc_nodes"
    # The whole cluster in the management views and /metrics (issue 13 item 3)
    cluster_view_age: float = 1.0
    max_claims: int = 256
    metrics_share_interval: float = 5.0
    metrics_table: str = "imc_metrics"
    #: processes sharing the SIP ports on this machine, each a node (``serve --workers N``)
    workers: int = 1
    # IMC behaviour (Kamailio names)
    hash_size: int = 4
    imc_cmd_start_char: str = "#"
    outbound_proxy: str | None = None
    extra_hdrs: list[str] = field(default_factory=list)
    create_on_join: bool = True
    check_on_create: bool = False
    owner_leave: Literal["destroy", "refuse"] = "destroy"
    max_body_size: int = 32 * 1024
    domains: list[str] = field(default_factory=list)
    manager_user: str = "imc-manager"
    # SIP
    listen: list[str] = field(default_factory=lambda: list(DEFAULT_LISTEN))
    registrar: bool = True
    min_expires: int = 60
    max_expires: int = 3600
    default_expires: int = 3600
    max_contacts: int = 10
    max_aors: int = 100_000
    trusted_sources: list[str] = field(default_factory=list)
    identity_header: str | None = None
    max_transactions: int = 100_000
    max_transaction_bytes: int = 256 * 1024 * 1024
    max_vias: int = 16
    tcp_max_connections: int = 2048
    tcp_max_outgoing: int = 2048
    tcp_max_per_ip: int = 256
    tcp_max_buffer: int = 65 * 1024
    tcp_send_queue: int = 256 * 1024
    tcp_idle_timeout: float = 120.0
    dns_timeout: float = 5.0
    dns_lookups_max: int = 16
    # the SIP parser's limits (imc_actors.sip.ParserLimits; process-wide)
    sip_max_message: int = 64 * 1024
    sip_max_header_lines: int = 100
    sip_max_line: int = 8 * 1024
    sip_max_field: int = 2 * 1024
    flood_rate: float = 2000.0
    flood_burst: int = 4000
    flood_block: float = 2.0
    flood_sources: int = 65536
    # TLS (see README "TLS")
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_ca: str | None = None
    tls_verify: bool = True
    # Delivery (see README "Delivery")
    pending_ttl: int = 7 * 24 * 3600
    pending_max: int = 1000
    pending_total_max: int = 1_000_000
    pending_retry: float = 60.0
    delivery_window: int = 1
    delivery_burst: int = 16
    delivery_overdue: float = 4.0
    delivery_member_queue: int = 1000
    delivery_queue: int = 20_000
    delivery_queue_bytes: int = 64 * 1024 * 1024
    max_deliveries: int = 20_000
    # History, topic (issue 16; see README "History")
    history_max: int = 1000
    history_days: int = 30
    history_on_join: int = 20
    history_lines_max: int = 100
    # Actors and supervision
    mailbox_size: int = 1024
    restart_limit: int = 5
    restart_window: float = 60.0
    # Management
    mi_fifo: str | None = None
    reply_dir: str = "/tmp/"
    rpc_listen: str | None = None
    # Management access (see README "Management")
    rpc_token: str | None = None
    rpc_hosts: list[str] = field(default_factory=list)
    metrics_public: bool = False
    rpc_max_requests: int = 32
    rpc_body_timeout: float = 10.0
    sqlite_inline: bool = True
    # Moderation and limits (issue 16)
    max_members: int = 1000
    max_rooms_per_user: int = 100
    max_rooms: int = 50_000
    max_members_total: int = 1_000_000
    rooms_list_max: int = 500
    max_bans: int = 1000
    chat_rate: float = 0.0
    chat_burst: int = 10
    chat_rate_senders: int = 65536
    # Logging
    log_level: str = "info"
    log_format: Literal["text", "json"] = "text"
    # Authentication (README "Users and passwords"): digest on REGISTER / MESSAGE
    auth: Literal["off", "register", "all"] | None = None  # None: off on loopback (auth_mode)
    subscriber_table: str = "subscriber"
    secret_table: str = "imc_secret"
    nonce_expires: float = 300.0
    nonce_counts: int = 65536
    auth_cache_size: int = 10000
    auth_cache_ttl: float = 30.0
    auth_max_reads: int = 8
    auth_fail_rate: float = 0.1
    auth_fail_burst: int = 10
    auth_fail_block: float = 60.0
    md5_only_agents: list[str] = field(default_factory=lambda: list(MD5_ONLY_AGENTS))

    # ------------------------------------------------------------------ building
    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_sources(
        cls,
        toml_path: str | None = None,
        environ: Mapping[str, str] | None = None,
        overrides: Mapping[str, Any] | None = None,
        *,
        client: bool = False,
    ) -> Config:
        """Defaults <- TOML file <- ``IMC_*`` environment <- ``overrides`` (flags), validated
        (with ``client``, only what the management client reads: :meth:`validate_client`)."""
        values: dict[str, Any] = {}
        if toml_path:
            try:
                with open(toml_path, "rb") as fh:
                    data = tomllib.load(fh)
            except OSError as exc:
                raise ConfigError("config", f"cannot read {toml_path}: {exc.strerror}") from None
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError("config", f"{toml_path}: {exc}") from None
            except UnicodeDecodeError as exc:  # TOML is UTF-8
                raise ConfigError("config", f"{toml_path}: not UTF-8 (byte {exc.start})") from None
            data = data.get("imc", data)
            for key, value in data.items():
                name = key.replace("-", "_")
                if name not in cls.names():
                    raise ConfigError(key, f"unknown parameter in {toml_path}")
                values[name] = value
        env = os.environ if environ is None else environ
        for name in cls.names():
            raw = env.get("IMC_" + name.upper())
            if raw is not None:
                values[name] = _from_text(name, raw)
        for name, value in (overrides or {}).items():
            if value is not None:
                values[name] = value
        config = cls()
        for name, value in values.items():
            setattr(config, name, _coerce(name, value))
        if client:
            config.validate_client()
        else:
            config.validate()
        return config

    def validate_client(self) -> None:
        """Check only ``rpc_listen`` and ``rpc_token``, the values ``imc-actors rooms``,
        ``members``, ``nodes`` and ``rpc`` take from the server's file: the rest is the
        server's (its TLS key may be readable by the service user only, and its auth rules
        concern SIP). Raises :class:`ConfigError`."""
        from .control.access import token_problem
        from .control.listen import parse_listen  # raises ConfigError naming rpc_listen

        if self.rpc_listen is not None:
            parse_listen(self.rpc_listen)
        if self.rpc_token is not None and (problem := token_problem(self.rpc_token)):
            raise ConfigError("rpc_token", problem)

    # ---------------------------------------------------------------- validation
    def _check_expires(self) -> None:
        """``1 <= min_expires <= default_expires <= max_expires <= 10^9``; the setting named
        is one that was changed from its default (the one the operator set), with the values."""
        if self.max_expires > FLOAT_MAX:  # seconds, as everywhere (10^12 overflowed the date: 500)
            raise ConfigError("max_expires", f"must be at most {FLOAT_MAX:,.0f} seconds")
        for name in ("min_expires", "default_expires", "max_expires"):
            if getattr(self, name) < 1:
                raise ConfigError(name, "must be at least 1 second")
        low, default, high = self.min_expires, self.default_expires, self.max_expires
        if low <= default <= high:
            return
        changed = [name for name in ("default_expires", "max_expires", "min_expires")
                   if getattr(self, name) != _FIELD_DEFAULTS[name]]  # fmt: skip
        out = "max_expires" if low > high or default > high else "min_expires"
        if "default_expires" in changed or out in changed:
            name = "default_expires" if "default_expires" in changed else out
        else:
            name = changed[0] if changed else out
        raise ConfigError(
            name, f"need 1 <= min_expires ({low}) <= default_expires ({default}) <= max_expires ({high})"
        )

    def validate(self) -> None:
        """Check every value once; raise :class:`ConfigError` naming the first bad one."""
        for name in sorted(_INT_FIELDS | _FLOAT_FIELDS):  # a Config built directly, too
            _bounded(name, getattr(self, name))
        if not 0 <= self.hash_size <= 12:  # 16 (65,536 partitions) took 12.6 s and 357 MB to start
            raise ConfigError("hash_size", "must be between 0 and 12")
        if len(self.imc_cmd_start_char) < 1 or self.imc_cmd_start_char[0].isspace():
            raise ConfigError(
                "imc_cmd_start_char", "must start with a non-space character (only the first one counts)"
            )
        if self.owner_leave not in ("destroy", "refuse"):
            raise ConfigError("owner_leave", "must be 'destroy' or 'refuse'")
        if self.log_format not in ("text", "json"):
            raise ConfigError("log_format", "must be 'text' or 'json'")
        if self.log_level.lower() not in LOG_LEVELS:
            raise ConfigError("log_level", "must be debug, info, warning, error or critical")
        self._require_positive(
            "max_body_size", "mailbox_size", "max_transactions", "max_transaction_bytes", "max_vias",
            "tcp_max_connections", "tcp_max_per_ip", "tcp_max_outgoing", "flood_burst", "flood_sources",
            "dns_lookups_max",
        )  # fmt: skip
        if self.tcp_max_buffer < 1024:
            raise ConfigError("tcp_max_buffer", "must be at least 1024 bytes")
        if self.tcp_send_queue < 1024:
            raise ConfigError("tcp_send_queue", "must be at least 1024 bytes")
        if not self.tcp_idle_timeout > 0:
            raise ConfigError("tcp_idle_timeout", "must be a positive number of seconds")
        if not self.rpc_body_timeout > 0:
            raise ConfigError("rpc_body_timeout", "must be a positive number of seconds")
        if not 0 < self.dns_timeout <= DNS_TIMEOUT_MAX:
            raise ConfigError(
                "dns_timeout",
                f"must be a positive number of seconds, at most {DNS_TIMEOUT_MAX:g} (a SIP "
                "transaction's whole lifetime, 64*T1)",
            )
        if self.dns_lookups_max > DNS_LOOKUPS_MAX:
            raise ConfigError(
                "dns_lookups_max", f"must be at most {DNS_LOOKUPS_MAX} (each lookup is a thread)"
            )
        problem = self.parser_limits.problem()
        if problem is not None:
            name, why = problem
            raise ConfigError(f"sip_{name}", why.replace("max_", "sip_max_"))
        if not self.flood_rate >= 0:
            raise ConfigError("flood_rate", "must be 0 (off) or a positive number of requests a second")
        if not self.flood_block >= 0:
            raise ConfigError("flood_block", "must be 0 or more seconds")
        if self.restart_limit < 1:
            raise ConfigError("restart_limit", "must be at least 1")
        if not self.restart_window > 0:
            raise ConfigError("restart_window", "must be a positive number of seconds")
        if not 0 < self.db_timeout < math.inf:
            raise ConfigError("db_timeout", "must be a positive number of seconds")
        self._check_expires()
        if not self.listen:
            raise ConfigError("listen", "at least one listen address is needed")
        for text in self.listen:
            try:
                address = ListenAddress.parse(text)
            except ValueError as exc:
                raise ConfigError("listen", str(exc)) from None
            if not _is_listen_host(address.host):
                raise ConfigError(
                    "listen",
                    f"{address.host!r} in {text!r} is not an IP address or localhost "
                    "(0.0.0.0 or :: listen on every interface)",
                )
        for domain in self.domains:
            if not _is_domain(domain):  # 'a b' was taken, and no Request-URI could match it
                raise ConfigError("domains", f"{domain!r} is not a host name or IP address")
        for cidr in self.trusted_sources:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ConfigError("trusted_sources", f"not a CIDR: {cidr!r}") from None
        scheme = self.db_url.split(":", 1)[0].lower()
        if scheme not in ("sqlite", "postgresql", "postgres", "mysql"):
            raise ConfigError("db_url", f"unsupported scheme {scheme!r} (sqlite, postgresql, mysql)")
        from .store.urls import DatabaseURL

        try:  # a bad port or option is a bad setting (exit 2), not a failed start
            DatabaseURL.parse(self.db_url)
        except ValueError as exc:
            raise ConfigError("db_url", str(exc)) from None
        self._require_positive(
            "pending_ttl", "delivery_window", "delivery_burst", "delivery_member_queue", "delivery_queue", "max_deliveries",
            "max_contacts", "max_aors", "delivery_queue_bytes", "pending_total_max",
        )  # fmt: skip
        if self.pending_max < 0:
            raise ConfigError("pending_max", "must be 0 (store nothing) or more")
        if not 0 <= self.delivery_overdue < math.inf:
            raise ConfigError("delivery_overdue", "must be 0 (off) or a positive number of seconds")
        if not 0 <= self.pending_retry < math.inf:
            raise ConfigError("pending_retry", "must be 0 (no retries) or a positive number of seconds")
        seen: dict[str, str] = {}
        for name in TABLE_FIELDS:
            table = getattr(self, name).lower()
            if table in seen:  # both named: the one set may be either
                raise ConfigError(
                    name,
                    f"{table!r} is also {seen[table]}'s table; the {len(TABLE_FIELDS)} table "
                    "names must all differ",
                )
            seen[table] = name
        for name in ("history_max", "history_days", "history_on_join"):
            if getattr(self, name) < 0:
                raise ConfigError(name, "must be 0 (off) or more")
        self._require_positive("history_lines_max")
        for name in (*TABLE_FIELDS, "manager_user"):
            value = getattr(self, name)
            if not is_plain_name(value):
                raise ConfigError(name, f"not a plain name: {value!r}")
        self._require_positive("max_members", "max_rooms_per_user", "max_rooms", "max_members_total", "rooms_list_max", "max_bans", "chat_burst", "chat_rate_senders", "rpc_max_requests")
        if not self.chat_rate >= 0 or math.isinf(self.chat_rate):
            raise ConfigError("chat_rate", "must be 0 (no limit) or a positive number")
        self._validate_ownership()
        for hdr in self.extra_hdrs:
            header = _EXTRA_HEADER.fullmatch(hdr)
            if header is None:  # ": x" and "Bad Name: v" went out as malformed header lines
                raise ConfigError(
                    "extra_hdrs", f"not a 'Name: value' header line (Name a SIP token): {hdr!r}"
                )
            if header[1].lower() in _OWN_HEADERS:
                raise ConfigError(
                    "extra_hdrs", f"{header[1]!r} is a header the server writes itself: {hdr!r}"
                )
        if self.identity_header is not None and not re.fullmatch(f"{_TOKEN_CHAR}+", self.identity_header):
            # was: taken as it came ('a b', 'X:Y', ''), and no header could ever match it
            raise ConfigError("identity_header", f"not a header name (a SIP token): {self.identity_header!r}")
        if self.outbound_proxy is not None:
            from .registrar import unusable_contact

            proxy = self.outbound_proxy.strip()
            if not proxy:
                raise ConfigError("outbound_proxy", "empty")
            # a plain host[:port] is a sip: URI; checked as a Contact is (a traceback before)
            scheme = proxy.partition(":")[0].lower()
            problem = unusable_contact(proxy if scheme in ("sip", "sips") else f"sip:{proxy}")
            if problem is not None:
                raise ConfigError("outbound_proxy", problem)
        if self.rpc_listen is not None:
            from .control.listen import parse_listen  # raises ConfigError naming rpc_listen

            parse_listen(self.rpc_listen)
        self._validate_tls()
        self._validate_rpc_access()
        self._validate_auth()

    def _require_positive(self, *names: str) -> None:
        """ConfigError naming the first of ``names`` whose value is below 1."""
        for name in names:
            if getattr(self, name) < 1:
                raise ConfigError(name, "must be positive")

    def _validate_tls(self) -> None:
        """``tls_cert``/``tls_key`` are needed by a ``tls:`` or ``wss:`` listen address and
        must load; ``tls_ca`` must load too."""
        secure = [t for t in SECURE_TRANSPORTS if any(a.lower().startswith(f"{t}:") for a in self.listen)]
        if secure and not (self.tls_cert and self.tls_key):
            missing = "tls_cert" if not self.tls_cert else "tls_key"
            raise ConfigError(missing, f"a {secure[0]}: listen address needs tls_cert and tls_key (PEM files)")
        if bool(self.tls_cert) != bool(self.tls_key):
            missing = "tls_key" if self.tls_cert else "tls_cert"
            raise ConfigError(missing, "tls_cert and tls_key go together")
        if self.tls_cert or self.tls_ca:
            from .transport.tls import TlsSetupError, client_context, server_context

            try:
                if self.tls_cert and self.tls_key:
                    server_context(self.tls_cert, self.tls_key)
                client_context(self.tls_ca, self.tls_verify)
            except TlsSetupError as exc:
                raise ConfigError(exc.param, exc.why) from None

    def _validate_rpc_access(self) -> None:
        """``rpc_token`` fits a header and is long enough; it is required when ``rpc_listen``
        is not a loopback address; ``rpc_hosts`` are ``host`` or ``host:port``."""
        from .control.access import check_host_entry, token_problem

        if self.rpc_token is not None:
            problem = token_problem(self.rpc_token)
            if problem:
                raise ConfigError("rpc_token", problem)
        for entry in self.rpc_hosts:
            problem = check_host_entry(entry)
            if problem:
                raise ConfigError("rpc_hosts", problem)
        if self.rpc_listen is not None and self.rpc_token is None:
            from .control.listen import parse_listen

            host, _ = parse_listen(self.rpc_listen)
            if not is_loopback_listen(host):
                raise ConfigError(
                    "rpc_token",
                    f"required when rpc_listen ({self.rpc_listen}) is not a loopback address",
                )

    def _validate_auth(self) -> None:
        """``auth`` and its limits; secure by default: unset ``auth`` means off only when
        every listen address is loopback (or ``trusted_sources`` front the server)."""
        if self.auth is not None and self.auth not in AUTH_MODES:
            raise ConfigError("auth", "must be 'off', 'register' or 'all'")
        if not self.nonce_expires > 0:
            raise ConfigError("nonce_expires", "must be a positive number of seconds")
        if not self.auth_cache_ttl >= 0:
            raise ConfigError("auth_cache_ttl", "must be 0 (no cache) or more seconds")
        self._require_positive("nonce_counts", "auth_cache_size", "auth_max_reads", "auth_fail_burst")
        if not self.auth_fail_rate >= 0:
            raise ConfigError("auth_fail_rate", "must be 0 (no bound) or more wrong passwords a second")
        if not self.auth_fail_block >= 0:
            raise ConfigError("auth_fail_block", "must be 0 or more seconds")
        if self.auth is None and not self.trusted_sources:
            exposed = [str(a) for a in self.listen_addresses if not is_loopback_listen(a.host)]
            if exposed:
                raise ConfigError(
                    "auth",
                    f"{exposed[0]} is not a loopback address and nothing authenticates "
                    "the users: set auth = \"register\" or \"all\" (add users with "
                    "imc-actors user add), or trusted_sources (a proxy that authenticates), "
                    "or auth = \"off\" to take every From as it is",
                )

    def _validate_ownership(self) -> None:
        """``node`` and ``lease_ttl`` (issue 13)."""
        if self.node is not None and not _NODE_NAME.fullmatch(self.node):
            raise ConfigError(
                "node", f"{self.node!r} is not a node name (1-64 letters, digits, '.', '_', '-')"
            )
        if not LEASE_TTL_MIN <= self.lease_ttl < math.inf:
            raise ConfigError("lease_ttl", f"must be at least {LEASE_TTL_MIN:g} seconds")
        for name in ("cluster_view_age", "metrics_share_interval"):
            if not 0 <= getattr(self, name) < math.inf:
                raise ConfigError(name, "must be a number of seconds, 0 or more")
        if 0 < self.metrics_share_interval < SHARE_INTERVAL_MIN:
            raise ConfigError(
                "metrics_share_interval", f"must be 0 (off) or at least {SHARE_INTERVAL_MIN:g} seconds"
            )
        if not 1 <= self.workers <= MAX_WORKERS:
            raise ConfigError("workers", f"must be from 1 to {MAX_WORKERS}")
        self._require_positive("max_claims")

    # ------------------------------------------------------------------ derived
    @property
    def parser_limits(self) -> ParserLimits:
        """The ``sip_max_*`` settings as the SIP parser's limits."""
        return ParserLimits(
            self.sip_max_message, self.sip_max_header_lines, self.sip_max_line, self.sip_max_field
        )

    @property
    def auth_mode(self) -> str:
        """``auth`` as in force: ``off``, ``register`` or ``all`` (unset is ``off``; validation
        refused an unset ``auth`` on a non-loopback address)."""
        return self.auth or "off"

    @property
    def listen_addresses(self) -> list[ListenAddress]:
        return [ListenAddress.parse(text) for text in self.listen]

    @property
    def served_domains(self) -> list[str]:
        """``domains`` as set, else the listen hosts (lower case)."""
        if self.domains:
            return [d.lower() for d in self.domains]
        hosts: list[str] = []
        for addr in self.listen_addresses:
            if addr.host.lower() not in hosts:
                hosts.append(addr.host.lower())
        return hosts

    def replace(self, **changes: Any) -> Config:
        new = dataclasses.replace(self, **changes)
        new.validate()
        return new


AUTH_MODES = ("off", "register", "all")
#: User-Agents that read only the first challenge and speak only MD5 (RFC 8760 clients pick
#: the first they can): they are offered MD5 alone.
MD5_ONLY_AGENTS = ("JsSIP", "sipsak", "SIPp", "baresip")


def _listen_ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP literal ``host`` names (brackets allowed), None when it is not one."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def _is_listen_host(host: str) -> bool:
    """A host a socket can be bound to without a DNS lookup: an IP literal, or localhost."""
    return host.lower() == "localhost" or _listen_ip(host) is not None


def is_loopback_listen(host: str) -> bool:
    """True when a listen host (SIP or ``rpc_listen``) is only reachable from this machine."""
    address = _listen_ip(host)
    return host.lower() == "localhost" or (address is not None and address.is_loopback)


#: The Config fields that name tables (Kamailio's two, then imc-actors' own).
TABLE_FIELDS = (
    "rooms_table", "members_table", "pending_table", "location_table", "subscriber_table",
    "secret_table", "bans_table", "limits_table", "lease_table", "node_table", "metrics_table",
    "history_table", "room_info_table",
)  # fmt: skip

#: Defaults that depend on other settings, in the words ``--help`` and README use.
DERIVED_DEFAULTS = {"domains": "the listen hosts", "auth": "off on loopback only"}


def default_text(name: str) -> str:
    """The default of :class:`Config` field ``name`` as ``--help`` and README's configuration
    table write it: ``none`` for None (and an empty list), ``true``/``false``, list items
    comma-separated, numbers and strings as they are; see :data:`DERIVED_DEFAULTS`."""
    if name in DERIVED_DEFAULTS:
        return DERIVED_DEFAULTS[name]
    value = getattr(Config(), name)
    if value is None or value == []:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ", ".join(str(item) for item in value)
    return str(value)


_LIST_FIELDS = {"extra_hdrs", "domains", "listen", "trusted_sources", "rpc_hosts", "md5_only_agents"}
_BOOL_FIELDS = {"create_on_join", "check_on_create", "registrar", "tls_verify", "metrics_public",
                "sqlite_inline"}
_INT_FIELDS = {
    "hash_size", "max_body_size", "min_expires", "max_expires", "default_expires", "mailbox_size",
    "restart_limit", "max_transactions", "pending_ttl", "pending_max", "pending_total_max", "delivery_window",
    "delivery_burst",
    "delivery_member_queue", "delivery_queue", "delivery_queue_bytes", "max_deliveries", "max_contacts", "max_aors",
    "max_transaction_bytes", "max_vias", "tcp_max_connections", "tcp_max_per_ip", "tcp_max_outgoing", "tcp_max_buffer",
    "tcp_send_queue", "dns_lookups_max", "sip_max_message", "sip_max_header_lines", "sip_max_line",
    "sip_max_field",
    "flood_burst", "flood_sources", "nonce_counts", "auth_cache_size", "auth_max_reads", "auth_fail_burst", "max_members",
    "max_rooms_per_user", "max_rooms", "max_members_total", "rooms_list_max", "max_bans", "chat_burst", "chat_rate_senders", "history_max",
    "history_days", "history_on_join", "history_lines_max", "rpc_max_requests",
}
_FLOAT_FIELDS = {"restart_window", "db_timeout", "tcp_idle_timeout", "rpc_body_timeout", "dns_timeout", "flood_rate", "flood_block",
                 "nonce_expires", "auth_cache_ttl", "chat_rate", "auth_fail_rate", "auth_fail_block"}  # fmt: skip
_OPTIONAL_FIELDS = {"outbound_proxy", "identity_header", "mi_fifo", "rpc_listen", "auth"}
_OPTIONAL_FIELDS |= {"tls_cert", "tls_key", "tls_ca", "rpc_token"}
# ownership (issue 13)
_FLOAT_FIELDS |= {"lease_ttl", "cluster_view_age", "metrics_share_interval"}
_OPTIONAL_FIELDS |= {"node"}
_INT_FIELDS |= {"workers", "max_claims"}
_FLOAT_FIELDS |= {"pending_retry", "delivery_overdue"}


#: In ``IMC_EXTRA_HDRS``, where a new header starts: a comma (or a newline) followed by a
#: header name, a colon and a space (or the end). Other commas belong to the value:
#: ``X-A: a, b, X-B: sip:c@d`` is ``X-A: a, b`` and ``X-B: sip:c@d``.
#: A character of a SIP token (RFC 3261 §25.1), as in a header name.
def is_plain_name(value: str) -> bool:
    """Letters, digits, ``_`` and ``-`` only, at least one: a table name or ``manager_user``."""
    return bool(value) and value.replace("_", "").replace("-", "").isalnum()


_TOKEN_CHAR = r"[A-Za-z0-9!%'*+\-.^_`|~]"
_NEXT_HEADER = re.compile(rf"\n|,(?=[ \t]*[A-Za-z]{_TOKEN_CHAR}*[ \t]*:(?:[ \t]|$))")


_INTEGER = re.compile(r"[+-]?[0-9]+")
#: An ``extra_hdrs`` line: a SIP token (RFC 3261 §25.1), a colon, a value without control
#: characters but tab.
_EXTRA_HEADER = re.compile(rf"({_TOKEN_CHAR}+)[ \t]*:([^\x00-\x08\x0a-\x1f\x7f]*)")
#: Headers each MESSAGE has once, written by the server (full and compact names): a second
#: one from ``extra_hdrs`` would make it malformed or ambiguous.
_OWN_HEADERS = frozenset(
    "via v from f to t call-id i cseq content-length l content-type c max-forwards route "
    "contact m in-reply-to date".split()
)


def _from_text(name: str, raw: str) -> Any:
    """Turn an environment string into the field's type: lists are comma-separated, and in
    ``extra_hdrs`` only a comma that starts a new ``Name: value`` header separates
    (:data:`_NEXT_HEADER`), so header values may contain commas."""
    if name in _LIST_FIELDS:
        parts = _NEXT_HEADER.split(raw) if name == "extra_hdrs" else raw.split(",")
        return [part.strip() for part in parts if part.strip()]
    return raw


def _is_domain(text: str) -> bool:
    """Whether ``text`` is a host a SIP URI can have (a name, an IPv4 address, an IPv6
    address with or without brackets), with no port or parameters."""
    from .sip.uri import parse_sip_uri

    try:
        ipaddress.IPv6Address(text)
        return True
    except ValueError:
        pass
    try:
        uri = parse_sip_uri(f"sip:x@{text}")
    except ValueError:
        return False
    return uri.port is None and (uri.host or "").lower() == text.lower()


def _bounded(name: str, number: Any) -> Any:
    """``number`` if within :data:`INT_MAX` (a count) or :data:`FLOAT_MAX` (seconds, rates):
    10^25 seconds overflowed SQLite's INTEGER at the first write, and an infinite
    ``restart_window`` ended the conference at the first crash. Raises ConfigError."""
    if name in _INT_FIELDS and not (isinstance(number, int) and abs(number) <= INT_MAX):
        raise ConfigError(name, f"must be a whole number of at most {INT_MAX:,}")
    if name in _FLOAT_FIELDS and not (
        isinstance(number, int | float) and abs(number) <= FLOAT_MAX
    ):  # also nan
        raise ConfigError(name, f"must be a number no larger than {FLOAT_MAX:,.0f}, got {number!r}")
    return number


def _coerce(name: str, value: Any) -> Any:
    if name in _BOOL_FIELDS:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ConfigError(name, f"expected true or false, got {value!r}")
    if name in _INT_FIELDS:
        # a whole number as written: not 16.5 (int() would make it 16), not a bool, and in
        # text (environment, flags) plain digits only, not 4_000 or 1e3
        number: int | None = None
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        elif isinstance(value, float) and value.is_integer():
            number = int(value)
        elif isinstance(value, str) and _INTEGER.fullmatch(value.strip()):
            number = int(value)
        if number is None:
            raise ConfigError(name, f"expected an integer, got {value!r}")
        return number  # its range: validate() (_bounded)
    if name in _FLOAT_FIELDS:
        if isinstance(value, bool):
            raise ConfigError(name, f"expected a number, got {value!r}")
        try:
            return float(value)  # its range: validate() (_bounded)
        except (TypeError, ValueError):
            raise ConfigError(name, f"expected a number, got {value!r}") from None
    if name in _LIST_FIELDS:
        if isinstance(value, str):
            return [value]
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise ConfigError(name, "expected a list of strings")
        return list(value)
    if name in _OPTIONAL_FIELDS:
        if value in (None, ""):
            return None
        if not isinstance(value, str):
            raise ConfigError(name, f"expected a string, got {value!r}")
        return value.strip().lower() if name == "auth" else value
    if not isinstance(value, str):
        raise ConfigError(name, f"expected a string, got {value!r}")
    if name in ("owner_leave", "log_format", "log_level"):
        return value.lower()
    return value


#: Each field's default (what :meth:`Config._check_expires` compares with).
_FIELD_DEFAULTS = {f.name: f.default for f in fields(Config)}
