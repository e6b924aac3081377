"""The pure parts of ``serve --workers N`` (:mod:`imc_actors.workers`): node names, the host
of the private addresses, the database check, the ``workers`` setting's bounds."""

from __future__ import annotations

import socket

import pytest

from imc_actors.config import Config, ConfigError, ListenAddress
from imc_actors.workers import node_names, private_host, workers_refusal


def config(**values) -> Config:
    return Config.from_sources(environ={}, overrides=values)


def test_node_names_are_the_node_then_the_index():
    assert node_names(config(node="a", workers=3)) == ["a-0", "a-1", "a-2"]
    assert node_names(config(node="a", workers=1)) == ["a-0"]


def test_without_a_node_the_host_name_is_the_base(monkeypatch):
    monkeypatch.setattr(socket, "gethostname", lambda: "db host#1.example")
    assert node_names(config(workers=2)) == ["db-host-1.example-0", "db-host-1.example-1"]
    monkeypatch.setattr(socket, "gethostname", lambda: "###")
    assert node_names(config(workers=2)) == ["imc-0", "imc-1"]


def test_node_names_fit_the_node_table():
    names = node_names(config(node="n" * 64, workers=12))
    assert names[0] == "n" * 61 + "-0" and names[11] == "n" * 61 + "-11"
    assert all(len(name) <= 64 for name in names)
    for name in names:  # every one is a valid node name
        assert config(node=name).node == name


@pytest.mark.parametrize(
    ("listen", "host"),
    [
        ("udp:127.0.0.2:5060", "127.0.0.2"),
        ("udp:0.0.0.0:5060", "127.0.0.1"),
        ("tcp:[::]:5060", "::1"),
        ("udp:[::1]:5060", "::1"),
        ("udp:localhost:5060", "127.0.0.1"),
    ],
)
def test_private_host_is_the_first_listen_host_made_reachable(listen, host):
    assert private_host([ListenAddress.parse(listen)]) == host


def test_workers_refuse_a_database_of_their_own_each():
    assert workers_refusal(config(workers=2, db_url="sqlite:///imc.db")) is None
    assert workers_refusal(config(workers=2, db_url="postgresql://u@h/db")) is None
    refusal = workers_refusal(config(workers=2, db_url="sqlite:///:memory:"))
    assert refusal is not None and refusal.startswith(
        "invalid workers: 2 workers need one database"
    )
    # an SQLite URI filename (?uri=true) for memory: each worker got a database of its own
    refusal = workers_refusal(config(workers=2, db_url="sqlite:///file::memory:?uri=true"))
    assert refusal is not None and refusal.startswith(
        "invalid workers: 2 workers need one database"
    )
    assert workers_refusal(config(workers=2, db_url="sqlite:///file:/srv/imc.db?uri=true")) is None


@pytest.mark.parametrize("count", [0, -1, 65])
def test_workers_are_bounded(count):
    with pytest.raises(ConfigError, match="invalid workers: must be from 1 to 64"):
        config(workers=count)


def test_workers_come_from_the_environment():
    assert Config.from_sources(environ={"IMC_WORKERS": "4"}).workers == 4
    with pytest.raises(ConfigError, match="invalid workers: expected an integer"):
        Config.from_sources(environ={"IMC_WORKERS": "four"})
