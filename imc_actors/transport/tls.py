"""SIP over TLS (RFC 3261 §26.2, RFC 5630): ``tls:`` listeners and connections, on Python's
:mod:`ssl` through ``trio.SSLStream``.

A TLS connection is a TCP connection whose stream is a ``trio.SSLStream``: it is framed, bounded
and pooled exactly as TCP is (:mod:`.tcp`, :mod:`.connections`), so ``tcp_max_connections``,
``tcp_max_per_ip``, ``tcp_max_buffer`` and ``tcp_idle_timeout`` count TLS connections too. Only
the handshake is TLS's own: it runs in the connection's reader task, after the connection caps
admitted it (a connection beyond them is closed before any cryptography is done), and must end
within :data:`HANDSHAKE_TIMEOUT` seconds (or ``tcp_idle_timeout`` when shorter). A handshake
that fails or times out closes the connection; it is counted (``handshake_failures``) and
logged at debug level, since a port scanner or a client that does not trust our certificate
makes one.

:func:`server_context` loads ``tls_cert``/``tls_key`` for our listeners; :func:`client_context`
is what outgoing connections verify the other side with (``tls_ca``, or the system's trusted
CAs; ``tls_verify = false`` turns verification off). Both raise :class:`TlsSetupError` naming the
parameter at fault, which :class:`~imc_actors.config.Config` turns into ``invalid <name>``.
"""

from __future__ import annotations

import logging
import os
import ssl

import trio

from .sendqueue import DEFAULT_SEND_QUEUE
from .tcp import (
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_BUFFER,
    TcpConnection,
    TcpListener,
    bind_listeners,
)

__all__ = [
    "HANDSHAKE_TIMEOUT",
    "TlsConnection",
    "TlsListener",
    "TlsSetupError",
    "client_context",
    "open_tls_connection",
    "server_context",
]

log = logging.getLogger(__name__)

#: Seconds a TLS handshake may take (accepted or opened), at most ``tcp_idle_timeout``.
HANDSHAKE_TIMEOUT = 10.0


def _not_a_file(path: str) -> str:
    """Why ``path`` is no PEM file to read: it is not there, or it is a directory (or other
    non-file)."""
    if os.path.isdir(path):
        return f"{path} is a directory, not a PEM file"
    if os.path.exists(path):
        return f"{path} is not a regular file"
    return f"no such file: {path}"


class TlsSetupError(ValueError):
    """A TLS file or setting that cannot be used: ``param`` names it, ``why`` says why."""

    def __init__(self, param: str, why: str) -> None:
        super().__init__(f"{param}: {why}")
        self.param = param
        self.why = why


def server_context(cert: str, key: str) -> ssl.SSLContext:
    """The context our ``tls:`` listeners accept with: certificate chain ``cert`` and private
    key ``key`` (PEM files), TLS 1.2 or later, no client certificate asked for."""
    for param, path in (("tls_cert", cert), ("tls_key", key)):
        if not os.path.isfile(path):
            raise TlsSetupError(param, _not_a_file(path))
        if not os.access(path, os.R_OK):
            raise TlsSetupError(param, f"cannot read {path}")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        raise TlsSetupError(
            "tls_cert",
            f"{cert} and {key} are not a PEM certificate and its private key ({exc.reason or exc})",
        ) from None
    except OSError as exc:
        raise TlsSetupError(
            "tls_cert", f"cannot read {exc.filename or cert}: {exc.strerror}"
        ) from None
    return context


