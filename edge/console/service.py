"""The console as one object: live model, history, MQTT ingest, metrics and the web app, wired
together, started and stopped in order. The CLI runs it under uvicorn; tests and the load bench
can run it in-process the same way."""

from __future__ import annotations

import ipaddress
import logging
import signal
import socket
import threading
from pathlib import Path

import uvicorn

from edge.console.auth import Auth
from edge.console.config import ConsoleConfig
from edge.console.counters import ConsoleCounters
from edge.console.history import History
from edge.console.ingest import Ingest
from edge.console.live import LiveModel
from edge.console.metrics import ConsoleCollector, registry
from edge.console.router import Router
from edge.console.web import create_app

log = logging.getLogger("edge.console")


class Console:
    def __init__(self, config: ConsoleConfig):
        self.config = config
        host, _ = config.listen_address
        self.loopback_only = _is_loopback(host)
        self.counters = ConsoleCounters()
        self.model = LiveModel()
        self.history = History(Path(config.database).resolve(), config.retention_days, config.retention_mb, self.counters)
        self.router = Router(config.mqtt.topic_prefix, self.model, self.history, self.counters)
        self.ingest = Ingest(config.mqtt, self.router, self.counters)
        self.auth = Auth(config.users_path, config.session_hours, self.counters)
        self.registry = registry(ConsoleCollector(self.model, self.counters, self.history, self.ingest.connected.is_set, self.auth.sessions.count))
        self.stopping = threading.Event()  # ends the event streams, so a stop does not wait on browsers
        self.app = create_app(self)

    def start(self) -> None:
        self.history.start()
        self.ingest.start()

    def stop(self) -> None:
        self.stopping.set()
        self.ingest.stop()
        self.history.stop()

    def health(self) -> dict:
        """What the pages' health line shows."""
        history = self.history.health
        return {
            "broker_connected": self.ingest.connected.is_set(),
            "broker": f"{self.config.mqtt.host}:{self.config.mqtt.port}",
            "broker_error": self.ingest.last_error or None,
            "history_ok": history.ok,
            "history_error": history.error,
            "malformed": self.counters.malformed.total(),
        }


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def listening_socket(host: str, port: int) -> socket.socket:
    """Bound and listening before uvicorn starts, so a port in use is our clear error (not
    uvicorn's exit from inside its loop), and port 0 tells us the port it got."""
    family, kind, proto, _, address = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


class _Server(uvicorn.Server):
    """uvicorn, with our stop flag raised as soon as it is asked to exit: open event streams end
    at their next tick instead of holding the shutdown to its timeout."""

    def __init__(self, config: uvicorn.Config, console: Console):
        super().__init__(config)
        self.console = console

    def handle_exit(self, sig, frame) -> None:
        self.console.stopping.set()
        super().handle_exit(sig, frame)


def serve(console: Console, sock: socket.socket) -> None:
    """Run the web app on `sock` until SIGINT or SIGTERM (uvicorn's handlers); the caller
    starts and stops the console around it."""
    if threading.current_thread() is threading.main_thread():
        # After its shutdown uvicorn raises the stop signal again, for the handler that was there
        # before it: with the default one SIGTERM would kill us before the history is flushed.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda signum, frame: console.stopping.set())
    https = console.config.https
    config = uvicorn.Config(
        console.app,
        lifespan="off",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=3,
        server_header=False,
        ssl_certfile=https.cert_file if https else None,
        ssl_keyfile=https.key_file if https else None,
    )
    _Server(config, console).run(sockets=[sock])
