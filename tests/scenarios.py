"""Fault and soak scenarios against real processes: the daemon, Mosquitto, a network camera, a
tmpfs that fills. Each is sized by its caller and returns what it counted; the tests run them
small and assert on the report, bench/faults.py runs them at full size and writes the reports."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

import cv2
import numpy as np

from tests.conftest import METAL_PLATE
from tests.mqtt_helpers import Broker, Subscriber, find_mosquitto
from tests.stream_server import MjpegCamera
from tests.test_daemon_e2e import finish, offline_scores, start_daemon, write_config


# Runs the real daemon with its ONNX Runtime backend wrapped so that, once the file named by
# EDGE_TEST_HANG exists, the next engine call never returns: the fault is injected, the rest
# (capture, heartbeats, the watchdog, the notify socket) is the product.
HANGING_ENGINE_LAUNCHER = """
import os, sys, threading
from engines.backends import onnxruntime_backend
real = onnxruntime_backend.OnnxRuntimeBackend.infer
def hanging(self, images):
    if os.path.exists(os.environ["EDGE_TEST_HANG"]):
        threading.Event().wait()
    return real(self, images)
onnxruntime_backend.OnnxRuntimeBackend.infer = hanging
from edge.cli import main
sys.exit(main(sys.argv[1:]))
"""


class ScenarioUnavailable(RuntimeError):
    """Something the scenario needs is missing here (Mosquitto, the datasets, root for a tmpfs)."""


@dataclass
class ScenarioReport:
    scenario: str
    parts: int = 0  # parts the daemon decided
    rejects_expected: int = 0
    rejects_received: int = 0  # distinct parts
    duplicates: int = 0  # redeliveries of a part already received
    lost: int = 0
    late: int = 0  # received with late: true
    out_of_order: int = 0  # first deliveries not in the order the parts were decided
    recovery_s: list[float] = field(default_factory=list)
    details: dict = field(default_factory=dict)
    log: str = field(default="", repr=False)

    def to_json(self) -> dict:
        data = asdict(self)
        data.pop("log")
        data["recovery_s"] = [round(r, 2) for r in self.recovery_s]
        return data

    def count_rejects(self, expected: list, received: list) -> None:
        """expected: part keys in the order decided; received: part keys in arrival order."""
        first_seen = list(dict.fromkeys(received))
        arrived = set(first_seen)
        self.rejects_expected = len(expected)
        self.rejects_received = len(arrived & set(expected))
        self.duplicates = len(received) - len(first_seen)
        self.lost = len(set(expected) - arrived)
        self.details["unexpected"] = len(arrived - set(expected))
        in_decided_order = [key for key in expected if key in arrived]
        self.out_of_order = sum(a != b for a, b in zip(first_seen, in_decided_order))
        if self.lost:
            self.details["lost_examples"] = [str(k) for k in expected if k not in arrived][:10]


# --- building blocks ----------------------------------------------------------------------------
def require_mosquitto() -> None:
    if find_mosquitto() is None:
        raise ScenarioUnavailable("mosquitto not installed (apt-get install -y mosquitto; make test installs it)")


def part_images(size: tuple[int, int]) -> list[np.ndarray]:
    """Real MPDD parts, good and defective, at the bundle's (height, width)."""
    sources = sorted((METAL_PLATE / "test").glob("*/*.png"))
    if not sources:
        raise ScenarioUnavailable(f"dataset not found at {METAL_PLATE} (set EDGE_DATASETS to the shared datasets folder)")
    return [cv2.resize(cv2.imread(str(p)), size[::-1], interpolation=cv2.INTER_AREA) for p in sources]


def parts_video(path: Path, frames: int, size: tuple[int, int]) -> Path:
    images = part_images(size)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30, size[::-1])
    for i in range(frames):
        writer.write(images[(i * 7) % len(images)])
    writer.release()
    return path


def read_video(path: Path) -> list[np.ndarray]:
    capture, frames = cv2.VideoCapture(str(path)), []
    while True:
        ok, frame = capture.read()
        if not ok:
            return frames
        frames.append(frame)


def audit_records(state: Path) -> tuple[list[dict], int]:
    """Every readable audit record, and how many lines were torn (unreadable)."""
    records, torn = [], 0
    for path in sorted((state / "audit").glob("*.jsonl*")):
        for line in path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                torn += 1
    return records, torn


def payloads(messages) -> list[dict]:
    return [json.loads(m.payload) for m in messages]


