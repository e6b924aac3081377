"""Non-INVITE transactions (RFC 3261 §17.1.2 and §17.2.2) as pure state machines.

Nothing here reads a clock, sleeps or touches a socket. The driver (the transport) passes
the current time into every call, asks :meth:`deadline` when the machine next wants
attention, and calls :meth:`on_timer` once that time has come; the machines answer with the
bytes to (re)send. Times are floats in seconds on any monotonic clock (``trio.current_time()``
in production, plain numbers in tests).

Timer names follow RFC 3261 §17: the client retransmits on Timer E, gives up on Timer F and
absorbs response retransmissions until Timer K; the server absorbs request retransmissions
until Timer J.
"""

from __future__ import annotations

from .message import Request, Response

__all__ = [
    "T1",
    "T2",
    "T4",
    "ClientTransaction",
    "ServerTransaction",
    "client_key",
    "server_key",
]

#: RFC 3261 §17.1.1.1 defaults, in seconds: RTT estimate, maximum retransmit interval,
#: maximum time a message stays in the network.
T1 = 0.5
T2 = 4.0
T4 = 5.0

TRYING = "trying"
PROCEEDING = "proceeding"
COMPLETED = "completed"
TERMINATED = "terminated"

_MAGIC_COOKIE = "z9hG4bK"


def server_key(request: Request) -> tuple[str | int | None, ...]:
    """The key that matches a request to its server transaction (RFC 3261 §17.2.3).

    With an RFC 3261 branch (``z9hG4bK...``): ``("3261", branch, top Via sent-by, method)``.
    Otherwise the RFC 2543 fallback: ``("2543", Call-ID, CSeq number, CSeq method, From tag,
    To tag, Request-URI, top Via text)``. A retransmission of a request yields an equal key.
    """
    branch = request.branch
    if branch is not None and branch.startswith(_MAGIC_COOKIE):
        return ("3261", branch, request.via_sent_by, request.method)
    return (
        "2543",
        request.call_id,
        request.cseq,
        request.cseq_method,
        request.from_tag,
        request.to_tag,
        request.uri,
        request.header("Via"),
    )


def client_key(response: Response) -> tuple[str | None, str]:
    """The key that matches a response to its client transaction (RFC 3261 §17.1.3):
    ``(top Via branch, CSeq method)``. A request sent with ``build_request(method, ...,
    branch=b)`` has the key ``(b, method)``."""
    return (response.branch, response.cseq_method)


class ServerTransaction:
    """A non-INVITE server transaction (RFC 3261 §17.2.2, figure 8).

    Created in ``trying`` when a new request arrives. ``state`` is one of ``"trying"``,
    ``"proceeding"`` (a provisional response was sent), ``"completed"`` (a final response was
    sent; retransmissions of the request are answered with it until Timer J) and
    ``"terminated"`` (forget the transaction). ``last_response`` holds the bytes of the last
    response sent, or None. ``reliable`` is True for TCP (Timer J is then 0).
    """

    __slots__ = ("reliable", "state", "last_response", "_t1", "_timer_j")

    def __init__(self, reliable: bool, now: float, *, t1: float = T1) -> None:
        self.reliable = reliable
        self.state = TRYING
        self.last_response: bytes | None = None
        self._t1 = t1
        self._timer_j: float | None = None

    def respond(self, data: bytes, code: int, now: float) -> bool:
        """Record that the TU sends response ``data`` with status ``code`` at ``now``.

        Returns True when ``data`` should go on the wire: always in ``trying`` and
        ``proceeding``; never in ``completed``/``terminated``, where RFC 3261 §17.2.2 says
        further responses from the TU are discarded. A final response (>= 200) moves to
        ``completed`` and starts Timer J (64*T1 unreliable, 0 reliable).
        """
        if self.state not in (TRYING, PROCEEDING):
            return False
        self.last_response = data
        if code < 200:
            self.state = PROCEEDING
        else:
            self.state = COMPLETED
            self._timer_j = now + (0.0 if self.reliable else 64 * self._t1)
        return True

    def on_retransmission(self, now: float) -> bytes | None:
        """A retransmission of the request arrived at ``now``: the bytes to send back.

        None in ``trying`` (no response yet; the TU is still working) and in ``terminated``;
        the last provisional in ``proceeding``; the final response in ``completed``.
        """
        if self.state in (PROCEEDING, COMPLETED):
            return self.last_response
        return None

    def deadline(self) -> float | None:
        """When :meth:`on_timer` next needs calling (Timer J in ``completed``), else None."""
        return self._timer_j if self.state == COMPLETED else None

    def on_timer(self, now: float) -> None:
        """Fire the timers due at ``now``: Timer J moves ``completed`` to ``terminated``."""
        if self.state == COMPLETED and self._timer_j is not None and now >= self._timer_j:
            self.state = TERMINATED
            self._timer_j = None

    def __repr__(self) -> str:
        return f"<ServerTransaction {self.state} reliable={self.reliable}>"


