"""TLS for the links between workers and for nimbus's API, with the standard :mod:`ssl` module.

Both ends present a certificate and verify the other's against the cluster's CA (mutual
TLS). Give the workers a CA of their own: any certificate it signed is trusted as a
worker's, so host names are not checked by default (one certificate may serve every
worker). Inside TLS the links still run the secret handshake of
:mod:`streamflow.transport.handshake`, so a certificate alone does not join a topology.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from streamflow.errors import ConfigError


def contexts(cert: str | Path, key: str | Path, ca: str | Path,
             check_hostname: bool = False) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """The (server, client) contexts of a worker's links from PEM files: its certificate
    chain, its private key and the CA that signed its peers' certificates. A file that is
    missing or does not hold what it should raises :class:`~streamflow.errors.ConfigError`
    in one line. ``check_hostname``: also require the peer's certificate to name the host
    the link dials."""
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    for context in (server, client):
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.verify_mode = ssl.CERT_REQUIRED
        try:
            context.load_cert_chain(str(cert), str(key))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"TLS certificate {cert} with key {key}: {_reason(exc)}") from None
        try:
            context.load_verify_locations(cafile=str(ca))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"TLS CA {ca}: {_reason(exc)}") from None
    client.check_hostname = check_hostname
    return server, client


def _reason(exc: OSError | ssl.SSLError) -> str:
    return exc.strerror or getattr(exc, "reason", None) or str(exc)


def api_contexts(cert: str | None, key: str | None, ca: str | None
                 ) -> tuple[ssl.SSLContext | None, ssl.SSLContext | None]:
    """The (server, client) contexts of nimbus's HTTPS API: the server's from its certificate
    chain and key (None without them: plain HTTP), the client's (for forwarding to the
    leader) checking certificates against ``ca``, else the system's CAs (None when neither
    is given). Clients of the API need no certificate; the API token authenticates them."""
    if (cert is None) != (key is None):
        raise ConfigError("give --tls-cert and --tls-key together, or neither")
    server = None
    if cert is not None and key is not None:
        server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            server.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"TLS certificate {cert} with key {key}: {_reason(exc)}") from None
    client = None
    if ca is not None or server is not None:
        try:
            client = ssl.create_default_context(cafile=ca)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"TLS CA {ca}: {_reason(exc)}") from None
    return server, client
