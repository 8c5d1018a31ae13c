"""A full disk under the state directory (a real tmpfs of a few hundred KiB): the daemon keeps
inspecting, drops the oldest audit records to make room, keeps every undelivered reject, says so in
the log and the stats, delivers every reject once the broker is back, and leaves a folder part in
place while its answer is not on disk."""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import time

import cv2
import numpy as np
import pytest

from tests.conftest import METAL_PLATE, require, run_scenario
from tests.mqtt_helpers import Subscriber
from tests.scenarios import disk_full
from tests.test_daemon_e2e import finish, start_daemon, write_config


def test_full_disk_drops_old_audit_records_never_a_reject(small_bundle, tmp_path):
    bundle, _ = small_bundle
    parts = 600  # 15 s at 40 fps: the broker is back well before the end
    report = run_scenario(disk_full, bundle, tmp_path, parts=parts, outage_s=4.0, disk_kib=640, free_kib=100)
    d = report.details
    assert report.rejects_expected >= 40, "too few rejects for the test to mean anything"
    assert report.lost == 0, f"rejects lost: {d.get('lost_examples')}\n{report.log[-3000:]}"
    assert d["log_said_disk_full"], report.log[-3000:]
    assert d["stats_said_disk_full"], "the stats never said the disk was full"
    # What survives in the audit log is the newest: the last part is there, the first is gone.
    assert d["newest_audit_part_kept"] == parts - 1
    assert d["oldest_audit_part_kept"] > 0, "the oldest audit records should have made room"
    assert d["outbox_left_after_delivery"] == 0, "delivered rejects left in the outbox"


def test_a_part_whose_answer_the_full_disk_refused_stays_in_the_folder(small_bundle, broker, tmp_path):
    """Folder source with done_dir: a file leaves the folder only once its answer is on disk. With
    the state directory full, the reject still reaches the PLC (from memory) but the file stays, so
    the restart inspects it again; once there is room, parts move as usual."""
    bundle, _ = small_bundle
    state = tmp_path / "state"
    state.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(state)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill (needs root): {mounted.stderr.strip()}")
    try:
        ballast = os.open(state / "ballast", os.O_WRONLY | os.O_CREAT)
        try:
            while os.write(ballast, b"\0" * 4096):
                pass
        except OSError as error:
            assert error.errno == errno.ENOSPC
        finally:
            os.close(ballast)
        inbox, done = tmp_path / "inbox", tmp_path / "done"
        inbox.mkdir()
        good = sorted((require(METAL_PLATE) / "train" / "good").glob("*.png"))
        cv2.imwrite(str(inbox / "BAD-1.png"), np.random.default_rng(1).integers(0, 256, (256, 256, 3), dtype=np.uint8))
        cv2.imwrite(str(inbox / "GOOD-1.png"), cv2.imread(str(good[0])))
        subscriber = Subscriber(broker.port)
        camera = f"  - station: drop\n    source: {{type: folder, path: {inbox}, done_dir: {done}, poll_interval_s: 0.1}}\n"
        process = start_daemon(write_config(tmp_path / "config.yaml", bundle.path, broker.port, camera))
        try:
            assert subscriber.reached("result", 2, timeout=60), "the two parts were not answered"
            assert subscriber.reached("reject", 1, timeout=10), "the reject refused by the full disk never reached the PLC"
            assert sorted(p.name for p in inbox.iterdir()) == ["BAD-1.png", "GOOD-1.png"], "a part whose answer is not on disk left the folder"
            assert not done.exists() or list(done.iterdir()) == []
            (state / "ballast").unlink()
            cv2.imwrite(str(inbox / "GOOD-2.png"), cv2.imread(str(good[1])))
            assert subscriber.reached("result", 3, timeout=30), "a part dropped after the disk had room was not answered"
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not (done / "GOOD-2.png").exists():
                time.sleep(0.05)
        finally:
            process.send_signal(signal.SIGTERM)
            output = finish(process, timeout=60)
        first_run = [json.loads(m.payload) for m in subscriber.on("result")]
        moved_in_first_run = sorted(p.name for p in done.iterdir())
        left_in_first_run = sorted(p.name for p in inbox.iterdir())

        # The restart the kept files are for: with room on the disk they are answered and move.
        restarted = start_daemon(write_config(tmp_path / "config.yaml", bundle.path, broker.port, camera))
        try:
            subscriber.reached("result", 5, timeout=60)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and any(inbox.iterdir()):
                time.sleep(0.05)
        finally:
            restarted.send_signal(signal.SIGTERM)
            finish(restarted, timeout=60)
    finally:
        subprocess.run(["umount", "-l", str(state)], capture_output=True)
    assert [a["part_id"] for a in first_run] == ["BAD-1", "GOOD-1", "GOOD-2"], "a kept part was inspected twice in one run"
    assert first_run[0]["verdict"] == "reject" and first_run[1]["verdict"] == "pass"
    assert moved_in_first_run == ["GOOD-2.png"], "once the disk had room, the answered part should have moved"
    assert left_in_first_run == ["BAD-1.png", "GOOD-1.png"]
    assert "BAD-1" in output and "stays in the folder" in output, output[-3000:]
    second_run = [json.loads(m.payload) for m in subscriber.on("result")][len(first_run):]
    assert sorted(a["part_id"] for a in second_run) == ["BAD-1", "GOOD-1"], "after the restart the kept parts were not inspected again"
    assert sorted(p.name for p in done.iterdir()) == ["BAD-1.png", "GOOD-1.png", "GOOD-2.png"] and not any(inbox.iterdir())
