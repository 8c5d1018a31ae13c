"""A shortened soak (bench/faults.py runs 20,000 frames): 2,000 parts through the real daemon with
results and reject heatmaps published. Every frame is inspected, threads and open files do not
grow, resident memory grows less than 5% after the first 500 parts."""
from __future__ import annotations

from tests.conftest import run_scenario
from tests.scenarios import soak


def test_two_thousand_parts_leave_no_trace(small_bundle, tmp_path):
    bundle, _ = small_bundle
    report = run_scenario(soak, bundle, tmp_path, frames=2000, fps=50, warmup=500, sample_s=0.5)
    d = report.details
    assert report.parts >= 2000 and d["missing_frame_ids"] == 0, f"parts skipped: {d['missing_frame_ids']}\n{report.log[-2000:]}"
    assert d["daemon_alive_throughout"] and d["exit_code"] == 0, report.log[-3000:]
    assert d["threads_after_warmup"][0] == d["threads_after_warmup"][1], f"thread count changed: {d['threads_after_warmup']}"
    assert d["fds_after_warmup"][1] - d["fds_after_warmup"][0] <= 1, f"open files grew: {d['fds_after_warmup']}"
    assert d["rss_growth_pct"] < 5.0, f"resident memory grew {d['rss_growth_pct']}% ({d['rss_mib_after_warmup']} -> {d['rss_mib_end']} MiB)"
