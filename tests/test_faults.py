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

from edge.triggers import parse_trigger
from tests.conftest import METAL_PLATE, require, run_scenario
from tests.mqtt_helpers import Subscriber
from tests.scenarios import broker_outages, parts_video, power_cuts
from tests.test_daemon_e2e import finish, start_daemon, write_config


def test_broker_restarts_lose_no_reject(small_bundle, tmp_path):
    """500 parts; Mosquitto stopped and restarted three times while they run. Every reject the
    daemon decided reaches a persistent subscriber, in order, once per part id at least."""
    bundle, _ = small_bundle
    report = run_scenario(broker_outages, bundle, tmp_path, parts=500, outages=3)
    assert report.parts == 500, "the daemon stopped inspecting while the broker was away"
    assert report.rejects_expected >= 20, "too few rejects for the test to mean anything"
    assert report.lost == 0, f"rejects lost: {report.details['lost_examples']}\n{report.log[-2000:]}"
    assert report.details["unexpected"] == 0, "a reject was delivered for a part the daemon passed"
    assert report.out_of_order == 0, "rejects arrived out of order"
    assert report.late > 0, "nothing was marked late although the broker was down"
    assert len(report.recovery_s) == 3, "rejects stopped coming after a broker restart"


def test_power_cut_keeps_outbox_and_audit_and_sends_the_rest(small_bundle, tmp_path):
    """SIGKILL while rejects pile up with no broker, twice: nothing torn, and the next start
    delivers every reject that reached the disk, marked late."""
    bundle, _ = small_bundle
    report = run_scenario(power_cuts, bundle, tmp_path, cuts=2, rejects_per_cut=10)
    d = report.details
    assert d["stored_before_restart"] >= 20
    assert d["torn_outbox_files"] == 0, "a reject file in the outbox was torn"
    # edge/audit.py's promise: a cut tears at most the line being written, and the next record
    # starts on a new line (so only that line is lost).
    assert d["torn_audit_lines"] <= 2, f"{d['torn_audit_lines']} torn audit lines after 2 cuts"
    assert d["audited_rejects_not_in_outbox"] == 0, "a reject in the audit log never reached the outbox"
    assert report.lost == 0, f"stored rejects never went out: {d.get('lost_examples')}\n{report.log[-2000:]}"
    assert d["outbox_left_after_delivery"] == 0, "delivered rejects stayed in the outbox"


@settings(max_examples=2000, deadline=None)
@given(st.one_of(st.binary(max_size=400), st.text(max_size=300).map(str.encode), st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.sampled_from(["part_id", "id", "x"]) | st.text(max_size=5), children, max_size=4),
    max_leaves=12,
).map(lambda v: json.dumps(v).encode())))
def test_trigger_parser_never_raises(payload):
    trigger = parse_trigger(payload)
    part_id = trigger.part_id if trigger is not None else None
    assert part_id is None or (isinstance(part_id, str) and part_id and part_id == part_id.strip() and "\n" not in part_id and len(part_id) <= 256)


