"""One MQTT session per station: status with a will, rejects through the durable outbox,
results, heatmaps, retained stats, and the trigger subscription (paho-mqtt 2.x, v2 callbacks)."""

from __future__ import annotations

import json
import logging
import queue
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass

import paho.mqtt.client as mqtt

from edge.config import MqttConfig
from edge.config_fields import read_secret
from edge.counters import Counter, ThrottledLog
from edge.outbox import NotSaved, Outbox, PendingMessage

log = logging.getLogger("edge.publisher")

# After a reconnect paho re-sends, by itself, the rejects it held when the connection dropped;
# the flush waits (at most this long) for the broker to have them before it sends newer ones.
HELD_RESEND_WAIT_S = 30.0
DISCONNECTED = -1  # not a message id: wakes whoever waits on acknowledgements


def make_client(config: MqttConfig, client_id: str) -> mqtt.Client:
    """A paho client with the config's credentials and TLS (the daemon's sessions, edge-inspect teach)."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311, clean_session=True)
    if config.username:
        client.username_pw_set(config.username, config.password)
    if config.tls is not None:
        tls = config.tls
        key_password = read_secret(tls.key_password_file)
        client.tls_set(ca_certs=tls.ca_file, certfile=tls.cert_file, keyfile=tls.key_file, keyfile_password=key_password, tls_version=ssl.PROTOCOL_TLS_CLIENT)
        client.tls_insecure_set(tls.insecure_skip_hostname_check)
    return client


class PublishCounters:
    """Added to from station threads, the delivery thread and paho's network thread."""

    def __init__(self) -> None:
        self.rejects_published = Counter()
        self.rejects_acknowledged = Counter()
        self.rejects_late = Counter()
        self.results_dropped = Counter()  # results while the broker was away (rejects are kept instead)
        self.rejects_not_saved = Counter()  # rejects the full disk could not hold: kept in memory until acknowledged
        self.connect_failures = Counter()
        self.last_error = ""  # replaced whole, never updated in place


@dataclass(frozen=True)
class Topics:
    """A station's topics, under `<topic_prefix>/<station>` (DESIGN.md's MQTT contract)."""

    base: str
    status: str
    reject: str
    result: str
    heatmap: str
    stats: str
    trigger: str
    alarm: str
    preview: str
    recipe: str
    feedback: str
    teach: str

    @classmethod
    def under(cls, base: str) -> Topics:
        return cls(base, *(f"{base}/{name}" for name in ("status", "reject", "result", "heatmap", "stats", "trigger", "alarm", "preview", "recipe", "feedback", "teach")))


