"""The libtorrent session an engine runs: made with its tracker CA, listening where told.

``new_session`` makes it. libtorrent 2.x has no CA setting: its TLS context
loads OpenSSL's default verify paths (``SSL_CERT_FILE``/``SSL_CERT_DIR``) once,
when the session is made; they name the CA (and no directory) for that call
only, then are put back (tests/test_security_tracker_tls.py).

``check_listening`` checks where it listens. libtorrent never fails to start
for want of a port: a port in use makes it try the next ones and then any free
port, and an address the host does not have leaves it listening nowhere, both
with one log line. For a node that is a swarm no peer reaches (the firewall
and the announced port name the port asked for), found later as pulls that all
come from the origin. So a session that is not listening where it was told to
stops the service at start, with one line that says what to do. Port 0 ("any
free port") accepts what it got.
"""

from __future__ import annotations

import os

import libtorrent as lt

from krill.clierror import ConfigError
from krill.swarm.settings import SwarmSettings, listen_interface, session_settings

__all__ = ["PeerPortUnavailable", "check_listening", "new_session"]

# OpenSSL's default verify paths come from these when set (X509_get_default_cert_*_env).
_CA_ENV = ("SSL_CERT_FILE", "SSL_CERT_DIR")


class PeerPortUnavailable(ConfigError):
    """The session could not listen for peers where the settings say (a setting that
    cannot be used: the CLI shows it as one line)."""


def new_session(settings: SwarmSettings) -> lt.session:
    """libtorrent's session; with ``settings.tracker_ca``, https announces trust only it."""
    params = session_settings(settings)
    if settings.tracker_ca is None:
        return lt.session(params)
    saved = {name: os.environ.get(name) for name in _CA_ENV}
    os.environ["SSL_CERT_FILE"] = str(settings.tracker_ca)
    os.environ["SSL_CERT_DIR"] = os.devnull  # not a directory: no certificate found there
    try:
        return lt.session(params)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def check_listening(session: lt.session, settings: SwarmSettings) -> None:
    """Raise PeerPortUnavailable unless ``session`` listens on the asked host and port."""
    asked = listen_interface(settings.listen_host, settings.peer_port)
    if not session.is_listening():
        raise PeerPortUnavailable(
            f"cannot listen for peers on {asked}: no interface of this host has that "
            "address; use one it has, or 0.0.0.0 (--peer-host)"
        )
    got = int(session.listen_port())
    if settings.peer_port and got != settings.peer_port:
        raise PeerPortUnavailable(
            f"cannot listen for peers on {asked}: another process listens there "
            f"(libtorrent would take port {got} instead, which no firewall rule expects); "
            "stop it or choose another --peer-port"
        )
