"""Prometheus metrics for one server: counters at the edges, statistics read at scrape time.

Most numbers already exist as frozen ``statistics()`` records on the objects that own them
(supervisor, delivery, store, SIP transport, MI FIFO); :class:`ServerMetrics` does not copy
them into counters as they change but reads every record when ``/metrics`` is scraped (a
custom collector), so the hot paths pay nothing. Three things have no owner's record and are
counted here as they happen:

- ``imc_messages_in_total{kind}``: incoming MESSAGEs, ``command`` or ``chat`` (spec §2: the
  first byte is ``imc_cmd_start_char``), counted by :meth:`ServerMetrics.instrument`, which
  wraps the transport's request handler;
- ``imc_sip_responses_total{method,code}``: the final response the handler chose for every new
  request (the transport's own answers to unparsable requests are ``imc_sip_rejected_total``);
- ``imc_store_commit_seconds``: how long each database transaction (one group commit) took,
  observed by :class:`TimedRepository` around the repository's ``apply_batch``.

Each server has its own :class:`~prometheus_client.CollectorRegistry` (no global state), so
several servers in one process (tests, embedders) do not mix their numbers. The exposition
leaves out prometheus_client's ``*_created`` timestamps (for this registry only). Scraping runs in
the Trio thread, never in a worker thread: the records it reads belong to Trio tasks.

**Every series has a ``node`` label** (issue 13 item 3): the server's ``node`` name, or ``""``
without one (which Prometheus treats as no label, so a single server's queries need none). In a
cluster each node's ``/metrics`` also shows the other nodes' series, each with its own node's
label: every ``metrics_share_interval`` seconds :func:`share_metrics` stores this node's
series as JSON (:meth:`ServerMetrics.snapshot`) in its one row of the metrics table
(``metrics_table``; replaced, so one row per node however long it runs) and reads the other
rows back into :attr:`ServerMetrics.peers`. A scrape never touches the database or another
node: it merges the peers' last snapshots into its own families. A peer whose snapshot is
older than :data:`PEER_INTERVALS` intervals (dead, cut off, or stopped) is left out, so a dead
node's series disappear within that time and never slow or break anyone's scrape.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Protocol

import trio
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from ..config import Config
from ..imc.effects import Write
from ..store.repository import StoreError

__all__ = ["CONTENT_TYPE", "PEER_INTERVALS", "ServerMetrics", "TimedRepository", "share_metrics"]

log = logging.getLogger("imc_actors.control.metrics")

#: A peer's snapshot is shown while it is younger than this many ``metrics_share_interval``.
PEER_INTERVALS = 3

#: Content-Type of the text exposition format served on ``/metrics``.
CONTENT_TYPE = CONTENT_TYPE_LATEST

#: Commit latency buckets (seconds): SQLite on a local disk is in the low milliseconds.
COMMIT_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

#: Methods counted under their own name; anything else is ``other`` (bounded label values).
KNOWN_METHODS = frozenset(
    {"MESSAGE", "REGISTER", "OPTIONS", "CANCEL", "INVITE", "ACK", "BYE", "SUBSCRIBE",
     "NOTIFY", "PUBLISH", "INFO", "UPDATE", "PRACK", "REFER"}
)  # fmt: skip


class _Request(Protocol):
    method: str
    body: bytes


class _Reply(Protocol):
    code: int


class _HasStatistics(Protocol):
    def statistics(self) -> Any: ...


# ---------------------------------------------------------------------------------- store
class TimedRepository:
    """A store backend (:class:`~imc_actors.store.repository.Repository`) that reports how
    long each successful ``apply_batch`` (one database transaction: a group commit) took.

    ``observe(seconds)`` is called from the store's writer thread (prometheus-client's
    metrics are thread-safe). Everything else is delegated unchanged; pass it to
    :func:`~imc_actors.conference.open_conference` as ``repository``.
    """

    def __init__(self, repository: Any, observe: Callable[[float], None]) -> None:
        self._repository = repository
        self._observe = observe

    def apply_batch(self, writes: Sequence[Write]) -> None:
        started = time.perf_counter()
        self._repository.apply_batch(writes)
        self._observe(time.perf_counter() - started)

    def ping(self) -> None:
        self._repository.ping()

    def load_rooms(self) -> Any:
        return self._repository.load_rooms()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._repository, name)


# ---------------------------------------------------------------------------------- metrics
def _fields(record: Any) -> dict[str, Any]:
    return dataclasses.asdict(record) if dataclasses.is_dataclass(record) else dict(vars(record))


# (statistics field, metric name, counter?, help) for the SIP transport's record.
_TRANSPORT = (
    ("received", "imc_sip_received", True, "SIP datagrams and TCP frames read"),
    ("sent", "imc_sip_sent", True, "SIP datagrams and TCP frames written"),
    ("malformed", "imc_sip_malformed", True, "SIP messages that did not parse"),
    ("rejected", "imc_sip_rejected", True, "unparsable requests answered with a salvaged 4xx/5xx"),
    ("requests", "imc_sip_requests", True, "new SIP requests handed to the router"),
    ("transactions_refused", "imc_sip_transactions_refused", True,
     "new SIP requests answered 503 because max_transactions server transactions were live, "
     "or their kept responses reached max_transaction_bytes"),
    ("throttled", "imc_sip_throttled", True,
     "new SIP requests answered 503 because their source was over its flood budget (flood_rate)"),
    ("vias_refused", "imc_sip_vias_refused", True, "SIP requests refused 483 for more than max_vias Via header fields"),
    ("tcp_refused", "imc_sip_tcp_refused", True,
     "accepted TCP connections closed at once (tcp_max_connections or tcp_max_per_ip reached)"),
    ("tcp_outgoing_refused", "imc_sip_tcp_outgoing_refused", True,
     "outgoing TCP/TLS connections not opened because tcp_max_outgoing were open or opening"),
    ("tcp_accept_failures", "imc_sip_tcp_accept_failures", True,
     "TCP accepts that failed for lack of file descriptors or memory (retried)"),
    ("retransmissions_absorbed", "imc_sip_retransmissions_absorbed", True,
     "retransmitted requests answered from their transaction (never handled twice)"),
    ("handler_errors", "imc_sip_handler_errors", True, "requests whose handler raised (answered 500)"),
    ("stray_responses", "imc_sip_stray_responses", True, "responses matching no client transaction"),
    ("client_timeouts", "imc_sip_client_timeouts", True, "outgoing requests that timed out (Timer F)"),
    ("client_retransmissions", "imc_sip_client_retransmissions", True, "outgoing requests resent (Timer E)"),
    ("client_unreachable", "imc_sip_client_unreachable", True,
     "outgoing UDP requests ended 503 at once by an ICMP port/host unreachable (not Timer F)"),
    ("loops", "imc_sip_loops", True, "requests refused 482: they carried one of our own Via branches"),
    ("merged", "imc_sip_merged", True, "requests refused 482 as merged (the same request by another path)"),
    ("self_targets", "imc_sip_self_targets", True, "outgoing requests not sent: the next hop was this server"),
    ("dns_timeouts", "imc_sip_dns_timeouts", True,
     "outgoing requests not sent: their next hop's DNS name got no answer within dns_timeout"),
    ("server_transactions", "imc_sip_server_transactions", False, "live server transactions"),
    ("steered", "imc_sip_steered", True,
     "UDP requests passed to their room's home worker (serve --workers N)"),
    ("steered_in", "imc_sip_steered_in", True, "UDP requests another worker passed to this one"),
    ("steer_fallbacks", "imc_sip_steer_fallbacks", True,
     "UDP requests handled here because their home worker's relay socket was gone or full"),
    ("send_queue_full", "imc_sip_send_queue_full", True,
     "task-free sends over a TCP, TLS or WebSocket connection declined: its send queue was full"),
    ("send_queued", "imc_sip_send_queued_bytes", False,
     "bytes waiting in the send queues of the TCP, TLS and WebSocket connections"),
    ("transaction_bytes", "imc_sip_transaction_bytes", False,
     "bytes of responses the live server transactions keep for retransmissions"),
    ("client_transactions", "imc_sip_client_transactions", False, "live client transactions"),
    ("tcp_connections", "imc_sip_tcp_connections", False, "open SIP TCP and TLS connections"),
    ("ws_connections", "imc_sip_ws_connections", False, "open SIP WebSocket connections"),
    ("tls_connections", "imc_sip_tls_connections", False,
     "open SIP TLS connections (also counted in imc_sip_tcp_connections)"),
    ("tls_handshake_failures", "imc_sip_tls_handshake_failures", True,
     "accepted SIP TLS connections closed because the handshake failed or took too long"),
)  # fmt: skip


class _StatisticsCollector(Collector):
    """Reads the owners' ``statistics()`` records at scrape time."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        if m.conference is not None:
            yield from self._supervisor(m.conference.supervisor.statistics())
            yield from self._delivery(m.conference.delivery.statistics())
            limiter = getattr(m.conference, "chat_limiter", None)
            if limiter is not None:  # chat_rate is on
                yield CounterMetricFamily(
                    "imc_chat_throttled",
                    "chat messages answered 503 because their sender was over its chat budget "
                    "in the room (chat_rate)",
                    value=limiter.throttled,
                )
                yield GaugeMetricFamily(
                    "imc_chat_budgets",
                    "(room, sender) chat budgets tracked now (at most chat_rate_senders)",
                    value=len(limiter),
                )
        store = m.store
        if store is None and m.conference is not None:
            store = getattr(m.conference.supervisor, "store", None)
        if store is not None and hasattr(store, "statistics"):
            yield from self._store(store.statistics())
        leases = getattr(m.conference, "leases", None)
        if leases is not None:  # with config node (issue 13)
            yield from self._leases(leases.statistics())
        forwarded = getattr(getattr(m.conference, "forward", None), "forwarded", None)
        if forwarded is not None:
            yield CounterMetricFamily(
                "imc_forwarded_messages",
                "MESSAGEs forwarded to the node holding their room",
                value=forwarded,
            )
        if m.transport is not None:
            yield from self._transport(_fields(m.transport.statistics()))
        if m.authenticator is not None:
            yield from self._auth(m.authenticator.statistics())
        if m.registrar is not None:
            aors, bindings = m.registrar.statistics()
            yield GaugeMetricFamily(
                "imc_registrar_aors", "addresses of record with bindings (at most max_aors)", value=aors
            )
            yield GaugeMetricFamily("imc_registrar_bindings", "contact bindings held", value=bindings)
            yield CounterMetricFamily(
                "imc_registrar_full",
                "REGISTERs for a new address of record answered 503 because max_aors had bindings",
                value=m.registrar.full,
            )
        if m.fifo is not None:
            yield CounterMetricFamily(
                "imc_mi_requests", "MI FIFO requests answered", value=m.fifo.requests
            )
            yield CounterMetricFamily(
                "imc_mi_malformed",
                "MI FIFO input that was not a valid request",
                value=m.fifo.malformed,
            )

    @staticmethod
    def _auth(s: Any) -> Iterator[Metric]:
        yield _by_label(
            "imc_auth", "digest authentication outcomes (README: Users and passwords)", "result",
            [(result, getattr(s, result))
             for result in ("accepted", "challenged", "refused", "stale", "replayed", "malformed", "busy", "blocked")],
        )  # fmt: skip
        yield GaugeMetricFamily(
            "imc_auth_nonces", "nonces whose last nonce-count is kept", value=s.nonces
        )
        yield GaugeMetricFamily("imc_auth_users", "user rows cached", value=s.users)

    @staticmethod
    def _supervisor(s: Any) -> Iterator[Metric]:
        yield GaugeMetricFamily("imc_rooms", "rooms that exist (committed)", value=s.rooms)
        yield GaugeMetricFamily(
            "imc_members", "listed members of all rooms, invited included", value=s.members
        )
        yield GaugeMetricFamily(
            "imc_room_actors_running", "room actors running now", value=s.running_actors
        )
        yield GaugeMetricFamily(
            "imc_rooms_quarantined",
            "rooms refusing commands after repeated crashes",
            value=s.quarantined,
        )
        yield CounterMetricFamily(
            "imc_actor_restarts", "room actors restarted after a crash", value=s.restarts
        )
        yield CounterMetricFamily(
            "imc_room_commands", "commands and chats processed by room actors", value=s.processed
        )
        yield CounterMetricFamily(
            "imc_mailbox_full",
            "requests refused (503) because a room mailbox was full",
            value=s.mailbox_full,
        )
        yield GaugeMetricFamily(
            "imc_mailbox_depth_max", "deepest room mailbox now", value=s.max_mailbox_depth
        )

    @staticmethod
    def _delivery(d: Any) -> Iterator[Metric]:
        out = CounterMetricFamily(
            "imc_messages_out", "outgoing MESSAGEs queued for delivery, by kind", labels=["kind"]
        )
        for kind in ("notice", "relay", "reply"):
            out.add_metric([kind], d.by_kind.get(kind, 0))
        for kind, count in sorted(d.by_kind.items()):
            if kind not in ("notice", "relay", "reply"):
                out.add_metric([kind], count)
        yield out
        yield _by_label(
            "imc_deliveries", "finished deliveries, by result", "result",
            [("ok", d.ok), ("failed", d.failed)],
        )  # fmt: skip
        yield GaugeMetricFamily(
            "imc_delivery_queue_depth",
            "outgoing MESSAGEs queued in memory, every member's lane",
            value=d.queued,
        )
        yield GaugeMetricFamily(
            "imc_deliveries_in_flight", "outgoing MESSAGEs being sent now", value=d.in_flight
        )
        yield _by_label(
            "imc_pending", "notices for unreachable members: stored (queued), delivered later "
            "(flushed), given up after pending_ttl (expired) or over pending_max (dropped), "
            "not stored at pending_total_max (full)",
            "event",
            [("queued", d.stored), ("flushed", d.flushed), ("expired", d.expired),
             ("dropped", d.dropped), ("full", d.full)],
        )  # fmt: skip
        yield GaugeMetricFamily(
            "imc_pending_notices", "stored notices waiting for their member now", value=d.pending
        )
        yield _by_label(
            "imc_delivery_handoffs", "serve --workers N: notices handed to their member's worker "
            "(out), taken from another worker (in), or delivered here because their member's "
            "worker could not take them (fallback)",
            "event",
            [("out", d.handed_out), ("in", d.handed_in), ("fallback", d.handoff_fallbacks)],
        )  # fmt: skip
        yield CounterMetricFamily(
            "imc_delivery_bursts",
            "times a member's lane had delivery_burst notices waiting and sent that many at once",
            value=d.bursts,
        )
        yield GaugeMetricFamily(
            "imc_pending_members",
            "members with stored notices waiting now",
            value=d.waiting_members,
        )

    @staticmethod
    def _leases(s: Any) -> Iterator[Metric]:
        yield GaugeMetricFamily("imc_leases_held", "room leases this node holds", value=s.held)
        yield CounterMetricFamily(
            "imc_lease_renewals", "rounds that renewed every lease of this node", value=s.renewals
        )
        yield CounterMetricFamily(
            "imc_lease_renew_failures", "renewal rounds that failed", value=s.renew_failures
        )
        yield GaugeMetricFamily(
            "imc_leases_not_acquired",
            "stored rooms whose lease another node held at startup",
            value=s.not_acquired,
        )
        yield CounterMetricFamily(
            "imc_leases_taken_over",
            "stored rooms this node took over (failover)",
            value=s.taken_over,
        )
        yield CounterMetricFamily(
            "imc_leases_lost",
            "rooms this node's renewals found taken over by another node",
            value=s.lost,
        )

    @staticmethod
    def _store(s: Any) -> Iterator[Metric]:
        yield CounterMetricFamily("imc_store_commits", "changes made durable", value=s.commits)
        yield CounterMetricFamily(
            "imc_store_batches", "database transactions (group commits)", value=s.batches
        )
        yield CounterMetricFamily(
            "imc_store_commit_failures", "changes that could not be stored", value=s.failures
        )
        yield GaugeMetricFamily(
            "imc_store_pending", "changes queued or being written", value=s.pending
        )
        yield GaugeMetricFamily(
            "imc_store_available",
            "1 while the database answers, 0 while it fails",
            value=int(s.available),
        )
        yield CounterMetricFamily(
            "imc_store_inline_commits",
            "database transactions run on the event loop's thread, flushed by a helper process",
            value=getattr(s, "inline_commits", 0),
        )
        yield CounterMetricFamily(
            "imc_store_inline_declined",
            "transactions sent to the writer thread: the write lock or the connection was taken",
            value=getattr(s, "inline_declined", 0),
        )
        yield CounterMetricFamily(
            "imc_store_outages",
            "times the store became unavailable: the database did not answer, or its disk was full",
            value=getattr(s, "outages", 0),
        )
        if s.last_commit_seconds is not None:
            yield GaugeMetricFamily(
                "imc_store_last_batch_seconds",
                "duration of the last database transaction",
                value=s.last_commit_seconds,
            )

    @staticmethod
    def _transport(t: dict[str, Any]) -> Iterator[Metric]:
        for field, name, counter, doc in _TRANSPORT:
            if field in t:
                family = CounterMetricFamily if counter else GaugeMetricFamily
                yield family(name, doc, value=t[field])
        if "client_ok" in t and "client_failed" in t:
            yield _by_label(
                "imc_sip_client_requests", "outgoing SIP requests finished, by result", "result",
                [("ok", t["client_ok"]), ("failed", t["client_failed"])],
            )  # fmt: skip


