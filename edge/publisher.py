"""One MQTT session per station: status with a will, rejects through the durable outbox,
results, heatmaps, retained stats, and the trigger subscription (paho-mqtt 2.x, v2 callbacks)."""
from __future__ import annotations

import json
import logging
import socket
import ssl
import threading
import time
from dataclasses import dataclass

import paho.mqtt.client as mqtt

from edge.config import MqttConfig
from edge.outbox import NotSaved, Outbox, PendingMessage

log = logging.getLogger("edge.publisher")

# After a reconnect paho re-sends, by itself, the rejects it held when the connection dropped;
# the flush waits (at most this long) for the broker to have them before it sends newer ones.
HELD_RESEND_WAIT_S = 30.0


@dataclass
class PublishCounters:
    rejects_published: int = 0
    rejects_acknowledged: int = 0
    rejects_late: int = 0
    results_dropped: int = 0  # results while the broker was away (rejects are kept instead)
    rejects_not_saved: int = 0  # rejects the full disk could not hold: kept in memory until acknowledged
    connect_failures: int = 0
    last_error: str = ""


@dataclass(frozen=True)
class Topics:
    base: str

    @property
    def status(self) -> str:
        return f"{self.base}/status"

    @property
    def reject(self) -> str:
        return f"{self.base}/reject"

    @property
    def result(self) -> str:
        return f"{self.base}/result"

    @property
    def heatmap(self) -> str:
        return f"{self.base}/heatmap"

    @property
    def stats(self) -> str:
        return f"{self.base}/stats"

    @property
    def trigger(self) -> str:
        return f"{self.base}/trigger"


