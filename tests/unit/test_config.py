"""Config: TOML <- IMC_* environment <- flags, validated once with messages naming the parameter."""

import math

import pytest

from imc_actors.config import Config, ConfigError, ListenAddress


def test_defaults_are_the_embedded_server():
    config = Config.from_sources(environ={})
    assert config.db_url == "sqlite:///imc.db"
    assert [str(a) for a in config.listen_addresses] == ["udp:127.0.0.1:5060", "tcp:127.0.0.1:5060"]
    assert config.served_domains == ["127.0.0.1"]
    assert (config.hash_size, config.imc_cmd_start_char, config.create_on_join) == (4, "#", True)


def test_precedence_file_then_environment_then_flags(tmp_path):
    path = tmp_path / "imc.toml"
    path.write_text(
        'db_url = "sqlite:///file.db"\nhash_size = 2\ndomains = ["a.example"]\n'
        'extra_hdrs = ["X-A: 1"]\ncheck_on_create = true\n'
    )
    env = {"IMC_HASH_SIZE": "3", "IMC_DOMAINS": "b.example, c.example", "IMC_CREATE_ON_JOIN": "no"}
    config = Config.from_sources(str(path), environ=env, overrides={"hash_size": 5})
    assert config.db_url == "sqlite:///file.db"
    assert config.hash_size == 5
    assert config.domains == ["b.example", "c.example"]
    assert config.extra_hdrs == ["X-A: 1"]
    assert config.check_on_create is True
    assert config.create_on_join is False


@pytest.mark.parametrize(
    ("source", "param"),
    [
        ({"IMC_HASH_SIZE": "many"}, "hash_size"),
        ({"IMC_HASH_SIZE": "40"}, "hash_size"),
        ({"IMC_HASH_SIZE": "13"}, "hash_size"),  # 16 was accepted: 12.6 s and 357 MB to start
        ({"IMC_OWNER_LEAVE": "maybe"}, "owner_leave"),
        ({"IMC_CREATE_ON_JOIN": "perhaps"}, "create_on_join"),
        ({"IMC_LISTEN": "udp:127.0.0.1:99999"}, "listen"),
        ({"IMC_TRUSTED_SOURCES": "10.0.0.0/33"}, "trusted_sources"),
        ({"IMC_DB_URL": "oracle://x"}, "db_url"),
        # were "cannot start: Port out of range 0-65535" (exit 1), naming no setting
        ({"IMC_DB_URL": "postgresql://postgres@127.0.0.1:99999/test"}, "db_url"),
        ({"IMC_DB_URL": "mysql://root@127.0.0.1:x/test"}, "db_url"),
        ({"IMC_DB_URL": "sqlite:///x.db?mode=memory"}, "db_url"),
        ({"IMC_DB_URL": "postgresql://postgres@127.0.0.1"}, "db_url"),  # no database
        ({"IMC_IMC_CMD_START_CHAR": " "}, "imc_cmd_start_char"),
        ({"IMC_EXTRA_HDRS": "NoColon"}, "extra_hdrs"),
        *(({"IMC_DOMAINS": bad}, "domains") for bad in ("a b", "a@b", "ex;x=1", "ex:5060")),
        ({"IMC_EXTRA_HDRS": ": x,X-Good: y"}, "extra_hdrs"),  # went out as a ": x" line
        ({"IMC_EXTRA_HDRS": "Bad Name: v"}, "extra_hdrs"),
        ({"IMC_EXTRA_HDRS": "X-A: a\x00b"}, "extra_hdrs"),
        ({"IMC_EXTRA_HDRS": "Content-Length: 5"}, "extra_hdrs"),  # the server writes it
        ({"IMC_EXTRA_HDRS": "v: SIP/2.0/UDP 192.0.2.1"}, "extra_hdrs"),
        ({"IMC_ROOMS_TABLE": "x; drop table y"}, "rooms_table"),
        ({"IMC_RPC_LISTEN": "127.0.0.1:http"}, "rpc_listen"),
        ({"IMC_RESTART_WINDOW": "0"}, "restart_window"),
        ({"IMC_DB_TIMEOUT": "0"}, "db_timeout"),
        ({"IMC_DB_TIMEOUT": "soon"}, "db_timeout"),
        ({"IMC_DB_TIMEOUT": "inf"}, "db_timeout"),
        ({"IMC_DNS_TIMEOUT": "33"}, "dns_timeout"),
        ({"IMC_DNS_TIMEOUT": "nan"}, "dns_timeout"),
        ({"IMC_DNS_LOOKUPS_MAX": "1025"}, "dns_lookups_max"),
        ({"IMC_DNS_LOOKUPS_MAX": "16.5"}, "dns_lookups_max"),
        ({"IMC_MAX_ROOMS": "4_000"}, "max_rooms"),
        ({"IMC_MAX_ROOMS": "1e3"}, "max_rooms"),
        ({"IMC_RESTART_WINDOW": "inf"}, "restart_window"),  # ended the conference at a crash
        ({"IMC_FLOOD_BLOCK": "inf"}, "flood_block"),  # a traceback per throttled request
        ({"IMC_FLOOD_BLOCK": "1e300"}, "flood_block"),  # a Retry-After of 300 digits
        ({"IMC_PENDING_TTL": "99999999999999999999"}, "pending_ttl"),  # overflowed SQLite
        ({"IMC_HISTORY_ON_JOIN": str(10**25)}, "history_on_join"),
        ({"IMC_LEASE_TTL": "0.0001"}, "lease_ttl"),  # the renewal loop spun
        ({"IMC_METRICS_SHARE_INTERVAL": "0.000001"}, "metrics_share_interval"),
        # a traceback at startup (port 99999, sctp) or a 503 per notice ("not a uri")
        *(({"IMC_OUTBOUND_PROXY": bad}, "outbound_proxy") for bad in (
            "sip:127.0.0.85:99999", "sip:", "sip:127.0.0.85:abc", "sip:127.0.0.85;transport=sctp",
            "tel:+1", "not a uri", "sip:[::1", "127.0.0.85:0")),
    ],
)
def test_bad_values_name_the_parameter(source, param):
    with pytest.raises(ConfigError) as info:
        Config.from_sources(environ=source)
    assert info.value.param == param
    assert param in str(info.value)