class ClientTransaction:
    """A non-INVITE client transaction (RFC 3261 §17.1.2, figure 6).

    ``data`` is the request the caller has just sent at ``now``; the transaction says when to
    send it again (it is dropped, ``b""``, once a final response arrived). ``state`` is ``"trying"`` (no response yet), ``"proceeding"`` (a
    provisional arrived), ``"completed"`` (a final arrived; its retransmissions are absorbed
    until Timer K) or ``"terminated"``. ``final_code``/``final_reason`` hold the final
    response's status and reason phrase (None until one arrives); ``timed_out`` is True when
    Timer F fired first (the RFC's 408 to the TU). ``reliable`` is True for TCP: no Timer E,
    Timer K is 0.
    """

    __slots__ = (
        "data",
        "reliable",
        "state",
        "final_code",
        "final_reason",
        "timed_out",
        "retransmissions",
        "_t2",
        "_t4",
        "_interval",
        "_timer_e",
        "_timer_f",
        "_timer_k",
    )

    def __init__(
        self,
        data: bytes,
        reliable: bool,
        now: float,
        t1: float = T1,
        t2: float = T2,
        t4: float = T4,
    ) -> None:
        self.data = data
        self.reliable = reliable
        self.state = TRYING
        self.final_code: int | None = None
        self.final_reason: str | None = None
        self.timed_out = False
        #: How many times :meth:`on_timer` returned ``data`` for resending.
        self.retransmissions = 0
        self._t2 = t2
        self._t4 = t4
        self._interval = t1
        self._timer_e: float | None = None if reliable else now + t1
        self._timer_f: float | None = now + 64 * t1
        self._timer_k: float | None = None

    def deadline(self) -> float | None:
        """When :meth:`on_timer` next needs calling: the earliest of Timer E and F while
        waiting for a final response, Timer K in ``completed``, None once ``terminated``."""
        if self.state == COMPLETED:
            return self._timer_k
        if self.state == TERMINATED:
            return None
        assert self._timer_f is not None  # armed until the transaction leaves trying/proceeding
        if self._timer_e is None:
            return self._timer_f
        return min(self._timer_e, self._timer_f)

    def on_timer(self, now: float) -> bytes | None:
        """Fire the timers due at ``now``; return ``data`` when it must be resent.

        Timer F (64*T1 after the request) terminates with ``timed_out``. Timer E resends and
        re-arms: doubling from T1 up to T2 in ``trying``, T2 in ``proceeding``. Timer K ends
        ``completed``. Calling early, or again for the same instant, does nothing.
        """
        if self.state in (TRYING, PROCEEDING):
            assert self._timer_f is not None
            if now >= self._timer_f:
                self.state = TERMINATED
                self.timed_out = True
                self._timer_e = self._timer_f = None
                return None
            if self._timer_e is not None and now >= self._timer_e:
                if self.state == TRYING:
                    self._interval = min(2 * self._interval, self._t2)
                else:
                    self._interval = self._t2
                self._timer_e = now + self._interval
                self.retransmissions += 1
                return self.data
        elif self.state == COMPLETED:
            if self._timer_k is not None and now >= self._timer_k:
                self.state = TERMINATED
                self._timer_k = None
        return None

    def on_response(self, code: int, now: float, reason: str | None = None) -> bool:
        """A response with status ``code`` (and ``reason`` phrase) matched this transaction.

        Returns True when the TU should see it: a provisional or the first final response.
        A 1xx moves ``trying`` to ``proceeding``; a final response (>= 200) records
        ``final_code``/``final_reason``, stops Timers E and F and moves to ``completed``
        with Timer K (T4 unreliable, 0 reliable). Retransmitted finals are absorbed (False).
        """
        if self.state not in (TRYING, PROCEEDING):
            return False
        if code < 200:
            self.state = PROCEEDING
            return True
        self.state = COMPLETED
        self.final_code = code
        self.final_reason = reason
        self.data = b""  # never sent again: do not keep it for Timer K
        self._timer_e = self._timer_f = None
        self._timer_k = now + (0.0 if self.reliable else self._t4)
        return True

    def __repr__(self) -> str:
        return f"<ClientTransaction {self.state} reliable={self.reliable}>"
