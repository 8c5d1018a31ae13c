"""Faults against real processes: the broker restarted under a running line, the daemon killed
mid-write, and trigger payloads fuzzed. Sizes are small for CI; bench/faults.py runs them big."""
from __future__ import annotations

import json
import random
import signal
import threading
import time

import cv2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.station import parse_trigger
from tests.conftest import METAL_PLATE, SMALL_SIZE, require
from tests.mqtt_helpers import Broker, Subscriber, find_mosquitto
from tests.test_daemon_e2e import finish, start_daemon, write_config


def _parts_video(path, frames: int) -> None:
    """Real MPDD parts, good and defective, at the small bundle's size."""
    sources = sorted((require(METAL_PLATE) / "test").glob("*/*.png"))
    images = [cv2.resize(cv2.imread(str(p)), SMALL_SIZE[::-1]) for p in sources]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30, SMALL_SIZE[::-1])
    for i in range(frames):
        writer.write(images[(i * 7) % len(images)])
    writer.release()


def _audit(state) -> list[dict]:
    records = []
    for path in sorted((state / "audit").glob("*.jsonl*")):
        for line in path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                pass  # the reader skips a record torn by a power cut
    return records


@pytest.fixture
def persistent_broker(tmp_path):
    if find_mosquitto() is None:
        pytest.skip("mosquitto not installed (apt-get install -y mosquitto; make test installs it)")
    directory = tmp_path / "broker"
    directory.mkdir()
    broker = Broker(directory, persistent=True).start()
    yield broker
    broker.stop()


def test_broker_restarts_lose_no_reject(small_bundle, persistent_broker, tmp_path):
    """500 parts; Mosquitto stopped and restarted three times while they run. Every reject the
    daemon decided reaches a persistent subscriber, in order, once per part id at least."""
    bundle, _ = small_bundle
    parts = 500
    video = tmp_path / "line.avi"
    _parts_video(video, parts)
    subscriber = Subscriber(persistent_broker.port, client_id="plc", persistent=True)
    camera = f"  - station: line\n    source: {{type: file, path: {video}, fps: 40}}\n"
    config = write_config(tmp_path / "config.yaml", bundle.path, persistent_broker.port, camera, publish="{results: false, heatmaps: none, stats_interval_s: 1}")
    process = start_daemon(config)
    outages = []
    time.sleep(3)
    for _ in range(3):
        started = time.monotonic()
        persistent_broker.stop()
        time.sleep(1.5)
        persistent_broker.start()
        outages.append(time.monotonic() - started)
        time.sleep(2)
    output = finish(process, timeout=120)
    decided = [r for r in _audit(tmp_path / "state") if r.get("verdict") in ("pass", "reject")]
    expected = [r["part_id"] for r in decided if r["verdict"] == "reject"]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not set(expected) <= {json.loads(m.payload)["part_id"] for m in subscriber.on("reject")}:
        time.sleep(0.2)
    received = [json.loads(m.payload) for m in subscriber.on("reject")]
    subscriber.close()
    ids = [r["part_id"] for r in received]
    first_seen = list(dict.fromkeys(ids))
    lost = set(expected) - set(ids)
    print(f"parts {len(decided)}, rejects expected {len(expected)}, received {len(ids)}, duplicates {len(ids) - len(first_seen)}, lost {len(lost)}, late {sum(r['late'] for r in received)}")
    assert len(decided) == parts, "the daemon stopped inspecting while the broker was away"
    assert len(expected) >= 20, "too few rejects for the test to mean anything"
    assert not lost, f"rejects lost: {sorted(lost, key=int)[:10]}\n{output[-2000:]}"
    assert set(ids) <= set(expected), "a reject was delivered for a part the daemon passed"
    assert first_seen == [p for p in expected if p in set(ids)], "rejects arrived out of order"
    assert any(r["late"] for r in received), "nothing was marked late although the broker was down"


def test_power_cut_keeps_outbox_and_audit_and_sends_the_rest(small_bundle, tmp_path):
    """SIGKILL while rejects pile up with no broker: nothing torn, and the next start delivers
    every acknowledged-to-disk reject."""
    if find_mosquitto() is None:
        pytest.skip("mosquitto not installed")
    bundle, _ = small_bundle
    video = tmp_path / "line.avi"
    _parts_video(video, 300)
    directory = tmp_path / "broker"
    directory.mkdir()
    broker = Broker(directory)  # not started: the line runs while the broker is down
    camera = f"  - station: line\n    source: {{type: file, path: {video}, fps: 60}}\n"
    config = write_config(tmp_path / "config.yaml", bundle.path, broker.port, camera, publish="{results: false, heatmaps: none}")
    process = start_daemon(config)
    outbox = tmp_path / "state" / "outbox" / "line"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(list(outbox.glob("*.json"))) < 10:
        time.sleep(0.1)
    process.send_signal(signal.SIGKILL)
    process.wait(10)
    pending = sorted(outbox.glob("*.json"))
    assert len(pending) >= 10
    stored = [json.loads(p.read_text()) for p in pending]  # a torn file would raise here
    audited = {r["part_id"] for r in _audit(tmp_path / "state") if r.get("verdict") == "reject"}
    assert {s["payload"]["part_id"] for s in stored} >= audited - {max(audited, key=int, default=None)}

    broker.start()
    try:
        subscriber = Subscriber(broker.port)
        empty = tmp_path / "empty.avi"
        _parts_video(empty, 1)
        config = write_config(tmp_path / "config.yaml", bundle.path, broker.port, f"  - station: line\n    source: {{type: file, path: {empty}}}\n", publish="{results: false, heatmaps: none}")
        finish(start_daemon(config), timeout=60)
        # Part ids restart with the new run's frame numbers, so only the late copies are the old parts'.
        late = {json.loads(m.payload)["part_id"] for m in subscriber.wait_for("reject", len(stored), timeout=20) if json.loads(m.payload)["late"]}
        subscriber.close()
    finally:
        broker.stop()
    assert {s["payload"]["part_id"] for s in stored} <= late, "a reject stored before the power cut never went out (marked late)"
    assert not list(outbox.glob("*.json")), "delivered rejects stayed in the outbox"