def test_db_timeout_from_file_environment_and_flag(tmp_path):
    path = tmp_path / "imc.toml"
    path.write_text("db_timeout = 2\n")
    assert Config.from_sources(environ={}).db_timeout == 5.0
    assert Config.from_sources(str(path), environ={}).db_timeout == 2.0
    assert Config.from_sources(str(path), environ={"IMC_DB_TIMEOUT": "0.5"}).db_timeout == 0.5
    flag = Config.from_sources(
        str(path), environ={"IMC_DB_TIMEOUT": "0.5"}, overrides={"db_timeout": "7.5"}
    )
    assert flag.db_timeout == 7.5


@pytest.mark.parametrize(
    ("line", "expected"),
    [("max_rooms = 4_000", 4000), ("max_rooms = 16.0", 16), ("max_rooms = \" 12 \"", 12),
     ("max_rooms = \"+7\"", 7)],
)  # fmt: skip
def test_whole_numbers_in_a_file(tmp_path, line, expected):
    path = tmp_path / "imc.toml"
    path.write_text(line + "\n")  # TOML's own 4_000 is an integer
    assert Config.from_sources(str(path), environ={}).max_rooms == expected


@pytest.mark.parametrize("line", ["max_rooms = 16.5", "max_rooms = \"4_000\"", "max_rooms = true"])
def test_an_integer_field_refuses_what_is_not_a_whole_number(tmp_path, line):
    # 16.5 was taken as 16 (int() truncates) and "4_000" as 4000
    path = tmp_path / "imc.toml"
    path.write_text(line + "\n")
    with pytest.raises(ConfigError, match="invalid max_rooms: expected an integer"):
        Config.from_sources(str(path), environ={})


@pytest.mark.parametrize(
    "proxy", ["sip:127.0.0.1:5070;lr", "127.0.0.1:5070", "sips:proxy.example.org", "sip:[::1]:5070"]
)
def test_an_outbound_proxy_that_can_be_reached(proxy):
    assert Config.from_sources(environ={"IMC_OUTBOUND_PROXY": proxy}).outbound_proxy == proxy