class ServerMetrics:
    """Every metric of one server, in its own registry.

    Attach the parts as they start (:attr:`conference`, :attr:`store`, :attr:`transport`,
    :attr:`fifo`; any may stay None; the store is found as ``conference.supervisor.store``
    when not set); wrap the SIP request handler with :meth:`instrument`; hand
    :meth:`observe_commit` to :class:`TimedRepository`; serve :meth:`exposition`.
    ``start_char`` is ``imc_cmd_start_char`` (tells commands from chat).
    """

    def __init__(self, start_char: str = "#", node: str = "") -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        #: The ``node`` label of this server's series (config ``node``; ``""`` without one).
        self.node = node
        #: The other nodes' last snapshots: ``(node, stored at (wall clock), families)``, set
        #: by :func:`share_metrics`; shown while younger than :attr:`peer_max_age` seconds.
        self.peers: list[tuple[str, float, list[Metric]]] = []
        self.peer_max_age = 0.0
        self._start = start_char[:1].encode()
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self.conference: Any = None
        self.store: _HasStatistics | None = None
        self.transport: _HasStatistics | None = None
        self.fifo: Any = None
        self.authenticator: Any = None  # the digest Authenticator (auth on), see imc_actors.auth
        self.registrar: Any = None  # the Registrar (registrar on), see imc_actors.registrar
        self.messages_in = Counter(
            "imc_messages_in", "incoming MESSAGE requests, by kind (command or chat)",
            ["kind"], registry=self.registry,
        )  # fmt: skip
        for kind in ("command", "chat"):
            self.messages_in.labels(kind)
        self.sip_responses = Counter(
            "imc_sip_responses", "final responses to new SIP requests, by method and status code",
            ["method", "code"], registry=self.registry,
        )  # fmt: skip
        self.commit_seconds = Histogram(
            "imc_store_commit_seconds",
            "duration of each successful database transaction (one group commit)",
            buckets=COMMIT_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.registry.register(_StatisticsCollector(self))

    @classmethod
    def for_config(cls, config: Config) -> ServerMetrics:
        metrics = cls(config.imc_cmd_start_char, config.node or "")
        metrics.peer_max_age = PEER_INTERVALS * config.metrics_share_interval
        return metrics

    def observe_commit(self, seconds: float) -> None:
        """Record one durable commit's latency."""
        self.commit_seconds.observe(seconds)

    def count_request(self, request: _Request, reply: _Reply) -> None:
        """Count one request and the final response it got."""
        method = request.method if request.method in KNOWN_METHODS else "other"
        if method == "MESSAGE":
            kind = "command" if request.body.startswith(self._start) else "chat"
            self._child(self.messages_in, (kind,)).inc()
        self._child(self.sip_responses, (method, str(reply.code))).inc()

    def _child(self, metric: Any, labels: tuple[str, ...]) -> Any:
        """``metric.labels(*labels)``, remembered (prometheus_client looks it up under a lock)."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def instrument(self, handler: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
        """Wrap a transport request handler so every request and its response are counted.

        A handler that raises is counted as 500 (what the transport answers) and re-raised.
        The handler's task-free ``start`` path, when it has one, is counted the same way.
        """
        return _Counted(self, handler)

    def exposition(self, now: float | None = None) -> bytes:
        """The text exposition of every metric (call from the Trio thread), without the
        ``_created`` series prometheus_client adds to counters and histograms, each series
        labelled with its ``node``: this server's, then the peers' snapshots younger than
        :attr:`peer_max_age` at ``now`` (wall clock; default: the time now)."""
        now = time.time() if now is None else now
        fresh = [families for _, at, families in self.peers if now - at < self.peer_max_age]
        return generate_latest(_Merged(self.own(), *fresh))  # type: ignore[arg-type]

    def own(self) -> list[Metric]:
        """This server's families now, every sample labelled ``node``."""
        return [_labelled(metric, self.node) for metric in _WithoutCreated(self.registry).collect()]

    def snapshot(self) -> str:
        """:meth:`own` as compact JSON, what :func:`share_metrics` stores for the peers:
        ``[[name, type, help, unit, [[sample name, labels, value], ...]], ...]``."""
        families = [
            [
                m.name,
                m.type,
                m.documentation,
                m.unit,
                [[s.name, s.labels, s.value] for s in m.samples],
            ]
            for m in self.own()
        ]
        return json.dumps(families, separators=(",", ":"))


def _by_label(name: str, doc: str, label: str, counts: Iterable[tuple[str, float]]) -> Metric:
    """A counter family with one sample per ``(value of label, count)`` pair."""
    family = CounterMetricFamily(name, doc, labels=[label])
    for value, count in counts:
        family.add_metric([value], count)
    return family


def _labelled(metric: Metric, node: str) -> Metric:
    """``metric`` with ``node`` added to every sample's labels."""
    copy = Metric(metric.name, metric.documentation, metric.type, metric.unit)
    copy.samples = [
        sample._replace(labels={**sample.labels, "node": node}) for sample in metric.samples
    ]
    return copy


def families_of(snapshot: str) -> list[Metric]:
    """The families of a :meth:`ServerMetrics.snapshot` (ValueError when it is not one)."""
    try:
        families = []
        for name, typ, documentation, unit, samples in json.loads(snapshot):
            metric = Metric(str(name), str(documentation), str(typ), str(unit))
            for sample_name, labels, value in samples:
                metric.add_sample(
                    str(sample_name), {str(k): str(v) for k, v in labels.items()}, float(value)
                )
            families.append(metric)
        return families
    except (TypeError, ValueError, AttributeError) as exc:
        raise ValueError(f"not a metrics snapshot: {exc}") from None


class _Merged:
    """Families of several nodes as one registry: one family per name (the first seen gives
    its type and help), the samples of every node in it (each carries its ``node`` label)."""

    def __init__(self, *nodes: Iterable[Metric]) -> None:
        self._nodes = nodes

    def collect(self) -> Iterator[Metric]:
        merged: dict[str, Metric] = {}
        for families in self._nodes:
            for metric in families:
                into = merged.get(metric.name)
                if into is None:
                    merged[metric.name] = into = Metric(
                        metric.name, metric.documentation, metric.type, metric.unit
                    )
                elif into.type != metric.type:
                    continue  # another version's family of that name: not mixed in
                into.samples.extend(metric.samples)
        yield from merged.values()


async def share_metrics(
    metrics: ServerMetrics,
    store: Any,
    interval: float,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Every ``interval`` seconds until cancelled: store ``metrics``' snapshot as this node's
    row of the metrics table and read the other nodes' rows (younger than
    ``PEER_INTERVALS * interval``) into :attr:`ServerMetrics.peers`, through ``store`` (its
    writer thread). A failed round is logged; the peers already read age out meanwhile."""
    task_status.started()
    max_age = PEER_INTERVALS * interval
    metrics.peer_max_age = max_age
    while True:
        body = metrics.snapshot()  # in the Trio thread: the records belong to Trio tasks

        def exchange(
            repository: Any, body: str = body
        ) -> tuple[list[tuple[str, float, str]], str | None]:
            problem = None
            try:
                repository.share_metrics(body)
            except ValueError as exc:  # too large for the column: the peers go on reading
                problem = str(exc)
            return repository.peer_metrics(repository.now() - max_age), problem

        try:
            rows, problem = await store.read(exchange)
        except StoreError as exc:
            log.warning("sharing the metrics with the other nodes failed: %s", exc)
        else:
            if problem is not None:
                log.warning("this node's metrics are not shared: %s", problem)
            peers = []
            for node, updated, text in rows:
                try:
                    peers.append((node, updated, families_of(text)))
                except ValueError as exc:
                    log.warning("node %s's metrics snapshot is ignored: %s", node, exc)
            metrics.peers = peers
        await trio.sleep(interval)


class _WithoutCreated:
    """A registry's metrics without their ``<name>_created`` samples.

    Nobody asked for the creation timestamps (they double the counter lines), and
    ``prometheus_client.disable_created_metrics()`` would switch them off for the whole
    process, an embedding app's own metrics included; this drops them from our exposition only.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        for metric in self.registry.collect():
            created = metric.name + "_created"
            if any(sample.name == created for sample in metric.samples):
                kept = Metric(metric.name, metric.documentation, metric.type, metric.unit)
                kept.samples = [sample for sample in metric.samples if sample.name != created]
                metric = kept
            yield metric


class _Counted:
    """A request handler whose every answer is counted (see :meth:`ServerMetrics.instrument`)."""

    def __init__(self, metrics: ServerMetrics, handler: Callable[[Any, Any], Any]) -> None:
        self._metrics = metrics
        self._handler = handler
        self._start = getattr(handler, "start", None)

    async def __call__(self, request: Any, source: Any) -> Any:
        try:
            reply = await self._handler(request, source)
        except Exception:
            self._metrics.count_request(request, _Code(500))
            raise
        self._metrics.count_request(request, reply)
        return reply

    def start(self, request: Any, source: Any, respond: Callable[[Any], None]) -> bool:
        if self._start is None:
            return False
        count = self._metrics.count_request

        def counted(reply: Any) -> None:
            count(request, reply)
            respond(reply)

        try:
            return bool(self._start(request, source, counted))
        except Exception:
            count(request, _Code(500))
            raise


@dataclasses.dataclass(frozen=True, slots=True)
class _Code:
    code: int
