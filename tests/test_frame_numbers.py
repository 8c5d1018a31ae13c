"""Free-run part ids are frame numbers that a restart never reuses: rejects still in the outbox
from the last run must not share an id with new parts (a PLC dedupes by part id)."""
from __future__ import annotations

import json
import logging

from edge.frame_numbers import FrameNumbers
from tests.mqtt_helpers import Subscriber
from tests.scenarios import parts_video
from tests.test_daemon_e2e import finish, start_daemon, write_config


def _count(numbers: FrameNumbers, frames: int) -> list[int]:
    taken = []
    for _ in range(frames):
        taken.append(numbers.current())
        numbers.advance()
    return taken


def test_numbers_continue_past_the_reserved_block_after_a_restart(tmp_path):
    path = tmp_path / "frame_numbers" / "line"
    first = FrameNumbers(path, block=10)
    assert first.current() == first.current() == 0, "current() must not use a number up"
    assert _count(first, 15) == list(range(15))
    assert path.read_text().strip() == "20", "the block in use must be reserved on disk before its numbers are handed out"
    restarted = FrameNumbers(path, block=10)
    assert _count(restarted, 3) == [20, 21, 22]
    assert path.read_text().strip() == "30"


def test_an_unreadable_reservation_is_said_and_counting_goes_on(tmp_path, caplog):
    path = tmp_path / "line"
    path.write_text("garbage")
    with caplog.at_level(logging.WARNING):
        numbers = FrameNumbers(path, block=10)
    assert _count(numbers, 2) == [0, 1]
    assert str(path) in caplog.text and "may repeat" in caplog.text
    assert path.read_text().strip() == "10"


def test_a_restarted_daemon_gives_new_parts_new_ids(small_bundle, broker, tmp_path):
    bundle, _ = small_bundle
    video = parts_video(tmp_path / "line.avi", 12, bundle.manifest.input_size)
    subscriber = Subscriber(broker.port)
    camera = f"  - station: line\n    source: {{type: file, path: {video}, fps: 30}}\n"
    config = write_config(tmp_path / "config.yaml", bundle.path, broker.port, camera)
    runs = []
    for _ in range(2):
        seen = len(subscriber.on("result"))
        finish(start_daemon(config))  # the video ends, and so does the daemon
        subscriber.wait_for("result", seen + 12, timeout=30)
        runs.append([json.loads(m.payload)["part_id"] for m in subscriber.on("result")[seen:]])
    subscriber.close()
    assert runs[0] == [str(i) for i in range(12)], "a new station counts its parts from 0"
    assert len(runs[1]) == 12 and not set(runs[0]) & set(runs[1]), f"the restart reused part ids: {runs[1]}"
    assert [int(p) for p in runs[1]] == sorted(int(p) for p in runs[1])


def test_a_station_upgraded_with_old_state_starts_past_the_ids_it_still_holds(tmp_path):
    """State from before frame numbers were kept: the audit log and the outbox name frame
    numbers of the last run; the first start counts on from the highest of them."""
    from edge.audit import AuditLog
    from edge.daemon import first_unused_frame_number
    from edge.outbox import Outbox

    audit = AuditLog(tmp_path / "audit" / "line.jsonl", max_bytes=10**6, backups=2)
    for frame_id in (39, 40, 41):
        audit.append({"part_id": str(frame_id), "frame_id": frame_id, "verdict": "pass"})
    audit.close()
    with open(tmp_path / "audit" / "line.jsonl", "a") as handle:
        handle.write('{"part_id": "42", "frame_i')  # torn by a power cut
    outbox = Outbox(tmp_path / "outbox" / "line")
    outbox.put("edge/line/reject", {"part_id": "57", "frame_id": 57, "verdict": "reject"})  # an older run's late reject
    outbox.put("edge/line/reject", {"part_id": "B-1", "frame_id": None, "verdict": "no_frame"})
    audit = AuditLog(tmp_path / "audit" / "line.jsonl", max_bytes=10**6, backups=2)
    path = tmp_path / "frame_numbers" / "line"

    numbers = FrameNumbers(path, block=10, first_if_new=lambda: first_unused_frame_number(audit, outbox))
    assert numbers.current() == 58
    # Once the station has its file, that file alone decides.
    assert FrameNumbers(path, block=10, first_if_new=lambda: 10**9).current() == 68
    empty = tmp_path / "empty"
    assert first_unused_frame_number(AuditLog(empty / "a.jsonl", 10**6, 2), Outbox(empty / "outbox")) == 0