@pytest.mark.parametrize("domain", ["example.org", "EXAMPLE.org", "127.0.0.1", "[::1]", "::1"])
def test_domains_that_are_hosts(domain):
    assert Config.from_sources(environ={"IMC_DOMAINS": domain}).domains == [domain]


def test_unknown_key_in_file_is_refused(tmp_path):
    path = tmp_path / "imc.toml"
    path.write_text("no_such_thing = 1\n")
    with pytest.raises(ConfigError, match="no_such_thing"):
        Config.from_sources(str(path), environ={})


@pytest.mark.parametrize("data", [b'node = "\xff"\n', b"\xff\xfe = 1\n"])
def test_a_file_that_is_not_utf8_is_a_config_error(tmp_path, data):
    # was: a UnicodeDecodeError traceback from every subcommand
    path = tmp_path / "imc.toml"
    path.write_bytes(data)
    with pytest.raises(ConfigError, match="not UTF-8"):
        Config.from_sources(str(path), environ={})


@pytest.mark.parametrize("value", ["a b", "X:Y", "P-Asserted-Identity:", "Ünicode"])
def test_an_identity_header_that_is_no_header_name_is_refused(value):
    # was: accepted, and every MESSAGE from a trusted source then got 403 "No Valid a b"
    with pytest.raises(ConfigError, match="identity_header"):
        Config.from_sources(environ={"IMC_IDENTITY_HEADER": value, "IMC_TRUSTED_SOURCES": "127.0.0.0/8"})
    ok = Config.from_sources(environ={"IMC_IDENTITY_HEADER": "P-Asserted-Identity"})
    assert ok.identity_header == "P-Asserted-Identity"


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        Config.from_sources(str(tmp_path / "absent.toml"), environ={})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("udp:127.0.0.1:5060", ListenAddress("udp", "127.0.0.1", 5060)),
        ("tcp:127.0.0.1:0", ListenAddress("tcp", "127.0.0.1", 0)),
        ("TCP:[::1]:5070", ListenAddress("tcp", "::1", 5070)),
        ("127.0.0.1:5080", ListenAddress("udp", "127.0.0.1", 5080)),
        ("ws:127.0.0.1:5066", ListenAddress("ws", "127.0.0.1", 5066)),
        ("WS:[::1]:0", ListenAddress("ws", "::1", 0)),
        ("tls:127.0.0.1:5061", ListenAddress("tls", "127.0.0.1", 5061)),
        ("TLS:[::1]", ListenAddress("tls", "::1", 5061)),
        ("tls:127.0.0.1", ListenAddress("tls", "127.0.0.1", 5061)),
    ],
)
def test_listen_address_forms(text, expected):
    assert ListenAddress.parse(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("sctp:127.0.0.1:5060", "unknown transport 'sctp' in 'sctp:127.0.0.1:5060' (udp, tcp, tls, ws or wss)"),
        ("udp:127.0.0.1:5_060", "bad port in 'udp:127.0.0.1:5_060'"),  # bound 5060 before
        ("udp:127.0.0.1:+5060", "bad port in 'udp:127.0.0.1:+5060'"),
        ("udp:127.0.0.1:99999", "bad port in 'udp:127.0.0.1:99999' (1-65535, or 0 for a free one)"),
    ],
)
def test_listen_address_refusals(text, message):
    with pytest.raises(ValueError) as info:
        ListenAddress.parse(text)
    assert str(info.value) == message


@pytest.mark.parametrize("transport", ["wss", "WSS"])
def test_listen_over_wss_is_parsed(transport):
    assert ListenAddress.parse(f"{transport}:127.0.0.1:5067") == ListenAddress("wss", "127.0.0.1", 5067)