def client_context(ca: str | None = None, verify: bool = True) -> ssl.SSLContext:
    """The context outgoing TLS connections use: the server's certificate must chain to a CA in
    ``ca`` (a PEM file; None: the system's trusted CAs) and name the host we connect to (its
    IP address when the URI has one); ``verify=False`` accepts any certificate."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if ca is not None:
        if not os.path.isfile(ca):
            raise TlsSetupError("tls_ca", _not_a_file(ca))
        try:
            context.load_verify_locations(cafile=ca)
        except (ssl.SSLError, OSError) as exc:
            raise TlsSetupError("tls_ca", f"{ca} holds no PEM CA certificate ({exc})") from None
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class TlsConnection(TcpConnection):
    """One SIP-over-TLS connection: a :class:`~.tcp.TcpConnection` over a ``trio.SSLStream``
    (``socket`` is the TCP socket under it). The reader does the handshake first
    (:meth:`handshake`); ``listener`` is the :class:`TlsListener` that accepted it, which
    counts failed handshakes."""

    transport = "tls"

    def __init__(
        self,
        stream: trio.SSLStream[trio.SocketStream],
        *,
        outgoing: bool,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        max_buffer: int = DEFAULT_MAX_BUFFER,
        listener: TlsListener | None = None,
        send_queue: int = DEFAULT_SEND_QUEUE,
    ) -> None:
        super().__init__(
            stream,
            outgoing=outgoing,
            idle_timeout=idle_timeout,
            max_buffer=max_buffer,
            socket=stream.transport_stream.socket,
            send_queue=send_queue,
        )
        self.listener = listener
        self.handshaken = False

    async def handshake(self) -> bool:
        """The TLS handshake, within :data:`HANDSHAKE_TIMEOUT` (or ``idle_timeout`` when
        shorter); False (the connection is then closed) when it fails or takes too long.
        Checkpoints."""
        if self.handshaken:
            await trio.lowlevel.checkpoint()
            return True
        limit = min(HANDSHAKE_TIMEOUT, self.idle_timeout)
        why = f"no handshake within {limit:g} s"
        with trio.move_on_after(limit):
            try:
                await self.stream.do_handshake()  # type: ignore[attr-defined]
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                cause = exc.__cause__ or exc
                why = str(getattr(cause, "reason", None) or cause or type(cause).__name__)
            else:
                self.handshaken = True
                return True
        if self.listener is not None:
            self.listener.handshake_failures += 1
        log.debug("tls %s: handshake failed (%s); closing", self.peer, why)
        return False


class TlsListener(TcpListener):
    """Bound TCP listening socket(s) for one ``tls:`` listen address: every accepted stream
    becomes a :class:`TlsConnection` with ``context`` (:func:`server_context`), whose reader
    does the handshake. ``handshake_failures`` counts the handshakes that failed or timed
    out."""

    transport = "tls"

    def __init__(
        self,
        listeners: list[trio.SocketListener],
        idle_timeout: float,
        max_buffer: int = DEFAULT_MAX_BUFFER,
        send_queue: int = DEFAULT_SEND_QUEUE,
        *,
        context: ssl.SSLContext,
    ) -> None:
        super().__init__(listeners, idle_timeout, max_buffer, send_queue)
        self.context = context
        self.handshake_failures = 0

    @classmethod
    async def bind_tls(
        cls,
        host: str,
        port: int,
        *,
        context: ssl.SSLContext,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        max_buffer: int = DEFAULT_MAX_BUFFER,
        send_queue: int = DEFAULT_SEND_QUEUE,
        reuse_port: bool = False,
    ) -> TlsListener:
        """Bind and listen on ``host:port`` (port 0 = ephemeral; ``reuse_port``: see
        :func:`~.tcp.bind_listeners`). Raises :class:`OSError` naming the address.
        Checkpoints (name resolution)."""
        listeners = await bind_listeners("tls", host, port, reuse_port=reuse_port)
        return cls(listeners, idle_timeout, max_buffer, send_queue, context=context)

    def connection(self, stream: trio.SocketStream) -> TlsConnection:
        """The TLS connection an accepted ``stream`` becomes (not handshaken yet)."""
        return TlsConnection(
            trio.SSLStream(stream, self.context, server_side=True),
            outgoing=False,
            idle_timeout=self.idle_timeout,
            max_buffer=self.max_buffer,
            listener=self,
            send_queue=self.send_queue,
        )


async def open_tls_connection(
    host: str,
    port: int,
    *,
    context: ssl.SSLContext,
    server_hostname: str,
    timeout: float,
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    max_buffer: int = DEFAULT_MAX_BUFFER,
    send_queue: int = DEFAULT_SEND_QUEUE,
) -> TlsConnection:
    """Connect to ``host:port`` and complete the TLS handshake within ``timeout`` seconds,
    verifying the certificate for ``server_hostname`` as ``context`` says.

    Raises :class:`OSError` when refused, unreachable, timed out, or when the handshake fails
    (an untrusted certificate, one for another name, no TLS at all). Checkpoints; cancellation
    abandons the attempt.
    """
    stream: trio.SocketStream | None = None
    try:
        with trio.move_on_after(timeout) as scope:
            stream = await trio.open_tcp_stream(host, port)
            tls = trio.SSLStream(stream, context, server_hostname=server_hostname)
            await tls.do_handshake()
            conn = TlsConnection(
                tls,
                outgoing=True,
                idle_timeout=idle_timeout,
                max_buffer=max_buffer,
                send_queue=send_queue,
            )
            conn.handshaken = True
            return conn
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        if stream is not None:
            await trio.aclose_forcefully(stream)
        cause = exc.__cause__ or exc
        raise OSError(f"tls handshake with {host}:{port} failed: {cause}") from exc
    except BaseException:
        if stream is not None:
            await trio.aclose_forcefully(stream)
        raise
    if stream is not None:
        await trio.aclose_forcefully(stream)
    assert scope.cancelled_caught
    raise TimeoutError(f"tls connect to {host}:{port} timed out")