def part_key(record: dict) -> tuple[str, str]:
    """Part ids of a video restart at 0 with each daemon run; the capture time tells runs apart."""
    return record["part_id"], record["capture_time"]


def wait_until(condition, timeout: float, step: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step)
    return condition()


def log_of(process: subprocess.Popen, log: Path, timeout: float = 120) -> str:
    process.wait(timeout)
    return log.read_text() if log.exists() else ""


class NotifyListener:
    """The systemd side of sd_notify: a datagram socket collecting what the daemon sends."""

    def __init__(self):
        # A short path: AF_UNIX addresses are limited to about 100 bytes.
        self.directory = Path(f"/tmp/edge-notify-{os.getpid()}-{threading.get_ident()}")
        self.directory.mkdir(exist_ok=True)
        self.path = self.directory / "notify"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._collect, daemon=True)
        self.thread.start()

    def env(self, watchdog_s: float) -> dict:
        return {"NOTIFY_SOCKET": str(self.path), "WATCHDOG_USEC": str(int(watchdog_s * 1e6)), "WATCHDOG_PID": ""}

    def _collect(self) -> None:
        while not self.stopped.is_set():
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            with self.lock:
                self.messages.extend((time.monotonic(), f) for f in data.decode(errors="replace").split("\n"))

    def times(self, message: str, since: float = 0.0) -> list[float]:
        with self.lock:
            return [t for t, m in self.messages if m == message and t >= since]

    def max_gap(self, message: str, since: float, until: float) -> float:
        """The longest silence between `message`s in [since, until], the ends included."""
        marks = [since, *self.times(message, since), until]
        marks = [t for t in marks if t <= until]
        return max(b - a for a, b in zip(marks, marks[1:]))

    def close(self) -> None:
        self.stopped.set()
        self.thread.join(2)
        self.sock.close()
        shutil.rmtree(self.directory, ignore_errors=True)


def proc_resources(pid: int) -> dict | None:
    """Resident memory, threads and open file descriptors of a running process, from /proc."""
    try:
        status = Path(f"/proc/{pid}/status").read_text().splitlines()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in status if ":" in line)
    if "VmRSS" not in fields:  # exited, not yet reaped: a zombie has no memory lines
        return None
    return {"rss_kib": int(fields["VmRSS"].split()[0]), "threads": int(fields["Threads"]), "fds": fds}


def percentiles(values) -> dict[str, float]:
    return {f"p{p}": round(float(np.percentile(values, p)), 2) for p in (50, 95, 99)} if len(values) else {}


# --- scenarios ----------------------------------------------------------------------------------
def broker_outages(bundle, work: Path, parts: int = 500, outages: int = 3, outage_s: float = 1.5, between_s: float = 2.0, fps: float = 40) -> ScenarioReport:
    """Mosquitto stopped and restarted `outages` times while `parts` parts run past the camera.
    A persistent subscriber (the PLC) counts every reject; recovery is the time from the
    broker's restart to the first reject it delivers."""
    require_mosquitto()
    report = ScenarioReport("broker_outage")
    (work / "broker").mkdir(parents=True, exist_ok=True)
    broker = Broker(work / "broker", persistent=True).start()
    try:
        video = parts_video(work / "line.avi", parts, bundle.manifest.input_size)
        subscriber = Subscriber(broker.port, client_id="plc", persistent=True)
        camera = f"  - station: line\n    source: {{type: file, path: {video}, fps: {fps}}}\n"
        config = write_config(work / "config.yaml", bundle.path, broker.port, camera, publish="{results: false, heatmaps: none, stats_interval_s: 1}")
        process = start_daemon(config)
        restarts, durations = [], []
        time.sleep(3)
        for _ in range(outages):
            stopped = time.monotonic()
            broker.stop()
            time.sleep(outage_s)
            broker.start()
            restarts.append(time.monotonic())
            durations.append(restarts[-1] - stopped)
            time.sleep(between_s)
        report.log = finish(process, timeout=120 + parts / fps)
        decided = [r for r in audit_records(work / "state")[0] if r.get("verdict") in ("pass", "reject")]
        expected = [r["part_id"] for r in decided if r["verdict"] == "reject"]
        wait_until(lambda: set(expected) <= {p["part_id"] for p in payloads(subscriber.on("reject"))}, timeout=20, step=0.2)
        rejects = subscriber.on("reject")
        subscriber.close()
    finally:
        broker.stop()
    received = payloads(rejects)
    report.parts = len(decided)
    report.count_rejects(expected, [r["part_id"] for r in received])
    report.late = sum(r["late"] for r in received)
    for restarted in restarts:
        after = [m.received for m in rejects if m.received >= restarted]
        if after:
            report.recovery_s.append(min(after) - restarted)
    report.details.update(outages=outages, outage_s=[round(d, 2) for d in durations], camera_fps=fps)
    return report


