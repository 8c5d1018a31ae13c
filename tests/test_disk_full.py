"""A full disk under the state directory (a real tmpfs of a few hundred KiB) while the broker is
away: the daemon keeps inspecting, drops the oldest audit records to make room, keeps every
undelivered reject, says so in the log and the stats, and delivers every reject once the broker
is back."""
from __future__ import annotations

from tests.conftest import run_scenario
from tests.scenarios import disk_full


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
