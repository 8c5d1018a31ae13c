"""The systemd watchdog against the real daemon process and a real notify socket: pinged while a
camera merely waits, withheld once an engine call hangs, so systemd restarts the service."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2

from tests.conftest import METAL_PLATE, require
from tests.test_daemon_e2e import ROOT, write_config

# Runs the real daemon with its ONNX Runtime backend wrapped so that, once the file named by
# EDGE_TEST_HANG exists, the next engine call never returns: the fault is injected, the rest
# (capture, heartbeats, the watchdog, the notify socket) is the product.
LAUNCHER = """
import os, sys, threading
from engines.backends import onnxruntime_backend
real = onnxruntime_backend.OnnxRuntimeBackend.log_likelihoods
def hanging(self, images):
    if os.path.exists(os.environ["EDGE_TEST_HANG"]):
        threading.Event().wait()
    return real(self, images)
onnxruntime_backend.OnnxRuntimeBackend.log_likelihoods = hanging
from edge.cli import main
sys.exit(main(sys.argv[1:]))
"""


class NotifyListener:
    def __init__(self, path: Path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []

    def collect(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            for field in data.decode().split("\n"):
                self.messages.append((time.monotonic(), field))

    def times(self, field: str, since: float = 0.0) -> list[float]:
        return [t for t, f in self.messages if f == field and t >= since]


def _good_image(name: str, destination: Path) -> None:
    image = cv2.imread(str(sorted((require(METAL_PLATE) / "test" / "good").glob("*.png"))[0]))
    cv2.imwrite(str(destination / name), cv2.resize(image, (64, 64)))


def test_watchdog_pings_while_waiting_and_stops_when_inference_hangs(small_bundle, broker, tmp_path):
    bundle, _ = small_bundle
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    config = write_config(tmp_path / "config.yaml", bundle.path, broker.port, f"  - station: line\n    source: {{type: folder, path: {inbox}}}\n")
    # A short path: AF_UNIX addresses are limited to about 100 bytes.
    socket_dir = Path(f"/tmp/edge-wd-{os.getpid()}")
    socket_dir.mkdir(exist_ok=True)
    listener = NotifyListener(socket_dir / "notify")
    hang = tmp_path / "hang"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NOTIFY_SOCKET": str(socket_dir / "notify"), "WATCHDOG_USEC": "2000000", "EDGE_TEST_HANG": str(hang)}
    env.pop("WATCHDOG_PID", None)
    process = subprocess.Popen([sys.executable, "-c", LAUNCHER, "--config", str(config)], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not listener.times("READY=1"):
            listener.collect(0.5)
        assert listener.times("READY=1"), "the daemon never said READY"

        # An empty folder for 8 s: the camera is waiting, not dead, and the watchdog keeps going.
        waiting_since = time.monotonic()
        listener.collect(8)
        pings = listener.times("WATCHDOG=1", since=waiting_since)
        assert len(pings) >= 6, f"only {len(pings)} watchdog pings in 8 s of waiting for parts"

        _good_image("part-1.png", inbox)
        listener.collect(2)
        hang.touch()
        _good_image("part-2.png", inbox)
        hung_at = time.monotonic()
        listener.collect(12)
        last_ping = max(listener.times("WATCHDOG=1"))
        assert last_ping - hung_at <= 7.0, "the watchdog was still fed long after inference hung"
        assert not listener.times("WATCHDOG=1", since=hung_at + 7.0)
        assert process.poll() is None  # the daemon does not exit by itself; systemd kills it
    finally:
        process.kill()
        output = process.communicate(timeout=30)[0]
        listener.sock.close()
        shutil.rmtree(socket_dir, ignore_errors=True)
    assert "stages not alive: line/inference; withholding the watchdog ping" in output, output[-3000:]
