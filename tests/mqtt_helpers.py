"""A real Mosquitto broker on a free loopback port, and a real subscriber, for the tests."""
from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_mosquitto() -> str | None:
    return shutil.which("mosquitto") or next((p for p in ("/usr/sbin/mosquitto",) if Path(p).exists()), None)


class Broker:
    def __init__(self, directory: Path, port: int | None = None, persistent: bool = False, listener: str = "allow_anonymous true\n"):
        """persistent: queued messages of persistent sessions survive a restart (saved on SIGTERM).
        listener: the listener's settings (TLS, passwords, ACL); anonymous plain MQTT by default."""
        self.binary = find_mosquitto()
        self.port = port or free_port()
        self.config = directory / "mosquitto.conf"
        # Started as root, Mosquitto drops to its own user and then cannot save its database
        # in a test's folder; `user root` keeps it as it is (ignored when not root).
        # A persistent broker stands for the PLC's: it must hold a burst of late rejects for a
        # slow subscriber (Mosquitto's default drops QoS 1 messages past 1000 queued per client).
        persistence = (
            f"persistence true\npersistence_location {directory}/\nuser root\nmax_queued_messages 100000\n" if persistent else "persistence false\n"
        )
        self.config.write_text(f"listener {self.port} 127.0.0.1\n{listener}{persistence}")
        self.log = directory / "mosquitto.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> "Broker":
        self.process = subprocess.Popen([self.binary, "-c", str(self.config)], stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not start on port {self.port}: {self.log.read_text()}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(5)


@dataclass
class Received:
    topic: str
    payload: bytes
    retain: bool
    received: float = 0.0  # time.monotonic() on arrival


@dataclass
class Subscriber:
    port: int
    topic: str = "edge/#"
    messages: list[Received] = field(default_factory=list)
    client_id: str | None = None  # with persistent=True, the broker queues QoS 1 messages while we are away
    persistent: bool = False
    username: str | None = None
    password: str | None = None
    tls: dict | None = None  # keyword arguments of paho's tls_set

    def __post_init__(self):
        self.lock = threading.Lock()
        self.ready = threading.Event()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id or f"test-subscriber-{free_port()}", clean_session=not self.persistent
        )
        self.client.reconnect_delay_set(min_delay=0.2, max_delay=1)
        if self.username:
            self.client.username_pw_set(self.username, self.password)
        if self.tls:
            self.client.tls_set(**self.tls)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *args: self.ready.set()
        self.client.connect("127.0.0.1", self.port)
        self.client.loop_start()
        assert self.ready.wait(10), "subscriber could not subscribe"

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        client.subscribe(self.topic, qos=1)

    def _on_message(self, client, userdata, message):
        with self.lock:
            self.messages.append(Received(message.topic, bytes(message.payload), bool(message.retain), time.monotonic()))

    def on(self, suffix: str) -> list[Received]:
        with self.lock:
            return [m for m in self.messages if m.topic.endswith("/" + suffix)]

    def wait_for(self, suffix: str, count: int, timeout: float = 60.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(self.on(suffix)) < count:
            time.sleep(0.05)
        return self.on(suffix)

    def reached(self, suffix: str, count: int, timeout: float = 60.0) -> bool:
        """Whether `count` messages on `suffix` arrived within `timeout` (wait_for's list is true
        with a single message, so `assert wait_for(...)` would not check the count)."""
        return len(self.wait_for(suffix, count, timeout)) >= count

    def publish(self, topic: str, payload) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(5)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
