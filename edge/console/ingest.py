"""The console's MQTT session: subscribe to every station under the prefix, hand each message to
the router (paho-mqtt 2.x, v2 callbacks, as edge/publisher.py), and publish the operators'
commands (recipe, teach, feedback), each confirmed by the broker's PUBACK before the page is told
it was sent.

Its client id is its own (a station's id would kick the station off the broker), and its session
is clean: history is best effort, and a console that was away does not make the broker queue
thousands of parts for it.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import threading

import paho.mqtt.client as mqtt

from edge.console.config import MqttSettings
from edge.console.counters import ConsoleCounters
from edge.console.router import Router
from edge.counters import ThrottledLog

log = logging.getLogger("edge.console.ingest")

# Reconnect backoff: paho doubles the wait from min to max and starts again after a success.
# The console is no PLC: a slower retry against a broker that refuses us is kinder to it.
RECONNECT_MIN_S, RECONNECT_MAX_S = 1, 30
KEEPALIVE_S = 30
PUBLISH_TIMEOUT_S = 5.0  # an operator's command the broker has not acknowledged by then failed


class PublishError(RuntimeError):
    """A command the broker did not take; str() says why and what the operator should know."""


class Ingest:
    def __init__(self, settings: MqttSettings, router: Router, counters: ConsoleCounters):
        self.settings = settings
        self.router = router
        self.counters = counters
        self.topic = f"{settings.topic_prefix.rstrip('/')}/+/#"
        self.connected = threading.Event()
        self.last_error = ""  # replaced whole; shown on the pages
        self._failed_log = ThrottledLog(log, logging.ERROR, first=1, every=30)
        self._crash_log = ThrottledLog(log, logging.ERROR, first=3, every=1000)
        self._stopping = False
        self._answered = False
        # PUBACKs, matched by message id through paho's on_publish (never by polling). An ack may
        # come before publish() has returned the id: it waits in _early until the id is claimed.
        self._acks_lock = threading.Lock()
        self._waiting: dict[int, threading.Event] = {}
        self._early: set[int] = set()
        self._abandoned: set[int] = set()  # ids given up on: a late ack must not confirm a later message
        self.client = self._client()

    def _client(self) -> mqtt.Client:
        settings = self.settings
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"edge-console-{socket.gethostname()}-{os.getpid()}", protocol=mqtt.MQTTv311, clean_session=True)
        if settings.username:
            client.username_pw_set(settings.username, settings.password)
        if settings.tls is not None:
            tls = settings.tls
            client.tls_set(ca_certs=tls.ca_file, certfile=tls.cert_file, keyfile=tls.key_file, tls_version=ssl.PROTOCOL_TLS_CLIENT)
        client.reconnect_delay_set(min_delay=RECONNECT_MIN_S, max_delay=RECONNECT_MAX_S)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        return client

    def start(self) -> None:
        self.client.connect_async(self.settings.host, self.settings.port, keepalive=KEEPALIVE_S)
        self.client.loop_start()

    def stop(self) -> None:
        self._stopping = True
        self.client.disconnect()
        self.client.loop_stop()
        self.connected.clear()

    # -- operators' commands (web threads) --------------------------------------------------------
    def publish(self, topic: str, payload: bytes, retain: bool, timeout_s: float = PUBLISH_TIMEOUT_S) -> None:
        """Publish at QoS 1 and wait for the broker's PUBACK; PublishError if it is not connected or
        does not confirm in time. A command that failed is withdrawn from paho's queue: it must
        not reach the station after a reconnect, minutes after the operator was told it failed."""
        where = f"the broker at {self.settings.host}:{self.settings.port}"
        if not self.connected.is_set():
            raise PublishError(f"not connected to {where} ({self.last_error or 'connecting'}); nothing was sent")
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            self._withdraw(info.mid)
            raise PublishError(f"{where} cannot be reached now ({mqtt.error_string(info.rc)}); nothing was sent")
        event = threading.Event()
        with self._acks_lock:
            if info.mid in self._early:
                self._early.discard(info.mid)
                return
            self._waiting[info.mid] = event
        if event.wait(timeout_s):
            return
        with self._acks_lock:
            self._waiting.pop(info.mid, None)
            if event.is_set():  # the ack came as we gave up
                return
            self._abandoned.add(info.mid)
        self._withdraw(info.mid)
        raise PublishError(f"{where} did not confirm the message within {timeout_s:g} s; it may not have reached the station: check the station before sending it again")

    def _withdraw(self, mid: int) -> None:
        # paho has no public call for this; its queue is a dict under its own lock.
        client = self.client
        with client._out_message_mutex:
            message = client._out_messages.pop(mid, None)
            if message is not None and message.state == mqtt.mqtt_ms_wait_for_puback and client._inflight_messages > 0:
                client._inflight_messages -= 1

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        # Called with paho's message lock held: take only ours, and nothing of paho's.
        with self._acks_lock:
            event = self._waiting.pop(mid, None)
            if event is not None:
                event.set()
            elif mid in self._abandoned:
                self._abandoned.discard(mid)
            else:
                self._early.add(mid)

    def _forget_acks(self) -> None:
        # After a disconnect no ack for an earlier message can come (paho resends what is still queued).
        with self._acks_lock:
            self._early.clear()
            self._abandoned.clear()

    # -- paho's network thread -----------------------------------------------------------------
    def _failed(self, error: str) -> None:
        self.counters.broker_connect_failures.add()
        self.last_error = error
        self._failed_log("%s; retrying with backoff (%d-%d s)", error, RECONNECT_MIN_S, RECONNECT_MAX_S)

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        self._answered = True
        if reason_code.is_failure:
            self._failed(f"broker at {self.settings.host}:{self.settings.port} refused the console: {reason_code}; check mqtt.username and the password file")
            return
        self.counters.broker_connects.add()
        self.last_error = ""
        self._failed_log.reset()
        self.connected.set()
        log.info("connected to %s:%d, subscribing to %s", self.settings.host, self.settings.port, self.topic)
        # QoS 1: results and rejects are sent at QoS 1 and the broker downgrades to ours.
        client.subscribe(self.topic, qos=1)

    def _on_connect_fail(self, client, userdata) -> None:
        self._failed(f"could not connect to the broker at {self.settings.host}:{self.settings.port} (unreachable, or the TLS handshake failed: check mqtt.tls)")

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        if self._stopping:
            log.info("disconnected from the broker on shutdown")
        elif self.connected.is_set():
            log.warning("disconnected from the broker (%s); the pages show the last known state", reason_code)
            self.last_error = f"disconnected: {reason_code}"
        elif not self._answered:
            self._failed(
                f"the broker at {self.settings.host}:{self.settings.port} closed the connection before answering "
                "(a client certificate it does not trust, or a TLS listener reached without TLS: check mqtt.tls)"
            )
        self._answered = False
        self.connected.clear()
        self._forget_acks()

    def _on_message(self, client, userdata, message) -> None:
        # Nothing a payload does may stop the network thread: paho would stop delivering.
        try:
            topic = message.topic
        except UnicodeDecodeError:
            self.counters.malformed.add(("topic", "not_utf8"))
            return
        try:
            self.router.handle(topic, bytes(message.payload))
        except Exception:
            self.counters.malformed.add(("any", "crash"))
            self._crash_log("message on %r could not be handled", topic[:200], exc_info=True)