def power_cuts(bundle, work: Path, cuts: int = 1, rejects_per_cut: int = 10, parts: int = 300, fps: float = 60) -> ScenarioReport:
    """The daemon SIGKILLed `cuts` times while rejects pile up on disk with the broker away,
    then started once more with the broker up: no torn record, every reject that reached the
    outbox or the audit log delivered (marked late)."""
    require_mosquitto()
    report = ScenarioReport("power_cut")
    (work / "broker").mkdir(parents=True, exist_ok=True)
    broker = Broker(work / "broker")  # not started: the line runs while the broker is away
    video = parts_video(work / "line.avi", parts, bundle.manifest.input_size)
    outbox = work / "state" / "outbox" / "line"
    camera = f"  - station: line\n    source: {{type: file, path: {video}, fps: {fps}}}\n"
    config = write_config(work / "config.yaml", bundle.path, broker.port, camera, publish="{results: false, heatmaps: none}")
    torn_outbox = 0
    for _ in range(cuts):
        before = len(list(outbox.glob("*.json"))) if outbox.exists() else 0
        process = start_daemon(config, log=work / "daemon.log")
        wait_until(lambda: outbox.exists() and len(list(outbox.glob("*.json"))) >= before + rejects_per_cut, timeout=60, step=0.05)
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    stored = []
    for path in sorted(outbox.glob("*.json")):
        try:
            stored.append(json.loads(path.read_text())["payload"])
        except (ValueError, KeyError):
            torn_outbox += 1
    audited, torn_audit = audit_records(work / "state")
    audited_rejects = {part_key(r) for r in audited if r.get("verdict") == "reject"}
    stored_keys = [part_key(s) for s in stored]

    broker.start()
    try:
        subscriber = Subscriber(broker.port)
        restarted = time.monotonic()
        config = write_config(work / "config.yaml", bundle.path, broker.port, f"  - station: line\n    source: {{type: file, path: {parts_video(work / 'one.avi', 1, bundle.manifest.input_size)}}}\n", publish="{results: false, heatmaps: none}")
        report.log = finish(start_daemon(config), timeout=60)
        late_keys = lambda: [part_key(p) for p in payloads(subscriber.on("reject")) if p["late"]]  # noqa: E731
        wait_until(lambda: set(stored_keys) <= set(late_keys()), timeout=20)
        arrivals = [m.received for m in subscriber.on("reject") if json.loads(m.payload)["late"]]
        received = late_keys()
        subscriber.close()
    finally:
        broker.stop()
    report.parts = len([r for r in audited if r.get("verdict") in ("pass", "reject")])
    report.count_rejects(stored_keys, received)
    report.late = len(received)
    if arrivals:
        report.recovery_s.append(max(arrivals) - restarted)
    report.details.update(
        cuts=cuts,
        stored_before_restart=len(stored),
        torn_outbox_files=torn_outbox,
        torn_audit_lines=torn_audit,
        audited_rejects_not_in_outbox=len(audited_rejects - set(stored_keys)),
        outbox_left_after_delivery=len(list(outbox.glob("*.json"))),
    )
    return report


