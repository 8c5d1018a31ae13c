"""Parallel inference workers: how many, and that parts still come out in capture order, one
result each, when one part is slow and another fails."""
from __future__ import annotations

import json
import os
import re
import signal
import threading
import time

import cv2
import numpy as np
import pytest

from edge.answer import Answer, Outcome
from edge.capture import Frame
from edge.pipeline import OrderedPipeline
from edge.station_engine import cores_within_quota, plan_inference, usable_cores
from tests.conftest import METAL_PLATE, require
from tests.mqtt_helpers import Subscriber
from tests.stream_server import MjpegCamera
from tests.test_daemon_e2e import finish, start_daemon, write_config


@pytest.mark.parametrize(
    "backend, threads, workers, cores, stations, expected",
    [
        ("onnxruntime", 0, 0, 2, 1, (2, 1)),  # every core, one frame each
        ("onnxruntime", 0, 0, 8, 1, (8, 1)),
        ("onnxruntime", 0, 0, 64, 1, (8, 8)),  # at most 8 workers unless asked
        ("onnxruntime", 0, 0, 8, 2, (4, 1)),  # the cores are shared by the stations
        ("onnxruntime", 0, 0, 2, 3, (1, 1)),  # more stations than cores: one worker each
        ("onnxruntime", 4, 0, 8, 1, (4, 1)),  # threads caps the cores used
        ("onnxruntime", 4, 2, 8, 1, (2, 2)),  # two frames at once, two threads each
        ("onnxruntime", 0, 1, 2, 1, (1, 2)),  # the old behaviour: one frame over both cores
        ("onnxruntime", 2, 3, 8, 1, (3, 1)),  # more workers than threads: never zero threads
        ("tensorrt", 0, 4, 8, 1, (1, 0)),  # one GPU stream
        ("torch", 2, 0, 8, 1, (1, 2)),  # torch's thread count is per process
    ],
)
def test_plan_inference(backend, threads, workers, cores, stations, expected):
    plan = plan_inference(backend, threads, workers, cores, stations)
    assert (plan.workers, plan.threads_per_worker) == expected


def test_usable_cores_is_within_this_process_affinity():
    assert 1 <= usable_cores() <= len(os.sched_getaffinity(0))


@pytest.mark.parametrize(
    "cpu_max, expected",
    [("max 100000\n", 8), ("200000 100000\n", 2), ("150000 100000", 2), ("50000 100000", 1), ("1600000 100000", 8), ("", 8), ("garbage", 8)],
)
def test_a_cgroup_cpu_quota_caps_the_cores(cpu_max, expected):
    assert cores_within_quota(8, cpu_max) == expected