def test_fuzzed_triggers_do_not_stall_inspection(small_bundle, broker, tmp_path):
    """Hundreds of hostile trigger payloads on a running triggered station, then real triggers:
    each real one is answered and the daemon exits cleanly."""
    from tests.mqtt_helpers import Subscriber

    bundle, _ = small_bundle
    video = parts_video(tmp_path / "loop.avi", 10, bundle.manifest.input_size)
    subscriber = Subscriber(broker.port)
    camera = f"  - station: fuzz\n    mode: triggered\n    trigger_timeout_s: 5\n    source: {{type: file, path: {video}, loop: true, fps: 30}}\n"
    process = start_daemon(write_config(tmp_path / "config.yaml", bundle.path, broker.port, camera))
    assert subscriber.reached("status", 1, timeout=30)
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
    """The watched folder disappears (unmounted) and comes back: status says so, and new parts are
    inspected after its return (how fast is measured by bench/faults.py camera_loss_folder, not
    asserted here). Empty, corrupt and tiny files are answered as errors and counted; a 16-bit file
    is inspected; none is fatal."""
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
        assert subscriber.reached("result", 2, timeout=30)
        time.sleep(1.0)
        folder.rename(tmp_path / "unmounted")
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not any(json.loads(m.payload)["camera"] == "lost" for m in subscriber.on("stats")):
            time.sleep(0.1)
        assert any(json.loads(m.payload)["camera"] == "lost" for m in subscriber.on("stats")), "status never said the camera was lost"
        assert process.poll() is None, "the daemon died when its camera went away"
        (tmp_path / "unmounted").rename(folder)
        cv2.imwrite(str(folder / "P-6.png"), cv2.imread(str(good[1])))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and "P-6" not in {json.loads(m.payload)["part_id"] for m in subscriber.on("result")}:
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGTERM)
        output = finish(process, timeout=60)
    answers = {json.loads(m.payload)["part_id"]: json.loads(m.payload) for m in subscriber.on("result")}
    assert {"P-1", "P-4"} <= set(answers)
    assert "P-6" in answers, "a part dropped after the folder came back was never inspected"
    assert all(answers[p]["verdict"] in ("pass", "reject") for p in ("P-1", "P-4", "P-6")), "a readable part (16-bit included) was not inspected"
    # Empty, corrupt and tiny files are parts the line delivered: each is answered, as an error.
    assert all(answers[p]["verdict"] == "error" for p in ("P-2", "P-3", "P-5")), answers
    assert "P-2.png" in output and "P-3.png" in output, "bad files are not named in the log"
    stats = [json.loads(m.payload) for m in subscriber.on("stats")]
    assert max(s["bad_frames"] for s in stats) >= 3
    assert "Traceback" not in output


def test_a_part_in_flight_is_not_read_again_when_its_folder_blinks(tmp_path):
    """A network mount that briefly shows an empty folder makes the source forget what it has
    seen; a part still being inspected must not come round a second time."""
    from edge.capture import FolderSource, NoFrameYet
    from edge.config import source_config

    folder, done = tmp_path / "drop", tmp_path / "done"
    folder.mkdir()
    cv2.imwrite(str(folder / "A-1.png"), cv2.imread(str(sorted((require(METAL_PLATE) / "train" / "good").glob("*.png"))[0])))
    source = FolderSource(source_config(type="folder", path=str(folder), done_dir=str(done), poll_interval_s=0.01))
    source.open()
    first = source.read(0)
    assert first.part_id == "A-1" and first.image is not None
    folder.rename(tmp_path / "away")  # the mount blinks: an empty mountpoint
    folder.mkdir()
    with pytest.raises(NoFrameYet):
        source.read(1)
    folder.rmdir()
    (tmp_path / "away").rename(folder)
    with pytest.raises(NoFrameYet):
        source.read(1)  # A-1 is back in view, but still in flight
    source.finish(first)  # answered: now it may leave
    assert [p.name for p in done.iterdir()] == ["A-1.png"] and list(folder.iterdir()) == []


def test_a_file_that_leaves_while_the_folder_is_listed_is_skipped(tmp_path):
    """The publisher moves an answered part's file to done_dir while the capture thread lists the
    folder (a line's cleanup job deleting files does the same): the file is gone by the time its
    age is read. It is no candidate then; the capture loop must not die of it (it did: the daemon
    then exited 0, as if the source had ended, and systemd left the line uninspected)."""
    from edge.capture import FolderSource, NoFrameYet
    from edge.config import source_config

    class AnsweredWhileListed(FolderSource):
        """Answers the part in flight exactly between the folder's listing and the stat of its
        entries, the interleaving the publisher thread hits by chance."""

        in_flight = None

        def _say_ignored(self, others):
            super()._say_ignored(others)
            if self.in_flight is not None:
                self.finish(self.in_flight)
                self.in_flight = None

    folder, done = tmp_path / "drop", tmp_path / "done"
    folder.mkdir()
    image = cv2.imread(str(sorted((require(METAL_PLATE) / "train" / "good").glob("*.png"))[0]))
    cv2.imwrite(str(folder / "A-1.png"), image)
    source = AnsweredWhileListed(source_config(type="folder", path=str(folder), done_dir=str(done), poll_interval_s=0.01))
    source.open()
    first = source.read(0)
    assert first.part_id == "A-1"
    cv2.imwrite(str(folder / "A-2.png"), image)
    source.in_flight = first
    second = source.read(1)  # A-1 leaves during this listing; A-2 is the next part
    assert second.part_id == "A-2"
    source.in_flight = second
    with pytest.raises(NoFrameYet):
        source.read(2)
    assert sorted(p.name for p in done.iterdir()) == ["A-1.png", "A-2.png"] and list(folder.iterdir()) == []