def camera_losses(bundle, work: Path, source: str, losses: list[str], down_s: float = 4.0, fps: float = 15, watchdog_s: float = 2.0) -> ScenarioReport:
    """The camera goes away and comes back, once per entry of `losses`: for a stream, "stop" (the
    camera switched off) or "stall" (cable pulled: the connection stays up, nothing arrives); for
    a folder, "unmount"; for a looping video file, "remove" (noticed when the loop comes round:
    the open file is still read to its end). Recovery is from the camera's return to the first
    result of a frame captured after it. The notify socket shows whether systemd's watchdog
    would have fired."""
    require_mosquitto()
    report = ScenarioReport(f"camera_loss_{source}")
    size = bundle.manifest.input_size
    images = part_images(size)
    (work / "broker").mkdir(parents=True, exist_ok=True)
    broker = Broker(work / "broker").start()
    listener = NotifyListener()
    feeder_stop = threading.Event()
    try:
        # Per kind of loss: what takes the camera away and what brings it back.
        if source == "stream":
            camera = MjpegCamera(images, fps=fps).start()
            source_yaml = f"{{type: stream, url: '{camera.url}'}}"
            faults = {"stop": (camera.stop, camera.start), "stall": (camera.stall, camera.resume)}
        elif source == "file":
            video, removed = parts_video(work / "line.avi", 30, size), work / "removed.avi"
            source_yaml = f"{{type: file, path: {video}, loop: true, fps: {fps}}}"
            faults = {"remove": (lambda: video.rename(removed), lambda: removed.rename(video))}
        else:
            folder, unmounted = work / "drop", work / "unmounted"
            folder.mkdir()
            threading.Thread(target=_feed_folder, args=(folder, images, fps, feeder_stop), daemon=True).start()
            source_yaml = f"{{type: folder, path: {folder}, poll_interval_s: 0.05}}"
            faults = {"unmount": (lambda: folder.rename(unmounted), lambda: unmounted.rename(folder))}
        subscriber = Subscriber(broker.port)
        config = write_config(work / "config.yaml", bundle.path, broker.port, f"  - station: cam\n    source: {source_yaml}\n", publish="{results: true, heatmaps: none, stats_interval_s: 0.5}")
        process = start_daemon(config, env=listener.env(watchdog_s), log=work / "daemon.log")
        if not wait_until(lambda: len(subscriber.on("result")) >= 5, timeout=60):
            raise AssertionError(f"no results before the first loss:\n{(work / 'daemon.log').read_text()[-3000:]}")
        started = time.monotonic()
        losses_seen = []
        for kind in losses:
            before = len(subscriber.on("result"))
            wait_until(lambda: len(subscriber.on("result")) >= before + 5, timeout=30)
            lose, restore = faults[kind]
            lost_at = time.monotonic()
            lose()
            said_lost = wait_until(lambda: any(m.received >= lost_at and json.loads(m.payload)["camera"] == "lost" for m in subscriber.on("stats")), timeout=down_s + 15)
            detected = time.monotonic() - lost_at
            time.sleep(max(0.0, lost_at + down_s - time.monotonic()))
            back_wall, back = time.time(), time.monotonic()
            restore()
            fresh = lambda: [m.received for m in subscriber.on("result") if _epoch(json.loads(m.payload)["capture_time"]) >= back_wall]  # noqa: E731
            recovered = wait_until(lambda: bool(fresh()), timeout=30, step=0.05)
            recovery = min(fresh()) - back if recovered else None
            if recovery is not None:
                report.recovery_s.append(recovery)
            losses_seen.append({"kind": kind, "status_said_lost": said_lost, "detected_s": round(detected, 2), "recovered": recovered, "recovery_s": None if recovery is None else round(recovery, 2)})
        ended = time.monotonic()
        alive = process.poll() is None
        process.send_signal(signal.SIGTERM)
        report.log = log_of(process, work / "daemon.log")
        report.parts = len(subscriber.on("result"))
        subscriber.close()
        report.details.update(
            losses=losses_seen,
            down_s=down_s,
            daemon_alive_throughout=alive,
            exit_code=process.returncode,
            watchdog_s=watchdog_s,
            max_watchdog_ping_gap_s=round(listener.max_gap("WATCHDOG=1", started, ended), 2),
        )
    finally:
        feeder_stop.set()
        if source == "stream":
            camera.stop()
        listener.close()
        broker.stop()
    return report


