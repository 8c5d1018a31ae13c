"""For tests/test_console.py, tests/test_console_actions.py and bench/console_load.py: edge-console
as a real subprocess, a publisher playing a station, an operator logged in over HTTP, a listener
on the stations' command topics, and payloads shaped as the daemon sends them (DESIGN.md's MQTT
contract: JSON results and rejects, JPEGs with their part in a COM segment, retained stats)."""

from __future__ import annotations

import json
import os
import re
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timezone
from email.message import Message
from http.cookies import SimpleCookie
from pathlib import Path

import cv2
import numpy as np
import paho.mqtt.client as mqtt

from edge.jpeg_comment import with_comment

ROOT = Path(__file__).resolve().parents[1]
CALIBRATION_QUANTILES = {"q50": 0.31, "q90": 0.42, "q95": 0.47, "q99": 0.58, "q100": 0.66}


def iso_now(offset_s: float = 0.0) -> str:
    return datetime.fromtimestamp(time.time() + offset_s, timezone.utc).isoformat(timespec="milliseconds")


def part(station: str, part_id: str, frame_id: int | None, score: float | None, threshold: float = 0.8125, verdict: str | None = None, **extra) -> dict:
    """A result/reject message; the verdict follows the score unless given."""
    if verdict is None:
        verdict = "reject" if score is not None and score > threshold else "pass"
    rejected = verdict == "reject"
    return {
        "part_id": part_id,
        "frame_id": frame_id,
        "station": station,
        "capture_time": iso_now(),
        "verdict": verdict,
        "score": score,
        "threshold": threshold,
        "bundle_id": "metal_plate-20261201-abc123",
        "regions": [{"bbox": [120, 64, 40, 22], "area": 610, "peak": round((score or 0) * 1.2, 4)}] if rejected else [],
        "cause": "defect region" if rejected else None,
        **extra,
    }


def stats(station: str, parts: int = 100, rejects: int = 5, threshold: float = 0.8125, **extra) -> dict:
    return {
        "station": station,
        "parts": parts,
        "rejects": rejects,
        "reject_rate": rejects / parts if parts else 0.0,
        "fps": 24.5,
        "latency_ms": {"p50": 38.2, "p95": 51.0, "p99": 63.7},
        "dropped_frames": 3,
        "bad_frames": 1,
        "trigger_timeouts": 0,
        "bad_triggers": 0,
        "inference_errors": 0,
        "not_inspected": 2,
        "repeated_part_ids": 0,
        "uptime_s": 3600.5,
        "drift": {"recent_median": 0.33, "recent_q95": 0.49, "calibration_median": 0.31, "calibration_q95": 0.47, "median_shift_in_spreads": 0.125},
        "camera": "ok",
        "bundle_id": "metal_plate-20261201-abc123",
        "outbox_pending": 4,
        "audit_write_errors": 0,
        "audit_files_dropped": 0,
        "rejects_not_saved": 0,
        "results_dropped": 0,
        "disk_full": False,
        "broker_error": None,
        "calibration_quantiles": CALIBRATION_QUANTILES,
        "threshold": threshold,
        **extra,
    }