# Grey parts take 1.5 s to inspect, so a later part finishes first; white parts make the engine
# raise; a part of level 64 kills its worker thread outright (SystemExit is not an Exception).
FAULTY_ENGINE_LAUNCHER = """
import os, sys, time
from engines.backends import onnxruntime_backend
real = onnxruntime_backend.OnnxRuntimeBackend.infer
def faulty(self, images):
    if (images == 128).all():
        time.sleep(1.5)
    if (images == 255).all():
        raise RuntimeError("injected engine fault")
    if (images == 64).all():
        raise SystemExit("injected thread death")
    result = real(self, images)
    if "COMPLETED_LOG" in os.environ:  # the order parts left the engine in
        with open(os.environ["COMPLETED_LOG"], "a") as log:
            log.write("slow " if (images == 128).all() else "other ")
    return result
onnxruntime_backend.OnnxRuntimeBackend.infer = faulty
from edge.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_workers_publish_in_capture_order_and_failed_parts_are_rejected(small_bundle, broker, tmp_path):
    bundle, _ = small_bundle
    sources = sorted((require(METAL_PLATE) / "test").glob("*/*.png"))[::7][:8]
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    images = [cv2.imread(str(path)) for path in sources]
    images.insert(0, np.full((256, 256, 3), 128, np.uint8))  # p00: slow
    images.insert(4, np.full((256, 256, 3), 255, np.uint8))  # p04: the engine fails on it
    images.insert(7, np.full((256, 256, 3), 64, np.uint8))  # p07: its worker dies
    names = [f"p{i:02d}" for i in range(len(images))]
    for i, (name, image) in enumerate(zip(names, images)):
        path = inbox / f"{name}.png"
        cv2.imwrite(str(path), image)
        os.utime(path, ns=(i * 10**9, i * 10**9))  # the folder is read oldest first
    subscriber = Subscriber(broker.port)
    camera = f"  - station: par\n    source: {{type: folder, path: {inbox}, poll_interval_s: 0.05}}\n"
    config = write_config(tmp_path / "config.yaml", bundle.path, broker.port, camera, extra="workers: 3\nthreads: 3\n")
    completed = tmp_path / "completed.log"
    process = start_daemon(config, launcher=FAULTY_ENGINE_LAUNCHER, env={"COMPLETED_LOG": str(completed)})
    results = subscriber.wait_for("result", len(names), timeout=60)
    time.sleep(7)  # past the 5 s heartbeat limit of the dead worker
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=60)
    # A stage crashed, so the exit says failure (systemd marks the unit failed), even on a stop.
    assert process.returncode == 1 and "exiting with failure: par/inference-" in output, output[-3000:]

    payloads = [json.loads(m.payload) for m in results]
    finished = completed.read_text().split()
    assert finished.index("slow") > 0, "p00 was not overtaken in the engine: the ordering below proves nothing"
    assert [p["part_id"] for p in payloads] == names  # in capture order, though p00 finished later
    verdicts = {p["part_id"]: p["verdict"] for p in payloads}
    assert verdicts["p04"] == "error" and "injected engine fault" in payloads[4]["error"]
    assert verdicts["p07"] == "error" and payloads[7]["score"] is None
    assert all(verdicts[name] in ("pass", "reject") for name in names if name not in ("p04", "p07"))
    # A part nobody could inspect must not pass: it is rejected, through the outbox.
    rejected = {json.loads(m.payload)["part_id"]: json.loads(m.payload) for m in subscriber.on("reject")}
    assert rejected["p04"]["verdict"] == rejected["p07"]["verdict"] == "error"
    assert "3 worker(s) x 1 thread(s)" in output
    assert "inspecting part p04 failed" in output
    # The dead worker is not taken for the end of the source: its heartbeat goes stale and the
    # watchdog is withheld (systemd would restart the daemon).
    assert re.search(r"the inference-\d loop crashed", output)
    assert re.search(r"stages not alive: par/inference-\d", output)
    audit = [json.loads(line) for line in (tmp_path / "state" / "audit" / "par.jsonl").read_text().splitlines()]
    assert [record["part_id"] for record in audit] == names
    stats = json.loads(subscriber.on("stats")[-1].payload)
    assert stats["inference_errors"] == 1 and stats["parts"] == len(names) - 2
    # The two parts nobody inspected are rejects the line kicked: in the reject rate and its window.
    inspected_rejects = sum(verdicts[name] == "reject" for name in names)
    assert stats["uninspected"] == 2 and stats["rejects"] == inspected_rejects
    assert stats["reject_rate"] == (inspected_rejects + 2) / len(names)
    assert stats["recent"] == {"parts": len(names), "rejects": inspected_rejects + 2, "uninspected": 2}
    subscriber.close()


HANGING_ENGINE_LAUNCHER = """
import os, sys, time
from edge import daemon
from edge.stop_budget import StopBudget
from engines.backends import onnxruntime_backend
daemon.STOP_BUDGET = StopBudget(drain_s=3.0)
real = onnxruntime_backend.OnnxRuntimeBackend.infer
def hanging(self, images):
    if (images == 32).all():
        time.sleep(600)  # an engine that never comes back
    result = real(self, images)
    with open(os.environ["INSPECTED_LOG"], "a") as log:
        log.write("x")  # the test waits for the parts that do finish
    return result