def test_max_transactions_default_and_sources(tmp_path):
    assert Config.from_sources(environ={}).max_transactions == 100_000
    path = tmp_path / "imc.toml"
    path.write_text("max_transactions = 500\n")
    assert Config.from_sources(str(path), environ={}).max_transactions == 500
    env = {"IMC_MAX_TRANSACTIONS": "700"}
    assert Config.from_sources(str(path), environ=env).max_transactions == 700
    flags = {"max_transactions": "900"}  # as argparse hands the --max-transactions flag over
    assert Config.from_sources(str(path), environ=env, overrides=flags).max_transactions == 900


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("0", "invalid max_transactions: must be positive"),
        ("-5", "invalid max_transactions: must be positive"),
        ("lots", "invalid max_transactions: expected an integer, got 'lots'"),
    ],
)
def test_max_transactions_must_be_a_positive_integer(raw, message):
    with pytest.raises(ConfigError) as info:
        Config.from_sources(environ={"IMC_MAX_TRANSACTIONS": raw})
    assert info.value.param == "max_transactions"
    assert str(info.value) == message


def test_max_transactions_zero_in_file_is_refused(tmp_path):
    path = tmp_path / "imc.toml"
    path.write_text("max_transactions = 0\n")
    with pytest.raises(ConfigError, match="invalid max_transactions: must be positive"):
        Config.from_sources(str(path), environ={})


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "[::1]", "0.0.0.0", "[::]", "localhost", "LocalHost"]
)
def test_listen_hosts_that_bind_without_dns(host):
    assert Config(listen=[f"udp:{host}:5060"], auth="off").validate() is None


@pytest.mark.parametrize("host", ["foo", "example.com", "*", "127.0.0.256", "local_host"])
def test_a_listen_host_that_is_no_ip_address_is_refused_up_front(host):
    with pytest.raises(ConfigError) as caught:
        Config(listen=[f"udp:{host}:5060"]).validate()
    assert caught.value.param == "listen"
    assert str(caught.value) == (
        f"invalid listen: {host!r} in 'udp:{host}:5060' is not an IP address or localhost "
        "(0.0.0.0 or :: listen on every interface)"
    )


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("X-Service: imc", ["X-Service: imc"]),
        ("X-A: a, X-B: b", ["X-A: a", "X-B: b"]),
        ("X-A: one, two,X-B: three", ["X-A: one, two", "X-B: three"]),
        (
            "Accept: text/plain, text/html, X-B: sip:bob@x, y",
            ["Accept: text/plain, text/html", "X-B: sip:bob@x, y"],
        ),
        ('Warning: 399 host "a, b"\nX-B: c', ['Warning: 399 host "a, b"', "X-B: c"]),
        ("X-Empty:, X-B: b", ["X-Empty:", "X-B: b"]),
    ],
)
def test_extra_hdrs_from_the_environment_split_where_a_header_starts(raw, expected):
    config = Config.from_sources(environ={"IMC_EXTRA_HDRS": raw})
    assert config.extra_hdrs == expected


def test_other_lists_from_the_environment_are_comma_separated():
    config = Config.from_sources(environ={"IMC_DOMAINS": "a.example, b.example,"})
    assert config.domains == ["a.example", "b.example"]