@settings(max_examples=2000, deadline=None)
@given(st.one_of(st.binary(max_size=400), st.text(max_size=300).map(str.encode), st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.sampled_from(["part_id", "id", "x"]) | st.text(max_size=5), children, max_size=4),
    max_leaves=12,
).map(lambda v: json.dumps(v).encode())))
def test_trigger_parser_never_raises(payload):
    part_id = parse_trigger(payload)
    assert part_id is None or (isinstance(part_id, str) and part_id and part_id == part_id.strip() and "\n" not in part_id and len(part_id) <= 256)


def test_fuzzed_triggers_do_not_stall_inspection(small_bundle, broker, tmp_path):
    """Hundreds of hostile trigger payloads on a running triggered station, then real triggers:
    each real one is answered and the daemon exits cleanly."""
    from tests.mqtt_helpers import Subscriber

    bundle, _ = small_bundle
    video = tmp_path / "loop.avi"
    _parts_video(video, 10)
    subscriber = Subscriber(broker.port)
    camera = f"  - station: fuzz\n    mode: triggered\n    trigger_timeout_s: 5\n    source: {{type: file, path: {video}, loop: true, fps: 30}}\n"
    process = start_daemon(write_config(tmp_path / "config.yaml", bundle.path, broker.port, camera))
    assert subscriber.wait_for("status", 1, timeout=30)
    rng = random.Random(7)
    hostile = [bytes(rng.randrange(256) for _ in range(rng.randrange(0, 600))) for _ in range(300)]
    hostile += [b"", b"{}", b"[]", b"null", b'{"part_id": null}', b'{"part_id": ""}', b"\x00" * 100, b"x" * 100_000, b'{"part_id": "a\\nb"}']
    sender = threading.Thread(target=lambda: [subscriber.client.publish("edge/fuzz/trigger", p, qos=0) for p in hostile])
    sender.start()
    sender.join()
    for i in range(3):
        subscriber.publish("edge/fuzz/trigger", f"REAL-{i}")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len({json.loads(m.payload)["part_id"] for m in subscriber.on("result")} & {f"REAL-{i}" for i in range(3)}) < 3:
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    finish(process, timeout=60)
    answered = {json.loads(m.payload)["part_id"] for m in subscriber.on("result")}
    assert {f"REAL-{i}" for i in range(3)} <= answered
    stats = [json.loads(m.payload) for m in subscriber.on("stats")]
    assert stats and max(s["bad_triggers"] for s in stats) > 100, "hostile triggers were not refused and counted"


def test_folder_camera_lost_and_back_with_bad_files(small_bundle, broker, tmp_path):
    """The watched folder disappears (unmounted) and comes back: status says so, new parts are
    inspected within 5 s of its return. Empty, corrupt, tiny and 16-bit files are counted,
    skipped or inspected, never fatal."""
    import numpy as np

    bundle, _ = small_bundle
    folder = tmp_path / "drop"
    folder.mkdir()
    good = sorted((require(METAL_PLATE) / "train" / "good").glob("*.png"))
    cv2.imwrite(str(folder / "P-1.png"), cv2.imread(str(good[0])))
    (folder / "P-2.png").write_bytes(b"")  # empty
    (folder / "P-3.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")  # corrupt
    cv2.imwrite(str(folder / "P-4.png"), (np.random.default_rng(0).integers(0, 65535, (120, 90)).astype(np.uint16)))  # 16-bit gray
    cv2.imwrite(str(folder / "P-5.png"), np.zeros((2, 2, 3), np.uint8))  # tiny
    subscriber = Subscriber(broker.port)
    camera = f"  - station: drop\n    source: {{type: folder, path: {folder}, poll_interval_s: 0.1}}\n"
    process = start_daemon(write_config(tmp_path / "config.yaml", bundle.path, broker.port, camera))
    try:
        assert subscriber.wait_for("result", 2, timeout=30)
        time.sleep(1.0)
        folder.rename(tmp_path / "unmounted")
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not any(json.loads(m.payload)["camera"] == "lost" for m in subscriber.on("stats")):
            time.sleep(0.1)
        assert any(json.loads(m.payload)["camera"] == "lost" for m in subscriber.on("stats")), "status never said the camera was lost"
        assert process.poll() is None, "the daemon died when its camera went away"
        (tmp_path / "unmounted").rename(folder)
        returned = time.monotonic()
        cv2.imwrite(str(folder / "P-6.png"), cv2.imread(str(good[1])))
        while time.monotonic() < returned + 15 and "P-6" not in {json.loads(m.payload)["part_id"] for m in subscriber.on("result")}:
            time.sleep(0.05)
        recovery = time.monotonic() - returned
    finally:
        process.send_signal(signal.SIGTERM)
        output = finish(process, timeout=60)
    results = {json.loads(m.payload)["part_id"] for m in subscriber.on("result")}
    assert {"P-1", "P-4", "P-6"} <= results
    assert recovery < 5.0 + 0.5, f"took {recovery:.1f} s to inspect a part after the folder came back"
    assert "P-2.png" in output and "P-3.png" in output, "bad files are not named in the log"
    stats = [json.loads(m.payload) for m in subscriber.on("stats")]
    assert max(s["bad_frames"] for s in stats) >= 3
    assert "Traceback" not in output