onnxruntime_backend.OnnxRuntimeBackend.infer = hanging
from edge.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_stop_whose_drain_times_out_rejects_every_part_left(small_bundle, broker, tmp_path):
    """Both workers hang; SIGTERM. Every captured part still gets one answer, in capture order:
    the parts that were inspected as usual, the others rejected as not inspected."""
    bundle, _ = small_bundle
    sources = sorted((require(METAL_PLATE) / "test").glob("*/*.png"))[::9][:6]
    images = [cv2.imread(str(path)) for path in sources]
    images.insert(1, np.full((256, 256, 3), 32, np.uint8))  # p01 hangs its worker
    images.insert(3, np.full((256, 256, 3), 32, np.uint8))  # p03 hangs the other
    names = [f"p{i:02d}" for i in range(len(images))]
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for i, (name, image) in enumerate(zip(names, images)):
        path = inbox / f"{name}.png"
        cv2.imwrite(str(path), image)
        os.utime(path, ns=(i * 10**9, i * 10**9))
    subscriber = Subscriber(broker.port)
    camera = f"  - station: hang\n    source: {{type: folder, path: {inbox}, poll_interval_s: 0.05}}\n"
    config = write_config(tmp_path / "config.yaml", bundle.path, broker.port, camera, extra="workers: 2\nthreads: 2\nqueue_size: 4\n")
    inspected = tmp_path / "inspected.log"
    process = start_daemon(config, launcher=HANGING_ENGINE_LAUNCHER, env={"INSPECTED_LOG": str(inspected)})
    deadline = time.monotonic() + 60
    # p00 and p02 finish (p02 then waits behind p01 to be published); both workers then hang.
    while time.monotonic() < deadline and not (inspected.exists() and len(inspected.read_text()) >= 2):
        time.sleep(0.1)
    time.sleep(1)  # the rest of the folder is read into the queue
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 1, output  # not drained: systemd sees a failed stop
    assert "drain timed out" in output

    subscriber.wait_for("result", len(names), timeout=10)
    time.sleep(0.5)
    results = [json.loads(m.payload) for m in subscriber.on("result")]
    assert [p["part_id"] for p in results] == names  # one answer each, in capture order
    verdicts = {p["part_id"]: p["verdict"] for p in results}
    assert verdicts["p00"] in ("pass", "reject") and verdicts["p02"] in ("pass", "reject")
    left = [name for name in names if name not in ("p00", "p02")]
    assert all(verdicts[name] == "not_inspected" for name in left), verdicts
    assert f"stopped with {len(left)} part(s) not inspected" in output
    rejected = {json.loads(m.payload)["part_id"] for m in subscriber.on("reject")}
    assert set(left) <= rejected  # through the outbox: a part nobody looked at must not pass
    audit = [json.loads(line) for line in (tmp_path / "state" / "audit" / "hang.jsonl").read_text().splitlines()]
    assert [record["part_id"] for record in audit] == names
    assert json.loads(subscriber.on("stats")[-1].payload)["not_inspected"] == len(left)
    subscriber.close()