def test_abuse_bounds_defaults_and_sources():
    defaults = {
        "flood_rate": 2000.0, "flood_burst": 4000, "flood_block": 2.0, "flood_sources": 65536,
        "tcp_max_connections": 2048, "tcp_max_per_ip": 256, "tcp_idle_timeout": 120.0,
        "tcp_max_buffer": 66560, "max_transaction_bytes": 256 << 20, "max_vias": 16,
        "tcp_send_queue": 256 << 10,
    }  # fmt: skip
    config = Config.from_sources(environ={})
    assert {name: getattr(config, name) for name in defaults} == defaults
    env = {"IMC_FLOOD_RATE": "0", "IMC_TCP_IDLE_TIMEOUT": "30.5", "IMC_MAX_VIAS": "8"}
    config = Config.from_sources(environ=env, overrides={"tcp_max_per_ip": "4"})
    assert (config.flood_rate, config.tcp_idle_timeout) == (0.0, 30.5)
    assert (config.max_vias, config.tcp_max_per_ip) == (8, 4)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"IMC_FLOOD_RATE": "-1"},
            "invalid flood_rate: must be 0 (off) or a positive number of requests a second",
        ),
        ({"IMC_FLOOD_BURST": "0"}, "invalid flood_burst: must be positive"),
        ({"IMC_FLOOD_BLOCK": "soon"}, "invalid flood_block: expected a number, got 'soon'"),
        (
            {"IMC_TCP_IDLE_TIMEOUT": "0"},
            "invalid tcp_idle_timeout: must be a positive number of seconds",
        ),
        ({"IMC_TCP_MAX_BUFFER": "100"}, "invalid tcp_max_buffer: must be at least 1024 bytes"),
        ({"IMC_TCP_SEND_QUEUE": "100"}, "invalid tcp_send_queue: must be at least 1024 bytes"),
        ({"IMC_TCP_MAX_CONNECTIONS": "0"}, "invalid tcp_max_connections: must be positive"),
        ({"IMC_MAX_VIAS": "0"}, "invalid max_vias: must be positive"),
        ({"IMC_MAX_TRANSACTION_BYTES": "0"}, "invalid max_transaction_bytes: must be positive"),
        ({"IMC_DELIVERY_BURST": "0"}, "invalid delivery_burst: must be positive"),
        ({"IMC_DELIVERY_BURST": "many"}, "invalid delivery_burst: expected an integer, got 'many'"),
        ({"IMC_MAILBOX_SIZE": "0"}, "invalid mailbox_size: must be positive"),
        # 10^12 s made every REGISTER a 500 (the expiry date was out of range)
        (
            {"IMC_MAX_EXPIRES": "999999999999", "IMC_DEFAULT_EXPIRES": "999999999999"},
            "invalid max_expires: must be at most 1,000,000,000 seconds",
        ),
        # the setting named is the one changed from its default, with the values
        (  # (was: always min_expires)
            {"IMC_DEFAULT_EXPIRES": "10"},
            "invalid default_expires: need 1 <= min_expires (60) <= default_expires (10) <= max_expires (3600)",
        ),
        (
            {"IMC_MAX_EXPIRES": "30"},
            "invalid max_expires: need 1 <= min_expires (60) <= default_expires (3600) <= max_expires (30)",
        ),
        (
            {"IMC_MIN_EXPIRES": "7200"},
            "invalid min_expires: need 1 <= min_expires (7200) <= default_expires (3600) <= max_expires (3600)",
        ),
        (
            {"IMC_MAX_EXPIRES": "100", "IMC_DEFAULT_EXPIRES": "100", "IMC_MIN_EXPIRES": "200"},
            "invalid default_expires: need 1 <= min_expires (200) <= default_expires (100) <= max_expires (100)",
        ),
        ({"IMC_MIN_EXPIRES": "0"}, "invalid min_expires: must be at least 1 second"),
        ({"IMC_MAX_EXPIRES": "-5"}, "invalid max_expires: must be at least 1 second"),
        ({"IMC_AUTH_FAIL_BURST": "0"}, "invalid auth_fail_burst: must be positive"),
        (
            {"IMC_AUTH_FAIL_RATE": "-1"},
            "invalid auth_fail_rate: must be 0 (no bound) or more wrong passwords a second",
        ),
        ({"IMC_AUTH_FAIL_BLOCK": "-1"}, "invalid auth_fail_block: must be 0 or more seconds"),
    ],
)
def test_abuse_bounds_are_validated(env, message):
    with pytest.raises(ConfigError) as info:
        Config.from_sources(environ=env)
    assert str(info.value) == message


def test_delivery_and_mailbox_defaults():
    config = Config()
    assert (config.delivery_window, config.delivery_burst, config.mailbox_size) == (1, 16, 1024)
    assert Config.from_sources(environ={"IMC_DELIVERY_BURST": "4"}).delivery_burst == 4


# --------------------------------------------------------------- auth: secure by default
@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.5", "[::1]", "localhost"])
def test_auth_is_off_by_default_on_loopback(host):
    config = Config(listen=[f"udp:{host}:5060"])
    config.validate()
    assert config.auth is None and config.auth_mode == "off"