def _feed_folder(folder: Path, images: list[np.ndarray], fps: float, stop: threading.Event) -> None:
    """The line camera: one image file per part, written whenever the folder is there."""
    index = 0
    while not stop.wait(1.0 / fps):
        if folder.is_dir():
            temporary = folder.parent / f".P-{index}.png"
            cv2.imwrite(str(temporary), images[(index * 7) % len(images)])
            try:
                os.replace(temporary, folder / f"P-{index}.png")
            except OSError:
                temporary.unlink(missing_ok=True)
                continue
            index += 1


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def disk_full(bundle, work: Path, parts: int = 600, outage_s: float = 4.0, disk_kib: int = 640, free_kib: int = 100, fps: float = 40) -> ScenarioReport:
    """The state directory on a real tmpfs with only `free_kib` free, the broker away for
    `outage_s` mid-run so rejects pile up: no reject lost, the oldest audit records dropped."""
    require_mosquitto()
    report = ScenarioReport("disk_full")
    state = work / "state"
    state.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={disk_kib}k", "tmpfs", str(state)], capture_output=True, text=True)
    if mounted.returncode != 0:
        raise ScenarioUnavailable(f"cannot mount a small tmpfs to fill (needs root): {mounted.stderr.strip()}")
    (work / "broker").mkdir(parents=True, exist_ok=True)
    broker = Broker(work / "broker", persistent=True).start()
    try:
        video = parts_video(work / "line.avi", parts, bundle.manifest.input_size)
        scores = offline_scores(bundle, read_video(video))
        expected = [str(i) for i, score in enumerate(scores) if score > bundle.manifest.thresholds.image]
        (state / "filler").write_bytes(b"\0" * ((disk_kib - free_kib) * 1024))
        subscriber = Subscriber(broker.port, client_id="plc", persistent=True)
        camera = f"  - station: line\n    source: {{type: file, path: {video}, fps: {fps}}}\n"
        config = write_config(
            work / "config.yaml", bundle.path, broker.port, camera,
            extra="audit_max_bytes: 10000\naudit_backups: 50\n", publish="{results: false, heatmaps: none, stats_interval_s: 1}",
        )
        process = start_daemon(config)
        time.sleep(4)
        broker.stop()  # rejects now pile up in the outbox on the full disk
        time.sleep(outage_s)
        broker.start()
        restarted = time.monotonic()
        report.log = finish(process, timeout=120 + parts / fps)
        wait_until(lambda: set(expected) <= {p["part_id"] for p in payloads(subscriber.on("reject"))}, timeout=30, step=0.2)
        rejects = subscriber.on("reject")
        stats = payloads(subscriber.on("stats"))
        subscriber.close()
        audited = [int(r["part_id"]) for r in audit_records(state)[0] if r.get("verdict") in ("pass", "reject")]
        left_in_outbox = len(list((state / "outbox" / "line").glob("*.json")))
    finally:
        broker.stop()
        subprocess.run(["umount", "-l", str(state)], capture_output=True)
    report.parts = parts
    report.count_rejects(expected, [p["part_id"] for p in payloads(rejects)])
    report.late = sum(p["late"] for p in payloads(rejects))
    after = [m.received for m in rejects if m.received >= restarted]
    if after:
        report.recovery_s.append(min(after) - restarted)
    report.details.update(
        disk_kib=disk_kib,
        free_kib_at_start=free_kib,
        stats_said_disk_full=any(s.get("disk_full") for s in stats),
        log_said_disk_full="disk full: deleted the oldest audit records" in report.log,
        audit_records_kept=len(audited),
        oldest_audit_part_kept=min(audited, default=None),
        newest_audit_part_kept=max(audited, default=None),
        audit_files_dropped=max((s.get("audit_files_dropped", 0) for s in stats), default=0),
        outbox_left_after_delivery=left_in_outbox,
    )
    return report


def stuck_inference(bundle, work: Path, waiting_s: float = 8.0, watchdog_s: float = 2.0) -> ScenarioReport:
    """A watched folder with no parts for `waiting_s` (the watchdog must keep being fed), then an
    engine call that never returns (the ping must stop, so systemd restarts the service)."""
    require_mosquitto()
    report = ScenarioReport("stuck_inference")
    images = part_images(bundle.manifest.input_size)
    inbox = work / "inbox"
    inbox.mkdir(parents=True)
    (work / "broker").mkdir(parents=True, exist_ok=True)
    broker = Broker(work / "broker").start()
    listener = NotifyListener()
    hang = work / "hang"
    config = write_config(work / "config.yaml", bundle.path, broker.port, f"  - station: line\n    source: {{type: folder, path: {inbox}}}\n")
    process = start_daemon(config, env={**listener.env(watchdog_s), "EDGE_TEST_HANG": str(hang)}, launcher=HANGING_ENGINE_LAUNCHER, log=work / "daemon.log")
    try:
        ready = wait_until(lambda: bool(listener.times("READY=1")), timeout=60)
        waiting_since = time.monotonic()
        time.sleep(waiting_s)
        pings_waiting = len(listener.times("WATCHDOG=1", since=waiting_since))
        cv2.imwrite(str(inbox / "part-1.png"), images[0])
        time.sleep(2)
        hang.touch()
        cv2.imwrite(str(inbox / "part-2.png"), images[1])
        hung_at = time.monotonic()
        time.sleep(12)
        last_ping = max(listener.times("WATCHDOG=1"), default=hung_at)
        alive = process.poll() is None
    finally:
        process.kill()
        report.log = log_of(process, work / "daemon.log", timeout=30)
        listener.close()
        broker.stop()
    report.parts = 1
    report.recovery_s.append(last_ping - hung_at)  # how long systemd was still told all is well
    report.details.update(
        ready=ready,
        watchdog_s=watchdog_s,
        waiting_s=waiting_s,
        pings_while_waiting=pings_waiting,
        last_ping_after_hang_s=round(last_ping - hung_at, 2),
        pings_after_hang_plus_7s=len(listener.times("WATCHDOG=1", since=hung_at + 7.0)),
        daemon_still_running=alive,
        log_named_the_stage=re.search(r"stages not alive: line/inference-\d+; withholding the watchdog ping", report.log) is not None,
    )
    return report


