"""A full disk under the state directory (a real tmpfs of a few hundred KiB) while the broker is
away: the daemon keeps inspecting, drops the oldest audit records to make room, keeps every
undelivered reject, says so in the log and the stats, and delivers every reject once the broker
is back."""
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import cv2
import pytest

from tests.mqtt_helpers import Subscriber
from tests.test_daemon_e2e import finish, offline_scores, start_daemon, write_config
from tests.test_faults import _audit, _parts_video, persistent_broker  # noqa: F401 (fixture)


@pytest.fixture
def small_disk(tmp_path):
    """A 640 KiB tmpfs, mounted for the test (needs root, as CI and this sandbox have)."""
    mount_point = tmp_path / "state"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=640k", "tmpfs", str(mount_point)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill (needs root): {mounted.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


def _read_frames(video: Path) -> list:
    capture, frames = cv2.VideoCapture(str(video)), []
    while True:
        ok, frame = capture.read()
        if not ok:
            return frames
        frames.append(frame)


def test_full_disk_drops_old_audit_records_never_a_reject(small_bundle, persistent_broker, small_disk, tmp_path):
    bundle, _ = small_bundle
    parts = 600  # 15 s at 40 fps: the broker is back well before the end
    video = tmp_path / "line.avi"
    _parts_video(video, parts)
    scores = offline_scores(bundle, _read_frames(video))
    expected = {str(i) for i, score in enumerate(scores) if score > bundle.manifest.thresholds.image}
    assert len(expected) >= 40, "too few rejects for the test to mean anything"

    # Leave about 100 KiB: less than the audit records and the outbox of the outage need.
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * (540 * 1024))
    subscriber = Subscriber(persistent_broker.port, client_id="plc", persistent=True)
    camera = f"  - station: line\n    source: {{type: file, path: {video}, fps: 40}}\n"
    config = write_config(
        tmp_path / "config.yaml", bundle.path, persistent_broker.port, camera,
        extra="audit_max_bytes: 10000\naudit_backups: 50\n", publish="{results: false, heatmaps: none, stats_interval_s: 1}",
    )
    process = start_daemon(config)
    time.sleep(4)
    persistent_broker.stop()  # rejects now pile up in the outbox on the full disk
    time.sleep(4)
    persistent_broker.start()
    output = finish(process, timeout=120)

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not expected <= {json.loads(m.payload)["part_id"] for m in subscriber.on("reject")}:
        time.sleep(0.2)
    received = {json.loads(m.payload)["part_id"] for m in subscriber.on("reject")}
    stats = [json.loads(m.payload) for m in subscriber.on("stats")]
    subscriber.close()
    assert not expected - received, f"rejects lost: {sorted(expected - received, key=int)[:10]}\n{output[-3000:]}"
    assert "disk full: deleted the oldest audit records" in output, output[-3000:]
    assert any(s.get("disk_full") for s in stats), f"the stats never said the disk was full: {stats[-3:]}"

    # What survives in the audit log is the newest: the last part is there, the first is gone.
    audited = [int(r["part_id"]) for r in _audit(small_disk) if r.get("verdict") in ("pass", "reject")]
    assert audited and max(audited) == parts - 1
    assert min(audited) > 0, "the oldest audit records should have made room"
    assert not list((small_disk / "outbox" / "line").glob("*.json")), "delivered rejects left in the outbox"