def test_new_rejects_do_not_overtake_older_ones_while_the_outbox_is_flushed(small_bundle, tmp_path):
    """The broker comes back to thousands of stored rejects. While the daemon sends them, the line
    keeps rejecting parts: those new rejects must reach the PLC after every older one. Results
    (not kept while the broker is away) are logged and counted as dropped."""
    import numpy as np

    from tests.mqtt_helpers import Broker

    bundle, _ = small_bundle
    (tmp_path / "broker").mkdir()
    broker = Broker(tmp_path / "broker", persistent=True).start()
    plc = Subscriber(broker.port, client_id="plc", persistent=True)  # the broker queues for it while it is away
    broker.stop()
    stored = 3000  # left by an earlier run: enough that sending them takes a while
    outbox = tmp_path / "state" / "outbox" / "line"
    outbox.mkdir(parents=True)
    for sequence in range(1, stored + 1):
        message = {"sequence": sequence, "topic": "edge/line/reject", "payload": {"part_id": f"old-{sequence:04d}", "verdict": "reject", "late": False}}
        (outbox / f"{sequence:012d}.json").write_text(json.dumps(message))
    noise = np.random.default_rng(0)
    video = tmp_path / "noise.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 30, (64, 64))
    for _ in range(600):
        writer.write(noise.integers(0, 256, (64, 64, 3), dtype=np.uint8))  # every frame a reject
    writer.release()
    camera = f"  - station: line\n    source: {{type: file, path: {video}, fps: 40}}\n"
    config = write_config(tmp_path / "config.yaml", bundle.path, broker.port, camera, publish="{results: true, heatmaps: none, stats_interval_s: 1}")
    process = start_daemon(config)
    try:
        time.sleep(8)  # the station inspects (and stores rejects) before the broker is back
        broker.start()
        output = finish(process, timeout=120)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(plc.on("reject")) < stored + 500:
            time.sleep(0.2)
    finally:
        broker.stop()
    part_ids = [json.loads(m.payload)["part_id"] for m in plc.on("reject")]
    plc.close()  # on() still answers from what was received
    old = [p for p in part_ids if p.startswith("old-")]
    new = [int(p) for p in part_ids if not p.startswith("old-")]
    assert len(old) == stored and len(new) >= 500, f"{len(old)} stored and {len(new)} new rejects arrived\n{output[-2000:]}"
    first_new = next(i for i, p in enumerate(part_ids) if not p.startswith("old-"))
    assert all(p.startswith("old-") for p in part_ids[:first_new]) and len(part_ids[:first_new]) == stored, (
        f"a new reject overtook stored ones: {[p for p in part_ids[first_new:] if p.startswith('old-')][:5]} arrived after part {part_ids[first_new]}"
    )
    assert new == sorted(new), "new rejects arrived out of capture order"
    # Results are not kept while the broker is away; that is said and counted, not silent.
    stats = [json.loads(m.payload) for m in plc.on("stats")]
    assert stats and max(s["results_dropped"] for s in stats) > 0, "results dropped during the outage are not counted on stats"
    assert "not published" in output, "results dropped during the outage are not logged"
