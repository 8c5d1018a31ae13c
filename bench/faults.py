"""Faults and soak at full size, against the real daemon, Mosquitto, a network camera and a tmpfs.

The scenarios are the ones the tests run small (tests/scenarios.py); here they run long:
  broker_outage       Mosquitto stopped and restarted many times under a long run
  power_cut           the daemon SIGKILLed repeatedly while rejects pile up on disk
  camera_loss_stream  an MJPEG network camera switched off and its cable pulled, repeatedly
  camera_loss_folder  a watched folder unmounted and remounted, repeatedly
  disk_full           the state directory on a tmpfs that fills while the broker is away
  stuck_inference     an engine call that never returns: the watchdog ping must stop
  soak                20,000 parts through a 256x256 EfficientNet-Lite0 bundle
The fault scenarios use a 64x64 bundle (the faults are in the plumbing, and small frames put
more parts and rejects through each outage); the soak uses the product's default input size.

  python bench/faults.py [--only soak broker_outage ...] [--soak-frames 20000] [--soak-fps 15]
Writes bench/results/faults.json and prints one table. A benchmark, not a test.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.quality import machine, write_results  # noqa: E402
from bench.speed import make_bundle  # noqa: E402
from engines.bundle import open_bundle  # noqa: E402
from tests import scenarios  # noqa: E402

ENCODER = "efficientnet-lite0"

SCENARIOS = ["broker_outage", "power_cut", "camera_loss_stream", "camera_loss_folder", "disk_full", "stuck_inference", "soak"]


def run(name: str, args, small, large, work: Path) -> scenarios.ScenarioReport:
    work.mkdir(parents=True)
    if name == "broker_outage":
        return scenarios.broker_outages(small, work, parts=args.parts, outages=args.outages, outage_s=3.0, between_s=3.0, fps=40)
    if name == "power_cut":
        return scenarios.power_cuts(small, work, cuts=5, rejects_per_cut=20, parts=600)
    if name == "camera_loss_stream":
        return scenarios.camera_losses(small, work, source="stream", losses=["stop", "stall"] * 3, down_s=5.0)
    if name == "camera_loss_folder":
        return scenarios.camera_losses(small, work, source="folder", losses=["unmount"] * 3, down_s=5.0)
    if name == "disk_full":
        return scenarios.disk_full(small, work, parts=args.parts, outage_s=10.0, disk_kib=1024, free_kib=150)
    if name == "stuck_inference":
        return scenarios.stuck_inference(small, work, waiting_s=20.0, watchdog_s=2.0)
    if name == "soak":
        progress = lambda done, total: print(f"soak: {done}/{total} parts", file=sys.stderr, flush=True)  # noqa: E731
        return scenarios.soak(large, work, frames=args.soak_frames, fps=args.soak_fps, warmup=1000, sample_s=2.0, progress=progress)
    raise ValueError(name)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", choices=SCENARIOS, default=SCENARIOS)
    parser.add_argument("--parts", type=int, default=2000, help="parts in the broker outage and disk full runs")
    parser.add_argument("--outages", type=int, default=8)
    parser.add_argument("--soak-frames", type=int, default=20_000)
    parser.add_argument("--soak-fps", type=float, default=15.0, help="camera rate of the soak; below what the machine sustains")
    parser.add_argument("--soak-size", type=int, default=256)
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "faults.json")
    args = parser.parse_args()
    measured_on = machine()
    rows = []
    with tempfile.TemporaryDirectory(prefix="faults-") as tmp:
        work = Path(tmp)
        print("calibrating the bundles", file=sys.stderr)
        small = open_bundle(make_bundle(ENCODER, 64, work, steps=60)) if set(args.only) - {"soak"} else None
        large = open_bundle(make_bundle(ENCODER, args.soak_size, work)) if "soak" in args.only else None
        for name in args.only:
            print(f"{name}: running", file=sys.stderr, flush=True)
            started = time.monotonic()
            try:
                report = run(name, args, small, large, work / name)
            except scenarios.ScenarioUnavailable as missing:
                print(f"{name}: skipped: {missing}", file=sys.stderr)
                rows.append({"scenario": name, "skipped": str(missing)})
                continue
            row = report.to_json()
            row["wall_s"] = round(time.monotonic() - started, 1)
            if "Traceback" in report.log:
                row["details"]["traceback_in_log"] = True
            rows.append(row)
            print_table(rows)
    result = {"machine": measured_on, "rows": rows}
    write_results(args.output, result)
    return 0


def print_table(rows: list[dict]) -> None:
    print(f"\n{'scenario':<20} {'parts':>6} {'expected':>8} {'received':>8} {'dups':>5} {'lost':>5} {'late':>5} {'recovery s (max)':>16}  notes")
    for r in rows:
        if "skipped" in r:
            print(f"{r['scenario']:<20} skipped: {r['skipped']}")
            continue
        recovery = f"{max(r['recovery_s']):.2f}" if r["recovery_s"] else "-"
        print(
            f"{r['scenario']:<20} {r['parts']:>6} {r['rejects_expected']:>8} {r['rejects_received']:>8} {r['duplicates']:>5} "
            f"{r['lost']:>5} {r['late']:>5} {recovery:>16}  {notes(r)}"
        )


def notes(row: dict) -> str:
    d = row["details"]
    if row["scenario"] == "soak":
        return (
            f"RSS {d['rss_mib_after_warmup']}->{d['rss_mib_end']} MiB ({d['rss_growth_pct']:+.2f}%), threads {d['threads_after_warmup']}, "
            f"fds {d['fds_after_warmup']}, p50/p99 first {d['latency_ms_first'].get('p50')}/{d['latency_ms_first'].get('p99')} "
            f"last {d['latency_ms_last'].get('p50')}/{d['latency_ms_last'].get('p99')} ms, missing {d['missing_frame_ids']}"
        )
    if row["scenario"].startswith("camera_loss"):
        return f"detected in {[l['detected_s'] for l in d['losses']]} s, max watchdog gap {d['max_watchdog_ping_gap_s']} s"
    if row["scenario"] == "stuck_inference":
        return f"pings while waiting {d['pings_while_waiting']}, last ping {d['last_ping_after_hang_s']} s after the hang"
    if row["scenario"] == "disk_full":
        return f"audit files dropped {d['audit_files_dropped']}, oldest part kept {d['oldest_audit_part_kept']}"
    if row["scenario"] == "power_cut":
        return f"{d['cuts']} cuts, torn outbox {d['torn_outbox_files']}, torn audit lines {d['torn_audit_lines']}"
    return ""


if __name__ == "__main__":
    sys.exit(main())
