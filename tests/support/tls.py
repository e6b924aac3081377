"""Test certificates made at test time with ``trustme``: one test CA, a certificate for the
server (127.0.0.1) and one for test UAs, as files (what ``tls_cert``/``tls_key``/``tls_ca``
read) and as ``ssl`` contexts (what :class:`~tests.support.ua.TestUA` speaks TLS with)."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import trustme

__all__ = ["TlsFiles", "make_tls"]


@dataclass(frozen=True)
class TlsFiles:
    """``ca``: the test CA's certificate (PEM); ``cert``/``key``: the server's, for
    ``127.0.0.1`` and ``localhost``; ``ua``: ``(client context trusting the CA, server context
    with a UA certificate for 127.0.0.1)``; ``authority``: the CA, to issue more."""

    ca: str
    cert: str
    key: str
    ua: tuple[ssl.SSLContext, ssl.SSLContext]
    authority: trustme.CA

    def config(self) -> dict[str, str]:
        """The server's TLS settings."""
        return {"tls_cert": self.cert, "tls_key": self.key, "tls_ca": self.ca}


def make_tls(folder: Path) -> TlsFiles:
    """A fresh CA and certificates, written into ``folder``."""
    authority = trustme.CA()
    server = authority.issue_cert("127.0.0.1", "localhost")
    ca = folder / "ca.pem"
    cert = folder / "server.pem"
    key = folder / "server.key"
    authority.cert_pem.write_to_path(str(ca))
    server.private_key_pem.write_to_path(str(key))
    cert.write_bytes(b"".join(blob.bytes() for blob in server.cert_chain_pems))
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    authority.configure_trust(client)
    ua_server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(ua_server)
    return TlsFiles(str(ca), str(cert), str(key), (client, ua_server), authority)