def jpeg(tag: dict | None, width: int = 320, height: int = 240, seed: int = 0, quality: int = 85, noise: int = 40) -> bytes:
    """A real JPEG (a textured part with a hot spot, as cv2 encodes it) with the daemon's COM
    segment holding `tag`, or without one. Less `noise`, smaller files (a heatmap's overlay is
    smoother than a raw frame)."""
    rng = np.random.default_rng(seed)
    image = np.full((height, width, 3), 90, np.uint8)
    image += rng.integers(0, max(1, noise), size=image.shape, dtype=np.uint8)
    cx, cy = int(rng.integers(40, width - 40)), int(rng.integers(40, height - 40))
    cv2.circle(image, (cx, cy), 25, (0, 0, 230), -1)
    cv2.putText(image, str(seed), (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (255, 255, 255), 2)
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    data = encoded.tobytes()
    return with_comment(data, tag) if tag is not None else data


def image_tag(station: str, message: dict) -> dict:
    return {key: message.get(key) for key in ("part_id", "frame_id", "verdict", "score", "threshold")} | {"station": station}


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate and its key in PEM (a CA file, or a client pair, for config checks)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edge-console test")])
    now = datetime.now(timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now.replace(year=now.year + 1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "test-cert.pem", directory / "test-key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return cert_path, key_path


class Publisher:
    """A station's side of the broker: publishes and waits for the broker's acknowledgement."""

    def __init__(self, port: int, client_id: str = "test-station", prefix: str = "edge"):
        self.prefix = prefix
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def send(self, station: str, kind: str, payload: bytes | str | dict, qos: int = 1, retain: bool = False, wait: bool = True) -> None:
        if isinstance(payload, dict):
            payload = json.dumps(payload)
        info = self.client.publish(f"{self.prefix}/{station}/{kind}", payload, qos=qos, retain=retain)
        if wait:
            info.wait_for_publish(10)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class ConsoleProcess:
    """`python -m edge.console` on a free loopback port (it says which in its log)."""

    def __init__(self, broker_port: int, work: Path, *extra: str):
        self.log: list[str] = []
        self.scheme = "http"
        command = [sys.executable, "-m", "edge.console", "--listen", "127.0.0.1:0", "--mqtt-port", str(broker_port), "--database", str(work / "history.sqlite3"), *extra]
        self.process = subprocess.Popen(command, cwd=ROOT, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self._reader = threading.Thread(target=self._read_log, daemon=True)
        self._reader.start()
        self.port = self._wait_for_port(30.0)
        self.url = f"{self.scheme}://127.0.0.1:{self.port}"
        # A console on https has a test's self-signed certificate: the tests check what it
        # serves, not who signed it.
        self._tls = ssl._create_unverified_context() if self.scheme == "https" else None

    def _read_log(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.log.append(line.rstrip("\n"))

    def _wait_for_port(self, timeout_s: float) -> int:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for line in list(self.log):
                found = re.search(r"serving (https?)://127\.0\.0\.1:(\d+)/", line)
                if found:
                    self.scheme = found.group(1)
                    return int(found.group(2))
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        self.process.kill()
        raise RuntimeError("edge-console did not start:\n" + "\n".join(self.log))

    def get(self, path: str, headers: dict | None = None) -> tuple[int, Message, bytes]:
        """Status, headers (looked up case-insensitively) and body; an HTTP error is an answer."""
        return self.request("GET", path, headers=headers)

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None) -> tuple[int, Message, bytes]:
        request = urllib.request.Request(self.url + path, data=body, headers=headers or {}, method=method)
        try:
            with urllib.request.urlopen(request, timeout=20, context=self._tls) as response:
                return response.status, response.headers, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.headers, error.read()

    def json(self, path: str) -> dict:
        status, _, body = self.get(path)
        assert status == 200, (path, status, body[:300])
        return json.loads(body)

    def metrics(self) -> str:
        return self.get("/metrics")[2].decode()

    def wait_for(self, predicate, timeout_s: float = 15.0, what: str = "condition"):
        """Polls `predicate()` until it returns something true; returns that."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}; console log:\n" + "\n".join(self.log[-30:]))

    def stop(self, timeout_s: float = 15.0) -> int:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._reader.join(2)
        return self.process.returncode


class Operator:
    """An operator without a browser: logs in with JSON, keeps the session cookie, and sends
    commands with the session's CSRF token (or, to test the refusals, without)."""

    def __init__(self, console: ConsoleProcess):
        self.console = console
        self.cookie: str | None = None  # the session cookie's value
        self.csrf: str | None = None
        self.set_cookie: str = ""  # the Set-Cookie header of the last login

    def login(self, username: str, password: str) -> tuple[int, dict, Message]:
        status, headers, body = self.console.request("POST", "/login", json.dumps({"username": username, "password": password}).encode(), {"Content-Type": "application/json"})
        answer = json.loads(body) if body else {}
        if status == 200:
            self.set_cookie = headers["Set-Cookie"]
            cookie = SimpleCookie()
            cookie.load(self.set_cookie)
            self.cookie = cookie["edge_session"].value
            self.csrf = answer["csrf"]
        return status, answer, headers

    def post(self, path: str, body: dict | bytes | None = None, csrf: str | None | bool = True, content_type: str = "application/json", headers: dict | None = None) -> tuple[int, dict]:
        """POST as this operator; csrf=True sends the session's token, a string sends that, False none."""
        sent = {"Content-Type": content_type, **(headers or {})}
        if self.cookie:
            sent["Cookie"] = f"edge_session={self.cookie}"
        token = self.csrf if csrf is True else csrf
        if token:
            sent["X-CSRF-Token"] = str(token)
        data = body if isinstance(body, bytes) else json.dumps(body if body is not None else {}).encode()
        status, _, answer = self.console.request("POST", path, data, sent)
        try:
            return status, json.loads(answer)
        except ValueError:
            return status, {"raw": answer.decode("utf-8", "replace")}

    def session(self) -> dict:
        status, _, body = self.console.request("GET", "/api/session", headers={"Cookie": f"edge_session={self.cookie}"} if self.cookie else {})
        assert status == 200, (status, body)
        return json.loads(body)


@dataclass(frozen=True)
class Heard:
    topic: str
    payload: bytes
    qos: int
    retain: bool


class CommandListener:
    """A client on the stations' command topics (recipe, teach, feedback), as a station
    subscribes to them, recording each message with the QoS and retain flag it came with."""

    KINDS = ("recipe", "teach", "feedback")

    def __init__(self, port: int, prefix: str = "edge", station: str = "+"):
        self.messages: list[Heard] = []
        self.lock = threading.Lock()
        subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-listener-{os.getpid()}-{id(self)}")
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *args: subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.client.subscribe([(f"{prefix}/{station}/{kind}", 1) for kind in self.KINDS])
        assert subscribed.wait(10), "the listener could not subscribe"

    def _on_message(self, client, userdata, message) -> None:
        with self.lock:
            self.messages.append(Heard(message.topic, bytes(message.payload), message.qos, bool(message.retain)))

    def heard(self) -> list[Heard]:
        with self.lock:
            return list(self.messages)

    def wait_for(self, count: int, timeout_s: float = 10.0) -> list[Heard]:
        """All messages so far once there are at least `count` (fewer after the timeout)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and len(self.heard()) < count:
            time.sleep(0.02)
        return self.heard()

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