@pytest.mark.parametrize("host", ["0.0.0.0", "[::]", "192.0.2.1"])
def test_an_exposed_listener_without_auth_refuses_to_start(host):
    with pytest.raises(ConfigError) as caught:
        Config(listen=["udp:127.0.0.1:5060", f"tcp:{host}:5060"]).validate()
    assert caught.value.param == "auth"
    assert "is not a loopback address and nothing authenticates the users" in str(caught.value)


@pytest.mark.parametrize(
    "changes",
    [{"auth": "off"}, {"auth": "register"}, {"auth": "all"}, {"trusted_sources": ["10.0.0.0/8"]}],
)
def test_an_exposed_listener_starts_with_auth_or_trusted_sources_or_an_explicit_off(changes):
    config = Config(listen=["udp:0.0.0.0:5060"], **changes)
    config.validate()
    assert config.auth_mode == changes.get("auth", "off")


def test_auth_from_the_environment_and_bad_values():
    config = Config.from_sources(environ={"IMC_AUTH": "ALL"})
    assert config.auth == "all"
    for env, param in (
        ({"IMC_AUTH": "yes"}, "auth"),
        ({"IMC_NONCE_EXPIRES": "0"}, "nonce_expires"),
        ({"IMC_NONCE_COUNTS": "0"}, "nonce_counts"),
        ({"IMC_AUTH_CACHE_SIZE": "0"}, "auth_cache_size"),
        ({"IMC_AUTH_MAX_READS": "0"}, "auth_max_reads"),
        ({"IMC_MAX_CLAIMS": "0"}, "max_claims"),
        ({"IMC_SUBSCRIBER_TABLE": "imc_rooms"}, "subscriber_table"),
    ):
        with pytest.raises(ConfigError) as caught:
            Config.from_sources(environ=env)
        assert caught.value.param == param, env


# -- ownership (issue 13) ---------------------------------------------------------------------


def test_node_and_lease_ttl_from_file_environment_and_flag(tmp_path):
    path = tmp_path / "imc.toml"
    path.write_text('node = "a"\nlease_ttl = 3\nlease_table = "leases"\n')
    default = Config.from_sources(environ={})
    assert (default.node, default.lease_ttl, default.lease_table, default.node_table) == (
        None, 5.0, "imc_leases", "imc_nodes",
    )  # fmt: skip
    assert Config.from_sources(str(path), environ={}).node == "a"
    env = {"IMC_NODE": "b.example-1", "IMC_LEASE_TTL": "2.5", "IMC_NODE_TABLE": "nodes"}
    config = Config.from_sources(str(path), environ=env)
    assert (config.node, config.lease_ttl, config.lease_table, config.node_table) == (
        "b.example-1", 2.5, "leases", "nodes",
    )  # fmt: skip
    flag = Config.from_sources(str(path), environ=env, overrides={"node": "c", "lease_ttl": "1"})
    assert (flag.node, flag.lease_ttl) == ("c", 1.0)


@pytest.mark.parametrize(
    ("env", "param"),
    [
        ({"IMC_NODE": "has space"}, "node"),
        ({"IMC_NODE": "-dash-first"}, "node"),
        ({"IMC_NODE": "n" * 65}, "node"),
        ({"IMC_LEASE_TTL": "0"}, "lease_ttl"),
        ({"IMC_LEASE_TTL": "inf"}, "lease_ttl"),
        ({"IMC_LEASE_TABLE": "imc_rooms"}, "lease_table"),
        ({"IMC_NODE_TABLE": "x y"}, "node_table"),
    ],
)
def test_bad_ownership_values_name_the_parameter(env, param):
    with pytest.raises(ConfigError) as info:
        Config.from_sources(environ=env)
    assert info.value.param == param


async def test_open_conference_checks_a_config_built_directly():
    from imc_actors import open_conference

    with pytest.raises(ConfigError, match="restart_window"):
        async with open_conference(Config(restart_window=math.inf)):
            pass  # pragma: no cover


def test_a_table_name_used_twice_names_both_keys():
    # it named members_table alone when the operator had set rooms_table
    with pytest.raises(ConfigError) as info:
        Config.from_sources(environ={"IMC_ROOMS_TABLE": "imc_members"})
    assert "rooms_table" in str(info.value) and "members_table" in str(info.value)