class StationPublisher:
    def __init__(self, config: MqttConfig, station: str, outbox: Outbox):
        self.config = config
        self.topics = Topics.under(f"{config.topic_prefix}/{station}")
        self.outbox = outbox
        # Subscribed command topics (name under the station -> handler), in the order to subscribe.
        self.commands: dict[str, Callable[[bytes], None]] = {}
        self.counters = PublishCounters()
        # Guards in_flight, by_mid and unsaved; notified when an acknowledgement removes one.
        self.condition = threading.Condition()
        self.in_flight: dict[int, int] = {}  # outbox sequence -> paho message id, handed to paho
        self.by_mid: dict[int, int] = {}  # paho message id -> outbox sequence
        # Rejects the outbox could not write (disk full even after dropping old audit records):
        # in memory until acknowledged, so only a power cut during a full disk can lose one.
        self.unsaved: dict[int, PendingMessage] = {}
        # Paho calls its callbacks holding its own locks: taking ours there would deadlock against
        # a publish() that holds ours, so on_publish and on_disconnect only queue the message id
        # (DISCONNECTED for a lost connection) and the acknowledgement thread does the rest.
        # None stops that thread.
        self.acknowledged: queue.SimpleQueue[int | None] = queue.SimpleQueue()
        self.connections: queue.SimpleQueue[int | None] = queue.SimpleQueue()  # to flush after; None stops
        self.connected = threading.Event()
        # Set once a connection's flush of the outbox is done: only then does a new reject go
        # straight out. Before, it would overtake older rejects still waiting on disk.
        self.live = threading.Event()
        self.send_lock = threading.Lock()  # orders the flush's last look at the outbox against a new reject
        self.connections_made = Counter()  # a flush stops when its connection is no longer the latest
        self.connect_failed = ThrottledLog(log, logging.ERROR, first=1, every=30)  # wrong credentials stay wrong
        self.results_dropped_log = ThrottledLog(log, logging.WARNING, first=1, every=1000)  # restarted per outage
        self.threads = [
            threading.Thread(target=self._acknowledgement_loop, name=f"acks-{station}", daemon=True),
            threading.Thread(target=self._flush_loop, name=f"flush-{station}", daemon=True),
        ]
        self.alarms: dict | None = None  # the last set of active alarms (edge/alarms.py)
        self.stopping = False
        self.answered = False  # the broker answered this connection's CONNECT (accepted or refused)
        self.client = self._client(station)

    def _client(self, station: str) -> mqtt.Client:
        config = self.config
        client = make_client(config, f"{config.client_id or 'edge-inspect-' + socket.gethostname()}-{station}")
        client.will_set(self.topics.status, "offline", qos=1, retain=True)
        # Backoff between reconnects, so a refused login is not retried in a tight loop, capped
        # low because it only resets on a successful connection: with a 30 s cap, a broker that
        # bounced a few times in a row left rejects on disk for half a minute after it was back
        # (bench/faults.py: 8 restarts 3 s apart, no reconnect in the last 40 s); with a 4 s cap
        # a broker up for 3 s between outages was still missed. 2 s: back within about 2 s.
        client.reconnect_delay_set(min_delay=1, max_delay=2)
        client.max_inflight_messages_set(100)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        return client

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        for thread in self.threads:
            thread.start()
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
        self.connected.clear()
        self.acknowledged.put(DISCONNECTED)  # wakes a flush still waiting for held rejects
        self.acknowledged.put(None)
        self.connections.put(None)
        for thread in self.threads:
            thread.join(timeout_s)

    # -- callbacks (paho's network thread) ----------------------------------------------------
    def _connection_failed(self, error: str) -> None:
        self.counters.connect_failures.add()
        self.counters.last_error = error
        self.connect_failed("%s: %s; retrying with backoff", self.topics.base, error)

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        self.answered = True
        if reason_code.is_failure:
            self._connection_failed(f"broker refused the connection: {reason_code}; check mqtt.username and the password file")
            return
        connection = self.connections_made.add()
        self.results_dropped_log.reset()
        self.connected.set()
        self.counters.last_error = ""
        log.info("%s: connected to %s:%d", self.topics.base, self.config.host, self.config.port)
        client.publish(self.topics.status, "online", qos=1, retain=True)
        if self.alarms is not None:  # what changed while the broker was away
            client.publish(self.topics.alarm, json.dumps(self.alarms), qos=1, retain=True)
        if self.commands:  # one SUBSCRIBE: the broker sends a retained recipe before any trigger that follows
            client.subscribe([(f"{self.topics.base}/{name}", 1) for name in self.commands])
        # Not here on paho's network thread: paho re-sends what it held only after this callback
        # returns, and acknowledgements arrive on this thread.
        self.connections.put(connection)

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
        self.acknowledged.put(DISCONNECTED)  # a flush waiting for held rejects gives up on this connection

    def _on_message(self, client, userdata, message) -> None:
        name = message.topic[len(self.topics.base) + 1 :] if message.topic.startswith(self.topics.base + "/") else None
        handler = self.commands.get(name) if name is not None else None
        if handler is not None:
            try:
                handler(bytes(message.payload))
            except Exception:  # a handler bug must not take paho's network thread (and every publish) down
                log.exception("%s: handling a message on %s failed", self.topics.base, message.topic)

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        self.acknowledged.put(mid)

    # -- delivery threads ---------------------------------------------------------------------
    def _acknowledgement_loop(self) -> None:
        """Each PUBACK deletes its reject from the outbox (a status or result mid matches none)."""
        while (mid := self.acknowledged.get()) is not None:
            with self.condition:
                self.condition.notify_all()
                sequence = self.by_mid.pop(mid, None)
                if sequence is None:
                    continue
                # The file goes before the in-flight entry, under the lock: a flush reading the
                # outbox meanwhile must not take an acknowledged reject for one never handed over.
                self.outbox.done(sequence)
                del self.in_flight[sequence]
                self.unsaved.pop(sequence, None)
                self.condition.notify_all()
            self.counters.rejects_acknowledged.add()

    def _flush_loop(self) -> None:
        while (connection := self.connections.get()) is not None:
            self._flush_outbox(connection)

    def _still_connected(self, connection: int) -> bool:
        return self.connected.is_set() and self.connections_made.value == connection

    def _flush_outbox(self, connection: int) -> None:
        """After a connect: first what paho held when the last connection dropped (it re-sends
        those itself), then what waited on disk or in memory, oldest first and marked late; then
        new rejects may go straight out. Rejects saved while the flush runs are sent by it, in
        their turn, so none overtakes an older one."""
        with self.condition:
            self.condition.wait_for(lambda: not self.in_flight or not self._still_connected(connection), HELD_RESEND_WAIT_S)
        sent_up_to, first = 0, True
        while self._still_connected(connection):
            with self.send_lock:
                waiting = self._waiting(after=sent_up_to)
                if not waiting:
                    self.live.set()
                    return
            for message in waiting:
                if first and not message.payload.get("late"):
                    message = PendingMessage(message.sequence, message.topic, {**message.payload, "late": True})
                    self.counters.rejects_late.add()
                if not self._send_durable(message):
                    return  # the connection is gone; the next one flushes again
                sent_up_to = message.sequence
            first = False

    def _waiting(self, after: int) -> list[PendingMessage]:
        """Rejects on disk or in memory, above sequence `after`, that paho does not have yet,
        oldest first."""
        with self.condition:
            in_memory = [m for m in self.unsaved.values() if m.sequence > after]
            handed = set(self.in_flight)
        return sorted((m for m in [*self.outbox.pending(after), *in_memory] if m.sequence not in handed), key=lambda m: m.sequence)

    def _send_durable(self, message: PendingMessage) -> bool:
        """Hand a reject to paho (once); False if the connection is gone. Paho keeps a message
        published without a connection and sends it after the reconnect, so it counts as handed.
        The message id is recorded under the same lock as the publish, so the acknowledgement
        thread always finds it."""
        with self.condition:
            if message.sequence in self.in_flight:
                return True
            info = self.client.publish(message.topic, json.dumps(message.payload), qos=1)
            if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
                return False
            self.in_flight[message.sequence] = info.mid
            self.by_mid[info.mid] = message.sequence
        self.counters.rejects_published.add()
        return info.rc == mqtt.MQTT_ERR_SUCCESS

    # -- what the station and the daemon call -------------------------------------------------
    def undelivered(self) -> int:
        """Rejects not yet acknowledged by the broker."""
        with self.condition:
            in_memory = len(self.unsaved)
        return len(self.outbox) + in_memory

    def wait_delivered(self, timeout_s: float) -> bool:
        """Wait until the broker has every reject (or timeout_s passes); True if it has."""
        with self.condition:
            return self.condition.wait_for(lambda: not len(self.outbox) and not self.unsaved, timeout_s)

    def save_unsaved(self) -> int:
        """At shutdown: one more try to put in-memory rejects on disk; returns how many are lost."""
        with self.condition:
            messages = list(self.unsaved.values())
        lost = 0
        for message in messages:
            try:
                self.outbox.save(message)
            except OSError:
                lost += 1
        return lost

    def publish_reject(self, payload: dict) -> bool:
        """Send a reject through the outbox; False if the disk refused it and it is only in memory
        (delivered while the daemon lives, lost if it dies first)."""
        saved = True
        try:
            message = self.outbox.put(self.topics.reject, {**payload, "late": False})
        except NotSaved as error:
            saved = False
            message = error.message
            with self.condition:
                self.unsaved[message.sequence] = message
            self.counters.rejects_not_saved.add()
            log.error("%s: reject of part %s not saved to the outbox (%s); kept in memory until the broker has it. Free space in the state directory", self.topics.base, payload.get("part_id"), error)
        with self.send_lock:
            if self.live.is_set():
                self._send_durable(message)
        return saved

    def publish_result(self, payload: dict) -> None:
        if not self.connected.is_set():
            self.counters.results_dropped.add()
            self.results_dropped_log(
                "%s: broker away, result of part %s not published (%d in all; rejects wait in the outbox)",
                self.topics.base,
                payload.get("part_id"),
                self.counters.results_dropped.value,
            )
            return
        self.client.publish(self.topics.result, json.dumps(payload), qos=1)

    def publish_heatmap(self, jpeg: bytes) -> None:
        if self.connected.is_set() and jpeg:
            self.client.publish(self.topics.heatmap, jpeg, qos=0)

    def publish_preview(self, jpeg: bytes) -> None:
        if self.connected.is_set() and jpeg:
            self.client.publish(self.topics.preview, jpeg, qos=0)

    def publish_alarms(self, alarms: dict) -> None:
        """The set of active alarms, retained; kept for the next connect if the broker is away."""
        self.alarms = alarms
        if self.connected.is_set():
            self.client.publish(self.topics.alarm, json.dumps(alarms), qos=1, retain=True)

    def publish_stats(self, stats: dict) -> None:
        if self.connected.is_set():
            self.client.publish(self.topics.stats, json.dumps(stats), qos=0, retain=True)