SLOW_ENGINE_LAUNCHER = """
import sys, time
from engines.backends import onnxruntime_backend
real = onnxruntime_backend.OnnxRuntimeBackend.infer
def slow(self, images):
    time.sleep(1.0)  # slower than the PLC's triggers
    return real(self, images)
onnxruntime_backend.OnnxRuntimeBackend.infer = slow
from edge.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_triggered_parts_dropped_by_a_live_camera_are_rejected(small_bundle, broker, tmp_path):
    """A live camera drops the oldest waiting frame when inference falls behind. In triggered
    mode that frame is a part the PLC asked about: it is answered with a reject."""
    bundle, _ = small_bundle
    frames = [cv2.imread(str(path)) for path in sorted((require(METAL_PLATE) / "train" / "good").glob("*.png"))[:3]]
    camera = MjpegCamera(frames, fps=20).start()
    subscriber = Subscriber(broker.port)
    station = f"  - station: trig\n    mode: triggered\n    trigger_timeout_s: 10\n    source: {{type: stream, url: '{camera.url}'}}\n"
    config = write_config(tmp_path / "config.yaml", bundle.path, broker.port, station, extra="workers: 1\nqueue_size: 1\n")
    process = start_daemon(config, launcher=SLOW_ENGINE_LAUNCHER)
    try:
        assert subscriber.reached("status", 1, timeout=30)
        time.sleep(1.0)
        parts = [f"T-{i}" for i in range(6)]
        for part in parts:
            subscriber.publish("edge/trig/trigger", part)
            time.sleep(0.2)
        subscriber.wait_for("result", len(parts), timeout=30)
        process.send_signal(signal.SIGTERM)
        output = finish(process, timeout=60)
    finally:
        camera.stop()
        if process.poll() is None:
            process.kill()
    answers = [json.loads(m.payload) for m in subscriber.on("result")]
    assert [p["part_id"] for p in answers] == parts  # every trigger answered, once, in order
    dropped = {p["part_id"] for p in answers if p["verdict"] == "not_inspected"}
    assert dropped and all(p["verdict"] in ("pass", "reject") for p in answers if p["part_id"] not in dropped)
    assert dropped <= {json.loads(m.payload)["part_id"] for m in subscriber.on("reject")}
    assert "inference behind, dropped" in output
    subscriber.close()


def _answered(frame: Frame, why: str) -> Answer:
    return Answer.not_inspected("s", frame.part_id or "", Outcome.NOT_INSPECTED, why, "b", frame)


def _frame(part_id: str) -> Frame:
    return Frame(None, 0, 0.0, part_id=part_id)


def test_pipeline_answers_every_frame_once_in_capture_order_and_a_close_leaves_none_between():
    pipeline = OrderedPipeline(2, _answered)
    assert pipeline.put(_frame("a"), blocking=False) == 0
    taken_a = pipeline.take(timeout=0)
    assert taken_a is not None and taken_a[0] == 0  # handed out: in flight until finished
    pipeline.put(_frame("b"), blocking=False)
    pipeline.put(_frame("c"), blocking=False)
    assert pipeline.put(_frame("d"), blocking=False) == 1  # a live camera drops the oldest (b), answered
    taken_c = pipeline.take(timeout=0)
    assert taken_c is not None and taken_c[1].part_id == "c"
    pipeline.answer(Answer.not_inspected("s", "T-1", Outcome.NO_FRAME, "no frame", "b"))  # a trigger's answer takes its turn
    c_done = Answer.of_inspection("s", taken_c[1], _pass_verdict(), "b", None)  # type: ignore[arg-type]
    assert pipeline.finish(taken_c[0], c_done)
    assert pipeline.ready(timeout=0) == []  # c and b wait for a, captured first
    # A stop: what is in flight (a) and what is queued (d), answered in one step.
    assert pipeline.close() == 2
    assert not pipeline.finish(taken_a[0], c_done)  # a worker that comes back late is not answered twice
    pipeline.put(_frame("e"), blocking=True)  # after the close: answered at once, never waits
    pipeline.end_input()
    answers = pipeline.ready(timeout=0)
    assert [a.part_id for a in answers] == ["a", "b", "c", "d", "T-1", "e"][: len(answers)]
    assert [(a.part_id, a.outcome) for a in answers] == [
        ("a", Outcome.NOT_INSPECTED), ("b", Outcome.NOT_INSPECTED), ("c", Outcome.PASS),
        ("d", Outcome.NOT_INSPECTED), ("T-1", Outcome.NO_FRAME), ("e", Outcome.NOT_INSPECTED),
    ]
    assert pipeline.drained and pipeline.exhausted


def _pass_verdict():
    from edge.decision import Verdict

    return Verdict(False, 0.5, 1.0, ())


CRASHING_CAMERA_LAUNCHER = """
import sys
from edge import capture
real = capture.FolderSource.read
calls = []
def crashing(self, frame_id, stop=None):
    calls.append(frame_id)
    if len(calls) == 3:
        raise RuntimeError("injected capture fault")
    return real(self, frame_id, stop)