def soak(bundle, work: Path, frames: int = 20_000, fps: float = 15, warmup: int = 1000, sample_s: float = 2.0, progress=None) -> ScenarioReport:
    """`frames` parts through the daemon from a looping video paced at `fps` (below what the
    machine sustains, so latency is work, not queueing). Resident memory, threads and open
    files are sampled from /proc; latency percentiles of the first and last `warmup` parts
    come from the audit log."""
    require_mosquitto()
    report = ScenarioReport("soak")
    (work / "broker").mkdir(parents=True, exist_ok=True)
    broker = Broker(work / "broker").start()
    try:
        video = parts_video(work / "loop.avi", 200, bundle.manifest.input_size)
        subscriber = Subscriber(broker.port)
        camera = f"  - station: soak\n    source: {{type: file, path: {video}, fps: {fps}, loop: true}}\n"
        config = write_config(work / "config.yaml", bundle.path, broker.port, camera, publish="{results: true, heatmaps: rejects, stats_interval_s: 5}")
        process = start_daemon(config, log=work / "daemon.log")
        samples = []
        started = time.monotonic()
        while process.poll() is None:
            done = len(subscriber.on("result"))
            resources = proc_resources(process.pid)
            if resources:
                samples.append({"parts": done, "t_s": round(time.monotonic() - started, 1), **resources})
            if progress and len(samples) % 30 == 0:
                progress(done, frames)
            if done >= frames:
                break
            time.sleep(sample_s)
        alive = process.poll() is None
        process.send_signal(signal.SIGTERM)
        report.log = log_of(process, work / "daemon.log")
        results = payloads(subscriber.on("result"))
        stats = payloads(subscriber.on("stats"))
        subscriber.close()
    finally:
        broker.stop()
    records = sorted((r for r in audit_records(work / "state")[0] if "latency_ms" in r), key=lambda r: r["frame_id"])
    latencies = [r["latency_ms"] for r in records]
    steady = [s for s in samples if s["parts"] >= warmup] or samples
    first, last = steady[0], steady[-1]
    frame_ids = [r["frame_id"] for r in results]
    report.parts = len(results)
    report.details.update(
        frames_asked=frames,
        camera_fps=fps,
        duration_s=samples[-1]["t_s"] if samples else None,
        daemon_alive_throughout=alive,
        exit_code=process.returncode,
        missing_frame_ids=len(set(range(max(frame_ids, default=-1) + 1)) - set(frame_ids)),
        dropped_frames=max((s["dropped_frames"] for s in stats), default=None),
        rss_mib_after_warmup=round(first["rss_kib"] / 1024, 1),
        rss_mib_end=round(last["rss_kib"] / 1024, 1),
        rss_growth_pct=round(100.0 * (last["rss_kib"] - first["rss_kib"]) / first["rss_kib"], 2),
        rss_mib_max=round(max(s["rss_kib"] for s in steady) / 1024, 1),
        threads_after_warmup=[min(s["threads"] for s in steady), max(s["threads"] for s in steady)],
        threads_end=last["threads"],
        fds_after_warmup=[min(s["fds"] for s in steady), max(s["fds"] for s in steady)],
        fds_start_end=[first["fds"], last["fds"]],
        latency_ms_first=percentiles(latencies[:warmup]),
        latency_ms_last=percentiles(latencies[-warmup:]),
        latency_ms_all=percentiles(latencies),
        samples=samples,
    )
    return report