class StationPublisher:
    def __init__(self, config: MqttConfig, station: str, outbox: Outbox, on_trigger=None):
        self.config = config
        self.topics = Topics(f"{config.topic_prefix}/{station}")
        self.outbox = outbox
        self.on_trigger = on_trigger
        self.counters = PublishCounters()
        self.lock = threading.Lock()
        # Outbox sequence -> paho's message info. Acknowledgements are read from the info objects
        # (reap) rather than matched in on_publish: paho calls on_publish holding its own message
        # lock, and taking ours there would deadlock against a concurrent publish().
        self.in_flight: dict[int, mqtt.MQTTMessageInfo] = {}
        # Rejects the outbox could not write (disk full even after dropping old audit records):
        # in memory until acknowledged, so only a power cut during a full disk can lose one.
        self.unsaved: dict[int, PendingMessage] = {}
        self.connected = threading.Event()
        # Set once a connection's flush of the outbox is done: only then does a new reject go
        # straight out. Before, it would overtake older rejects still waiting on disk.
        self.live = threading.Event()
        self.send_lock = threading.Lock()  # orders the flush's last look at the outbox against a new reject
        self.connection = 0  # counts connections: a flush stops when its connection is gone
        self.results_dropped_this_outage = 0
        client_id = f"{config.client_id or 'edge-inspect-' + socket.gethostname()}-{station}"
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311, clean_session=True)
        self.client.will_set(self.topics.status, "offline", qos=1, retain=True)
        if config.username:
            self.client.username_pw_set(config.username, config.password)
        if config.tls is not None:
            tls = config.tls
            key_password = None
            if tls.key_password_file:
                with open(tls.key_password_file) as handle:
                    key_password = handle.read().rstrip("\r\n")
            self.client.tls_set(ca_certs=tls.ca_file, certfile=tls.cert_file, keyfile=tls.key_file, keyfile_password=key_password, tls_version=ssl.PROTOCOL_TLS_CLIENT)
            self.client.tls_insecure_set(tls.insecure_skip_hostname_check)
        # Backoff between reconnects, so a refused login is not retried in a tight loop, capped
        # low because it only resets on a successful connection: with a 30 s cap, a broker that
        # bounced a few times in a row left rejects on disk for half a minute after it was back
        # (bench/faults.py: 8 restarts 3 s apart, no reconnect in the last 40 s); with a 4 s cap
        # a broker up for 3 s between outages was still missed. 2 s: back within about 2 s.
        self.client.reconnect_delay_set(min_delay=1, max_delay=2)
        self.client.max_inflight_messages_set(100)
        self.stopping = False
        self.answered = False  # the broker answered this connection's CONNECT (accepted or refused)
        self.client.on_connect = self._on_connect
        self.client.on_connect_fail = self._on_connect_fail
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        self.client.connect_async(self.config.host, self.config.port, keepalive=self.config.keepalive_s)
        self.client.loop_start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Say offline ourselves (the will is only for unclean ends) and leave."""
        self.stopping = True
        if self.connected.is_set():
            info = self.client.publish(self.topics.status, "offline", qos=1, retain=True)
            try:
                info.wait_for_publish(timeout=timeout_s)
            except (RuntimeError, ValueError):
                pass
        self.client.disconnect()
        self.client.loop_stop()

    # -- callbacks (paho's network thread) ----------------------------------------------------
    def _connection_failed(self, error: str) -> None:
        self.counters.connect_failures += 1
        self.counters.last_error = error
        # Wrong credentials stay wrong: say it on the first try, the tenth, then every hundredth.
        if self.counters.connect_failures in (1, 10) or self.counters.connect_failures % 100 == 0:
            log.error("%s: %s (attempt %d; retrying with backoff)", self.topics.base, error, self.counters.connect_failures)

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        self.answered = True
        if reason_code.is_failure:
            self._connection_failed(f"broker refused the connection: {reason_code}; check mqtt.username and the password file")
            return
        with self.lock:
            self.connection += 1
            connection = self.connection
        self.results_dropped_this_outage = 0
        self.connected.set()
        self.counters.last_error = ""
        log.info("%s: connected to %s:%d", self.topics.base, self.config.host, self.config.port)
        client.publish(self.topics.status, "online", qos=1, retain=True)
        client.subscribe(self.topics.trigger, qos=1)
        # Not here on paho's network thread: paho re-sends what it held only after this callback
        # returns, and acknowledgements are read on this thread.
        threading.Thread(target=self._flush_outbox, args=(connection,), name=f"flush-{self.topics.base}", daemon=True).start()

    def _on_connect_fail(self, client, userdata) -> None:
        self._connection_failed(f"could not connect to the broker at {self.config.host}:{self.config.port} (unreachable, or the TLS handshake failed: check mqtt.tls)")

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        if self.stopping:
            log.info("%s: disconnected from broker on shutdown", self.topics.base)
        elif self.connected.is_set():
            log.warning("%s: disconnected from broker (%s); rejects wait in the outbox", self.topics.base, reason_code)
        elif not self.answered:
            # A broker that rejects the client certificate closes the TLS session before CONNACK.
            self._connection_failed(
                f"could not connect to the broker at {self.config.host}:{self.config.port}: it closed the connection before answering "
                "(a client certificate it does not trust, or a TLS listener reached without TLS: check mqtt.tls)"
            )
        self.answered = False
        self.live.clear()
        self.connected.clear()

    def _on_message(self, client, userdata, message) -> None:
        if self.on_trigger is not None and message.topic == self.topics.trigger:
            self.on_trigger(bytes(message.payload))

    # -- publishing ---------------------------------------------------------------------------
    def _send_durable(self, message: PendingMessage) -> bool:
        """Hand a reject to paho (once); False if the connection is gone. Paho keeps a message
        published without a connection and sends it after the reconnect, so it counts as handed."""
        with self.lock:
            if message.sequence in self.in_flight:
                return True
        info = self.client.publish(message.topic, json.dumps(message.payload), qos=1)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            return False
        with self.lock:
            self.in_flight[message.sequence] = info
        self.counters.rejects_published += 1
        return info.rc == mqtt.MQTT_ERR_SUCCESS

    def reap(self) -> None:
        """Delete acknowledged rejects from the outbox."""
        with self.lock:
            done = [sequence for sequence, info in self.in_flight.items() if info.is_published()]
            for sequence in done:
                # The file goes before the in-flight entry, under the lock: a flush listing the
                # outbox meanwhile must not take an acknowledged reject for one never handed over.
                self.outbox.done(sequence)
                del self.in_flight[sequence]
                self.unsaved.pop(sequence, None)
        self.counters.rejects_acknowledged += len(done)

    def undelivered(self) -> int:
        """Rejects not yet acknowledged by the broker (a directory listing: not per part)."""
        self.reap()
        with self.lock:
            in_memory = len(self.unsaved)
        return len(self.outbox) + in_memory

    def save_unsaved(self) -> int:
        """At shutdown: one more try to put in-memory rejects on disk; returns how many are lost."""
        with self.lock:
            messages = list(self.unsaved.values())
        lost = 0
        for message in messages:
            try:
                self.outbox.save(message)
            except OSError:
                lost += 1
        return lost

    def _waiting(self, after: int) -> list[PendingMessage]:
        """Rejects on disk or in memory, above sequence `after`, that paho does not have yet,
        oldest first."""
        with self.lock:
            in_memory = [m for m in self.unsaved.values() if m.sequence > after]
            handed = set(self.in_flight)
        return sorted((m for m in [*self.outbox.pending(after), *in_memory] if m.sequence not in handed), key=lambda m: m.sequence)

    def _flush_outbox(self, connection: int) -> None:
        """After a connect: first what paho held when the last connection dropped (it re-sends
        those itself), then what waited on disk or in memory, oldest first and marked late; then
        new rejects may go straight out. Rejects saved while the flush runs are sent by it, in
        their turn, so none overtakes an older one."""

        def still_connected() -> bool:
            return self.connected.is_set() and self.connection == connection

        deadline = time.monotonic() + HELD_RESEND_WAIT_S
        while still_connected() and time.monotonic() < deadline:
            self.reap()
            with self.lock:
                if not self.in_flight:
                    break
            time.sleep(0.05)
        sent_up_to, first = 0, True
        while still_connected():
            with self.send_lock:
                waiting = self._waiting(after=sent_up_to)
                if not waiting:
                    self.live.set()
                    return
            for message in waiting:
                if first and not message.payload.get("late"):
                    message = PendingMessage(message.sequence, message.topic, {**message.payload, "late": True})
                    self.counters.rejects_late += 1
                if not self._send_durable(message):
                    return  # the connection is gone; the next one flushes again
                sent_up_to = message.sequence
            first = False

    def publish_reject(self, payload: dict) -> bool:
        """Send a reject through the outbox; False if the disk refused it and it is only in memory
        (delivered while the daemon lives, lost if it dies first)."""
        self.reap()
        saved = True
        try:
            message = self.outbox.put(self.topics.reject, {**payload, "late": False})
        except NotSaved as error:
            saved = False
            message = error.message
            with self.lock:
                self.unsaved[message.sequence] = message
            self.counters.rejects_not_saved += 1
            log.error("%s: reject of part %s not saved to the outbox (%s); kept in memory until the broker has it. Free space in the state directory", self.topics.base, payload.get("part_id"), error)
        with self.send_lock:
            if self.live.is_set():
                self._send_durable(message)
        return saved

    def publish_result(self, payload: dict) -> None:
        if not self.connected.is_set():
            self.counters.results_dropped += 1
            self.results_dropped_this_outage += 1
            dropped = self.results_dropped_this_outage
            if dropped in (1, 10) or dropped % 1000 == 0:  # said at every outage, not flooded in a long one
                log.warning(
                    "%s: broker away, result of part %s not published (%d in this outage, %d in all; rejects wait in the outbox)",
                    self.topics.base, payload.get("part_id"), dropped, self.counters.results_dropped,
                )
            return
        self.client.publish(self.topics.result, json.dumps(payload), qos=1)

    def publish_heatmap(self, jpeg: bytes) -> None:
        if self.connected.is_set():
            self.client.publish(self.topics.heatmap, jpeg, qos=0)

    def publish_stats(self, stats: dict) -> None:
        if self.connected.is_set():
            self.client.publish(self.topics.stats, json.dumps(stats), qos=0, retain=True)