capture.FolderSource.read = crashing
from edge.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_crashed_capture_loop_ends_the_daemon_with_failure(small_bundle, broker, tmp_path):
    """A capture loop that dies of an error ends its station as a source that ran out would. The
    daemon then stops by itself, and it must say failure: with exit 0, systemd's
    Restart=on-failure leaves the line uninspected and the unit reads as finished well."""
    bundle, _ = small_bundle
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    image = cv2.imread(str(sorted((require(METAL_PLATE) / "train" / "good").glob("*.png"))[0]))
    for i in range(5):
        cv2.imwrite(str(inbox / f"p{i}.png"), image)
    camera = f"  - station: cam\n    source: {{type: folder, path: {inbox}, poll_interval_s: 0.05}}\n"
    config = write_config(tmp_path / "config.yaml", bundle.path, broker.port, camera)
    process = start_daemon(config, launcher=CRASHING_CAMERA_LAUNCHER)
    output, _ = process.communicate(timeout=90)  # a folder never ends: only the crash stops it
    assert "injected capture fault" in output and "the capture loop crashed" in output, output[-3000:]
    assert process.returncode == 1 and "exiting with failure: cam/capture" in output, output[-3000:]


def test_a_part_file_leaves_the_folder_only_once_answered(small_bundle, broker, tmp_path):
    """With done_dir, a file moves there once its part's answer is recorded, not when it is read:
    a daemon killed mid-part (a power cut) inspects that part again on its next start."""
    bundle, _ = small_bundle
    inbox, done = tmp_path / "inbox", tmp_path / "done"
    inbox.mkdir()
    source = sorted((require(METAL_PLATE) / "test").glob("*/*.png"))[0]
    cv2.imwrite(str(inbox / "p00.png"), cv2.imread(str(source)))
    cv2.imwrite(str(inbox / "p01.png"), np.full((256, 256, 3), 32, np.uint8))  # hangs the engine
    (inbox / "p02.png").write_bytes(b"not an image")
    for i, name in enumerate(("p00.png", "p01.png", "p02.png")):
        os.utime(inbox / name, ns=(i * 10**9, i * 10**9))
    subscriber = Subscriber(broker.port)
    camera = f"  - station: cut\n    source: {{type: folder, path: {inbox}, done_dir: {done}, poll_interval_s: 0.05}}\n"
    config = write_config(tmp_path / "config.yaml", bundle.path, broker.port, camera, extra="workers: 1\n")
    process = start_daemon(config, launcher=HANGING_ENGINE_LAUNCHER, env={"INSPECTED_LOG": str(tmp_path / "inspected.log")})
    try:
        assert len(subscriber.wait_for("result", 1, timeout=60)) >= 1
        deadline = time.monotonic() + 10  # p00 moves just after its answer
        while time.monotonic() < deadline and not (done / "p00.png").exists():
            time.sleep(0.05)
        time.sleep(0.5)  # p02 is read and waits behind p01
        process.kill()  # the power cut, with p01 in the engine
        process.wait(10)
    finally:
        if process.poll() is None:
            process.kill()
    assert [p.name for p in done.iterdir()] == ["p00.png"]  # answered
    assert sorted(p.name for p in inbox.iterdir()) == ["p01.png", "p02.png"]  # not answered: still waiting

    restarted = start_daemon(config)  # the engine works again
    assert len(subscriber.wait_for("result", 3, timeout=60)) >= 3
    restarted.send_signal(signal.SIGTERM)
    finish(restarted, timeout=60)
    answers = [json.loads(m.payload) for m in subscriber.on("result")]
    assert [p["part_id"] for p in answers] == ["p00", "p01", "p02"]
    assert answers[2]["verdict"] == "error"  # unreadable: answered as a reject, in its turn
    assert sorted(p.name for p in done.iterdir()) == ["p00.png", "p01.png", "p02.png"]
    assert list(inbox.iterdir()) == []
    subscriber.close()
