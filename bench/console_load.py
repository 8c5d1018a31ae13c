"""Load on edge-console: 10 stations at 100 parts/s each, on a real Mosquitto, for 60 s.

Every station publishes what the daemon does (DESIGN.md's MQTT contract): a result per part
(QoS 1), each non-pass part again on `reject` (about 5%) with a real heatmap JPEG (cv2-encoded,
its part in the COM segment), retained stats every second and a preview JPEG at 2 Hz. The
console runs as its own process (`python -m edge.console`, as systemd runs it); its CPU comes
from /proc/<pid>/stat and its RSS from /proc/<pid>/status.

Prints one table and writes bench/results/console_load.json. Loopback only; every loop is
bounded by --seconds. This is a benchmark, not a test: it keeps two cores busy for a minute.

  python bench/console_load.py [--stations 10] [--rate 100] [--seconds 60] [--retention-mb 64]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import paho.mqtt.client as mqtt  # noqa: E402

from bench.quality import machine, write_results  # noqa: E402
from tests.console_helpers import ConsoleProcess, image_tag, jpeg, part, stats  # noqa: E402
from tests.mqtt_helpers import Broker, find_mosquitto  # noqa: E402

TICK_S = 0.01  # the publisher's pacing step
HEATMAP_SIZE = (512, 400)  # the daemon's heatmaps are at most 512 px a side
PREVIEW_SIZE = (512, 400)
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process (fields 14 and 15 of /proc/<pid>/stat)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()  # the command name may hold spaces
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def scraped(text: str, name: str, labels: str = "") -> float:
    """The sum of a metric's samples whose labels contain `labels`."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            found = re.match(rf"{re.escape(name)}(\{{[^}}]*\}})? (\S+)", line)
            if found and labels in (found.group(1) or ""):
                total += float(found.group(2))
    return total


class Line:
    """The stations: one MQTT client each (as each daemon has its own session)."""

    def __init__(self, port: int, stations: int, rate: float, reject_share: float):
        self.names = [f"station{i:02d}" for i in range(stations)]
        self.rate = rate
        self.reject_every = max(1, round(1 / reject_share)) if reject_share > 0 else 0
        self.clients = []
        for name in self.names:
            client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-{name}")
            client.max_inflight_messages_set(1000)  # the daemon's outbox keeps 100 in flight; the bench must not be the bottleneck
            client.connect("127.0.0.1", port)
            client.loop_start()
            self.clients.append(client)
        # JPEGs made once: encoding 50 a second would measure cv2, not the console. The tag is
        # put in per part, which is what makes each heatmap distinct.
        self.heatmaps = [jpeg(None, *HEATMAP_SIZE, seed=i, quality=90, noise=8) for i in range(8)]
        self.previews = [jpeg(None, *PREVIEW_SIZE, seed=100 + i, quality=80, noise=8) for i in range(4)]
        self.published = {kind: 0 for kind in ("result", "reject", "heatmap", "preview", "stats", "status")}
        self.bytes = 0

    def _send(self, client: mqtt.Client, topic: str, payload: bytes, qos: int, retain: bool = False) -> None:
        client.publish(topic, payload, qos=qos, retain=retain)
        self.published[topic.rsplit("/", 1)[1]] += 1
        self.bytes += len(payload)

    def run(self, seconds: float) -> float:
        """Publish for `seconds`; returns the wall time it took."""
        from edge.jpeg_comment import with_comment

        for client, name in zip(self.clients, self.names):
            self._send(client, f"edge/{name}/status", b"online", 1, retain=True)
        start = time.monotonic()
        done = [0] * len(self.names)
        next_stats = next_preview = start
        while (elapsed := time.monotonic() - start) < seconds:
            due = int(elapsed * self.rate)
            for s, (client, name) in enumerate(zip(self.clients, self.names)):
                while done[s] < due:
                    i = done[s]
                    done[s] += 1
                    rejected = self.reject_every and i % self.reject_every == self.reject_every - 1
                    message = part(name, f"{name}-{i:07d}", i, 1.3 if rejected else 0.3 + (i % 17) / 100)
                    self._send(client, f"edge/{name}/result", json.dumps(message).encode(), 1)
                    if rejected:
                        self._send(client, f"edge/{name}/reject", json.dumps({**message, "late": False}).encode(), 1)
                        heatmap = with_comment(self.heatmaps[i % len(self.heatmaps)], image_tag(name, message))
                        self._send(client, f"edge/{name}/heatmap", heatmap, 0)
            now = time.monotonic()
            if now >= next_stats:
                next_stats += 1.0
                for s, (client, name) in enumerate(zip(self.clients, self.names)):
                    self._send(client, f"edge/{name}/stats", json.dumps(stats(name, parts=max(1, done[s]), rejects=done[s] // max(1, self.reject_every or 1))).encode(), 0, retain=True)
            if now >= next_preview:
                next_preview += 0.5
                for s, (client, name) in enumerate(zip(self.clients, self.names)):
                    latest = part(name, f"{name}-{done[s]:07d}", done[s], 0.3)
                    self._send(client, f"edge/{name}/preview", with_comment(self.previews[done[s] % len(self.previews)], image_tag(name, latest)), 0)
            time.sleep(TICK_S)
        return time.monotonic() - start

    def close(self) -> None:
        for client in self.clients:
            client.loop_stop()
            client.disconnect()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stations", type=int, default=10)
    parser.add_argument("--rate", type=float, default=100.0, help="parts per second per station")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--reject-share", type=float, default=0.05)
    parser.add_argument("--retention-mb", type=float, default=64.0, help="small enough that retention runs during the load")
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "console_load.json")
    args = parser.parse_args()
    if find_mosquitto() is None:
        raise SystemExit("mosquitto not installed (apt-get install -y mosquitto)")

    with tempfile.TemporaryDirectory(prefix="console-load-") as scratch:
        work = Path(scratch)
        broker = Broker(work).start()
        console = ConsoleProcess(broker.port, work, "--retention-mb", str(args.retention_mb))
        line = Line(broker.port, args.stations, args.rate, args.reject_share)
        pid = console.process.pid
        try:
            cpu_before, broker_cpu_before, own_before = cpu_seconds(pid), cpu_seconds(broker.process.pid), time.process_time()
            rss_start = rss_bytes(pid)
            page_ms: list[float] = []
            wall = line.run(args.seconds)
            published_total = sum(line.published.values())
            # Then what the console still had queued: wait until its message count stops moving.
            drain_started, last, text = time.monotonic(), -1.0, ""
            while time.monotonic() - drain_started < 15:
                text = console.metrics()
                now_count = scraped(text, "edge_console_messages_total")
                if now_count == last:
                    break
                last = now_count
                time.sleep(1.0)
            for _ in range(5):  # the pages under the load's aftermath
                started = time.perf_counter()
                console.json("/api/stations")
                page_ms.append((time.perf_counter() - started) * 1000)
            console_cpu = cpu_seconds(pid) - cpu_before
            broker_cpu = cpu_seconds(broker.process.pid) - broker_cpu_before
            rss_end = rss_bytes(pid)
            text = console.metrics()
        finally:
            line.close()
            console.stop()
            broker.stop()
        database = work / "history.sqlite3"
        with sqlite3.connect(f"{database.as_uri()}?mode=ro", uri=True) as db:
            parts_rows = db.execute("SELECT COUNT(*) FROM parts").fetchone()[0]
            heatmap_rows = db.execute("SELECT COUNT(*) FROM heatmaps").fetchone()[0]
        db_bytes = sum(p.stat().st_size for p in work.glob("history.sqlite3*"))

    ingested = {kind: int(scraped(text, "edge_console_messages_total", f'kind="{kind}"')) for kind in line.published}
    ingested_total = sum(ingested.values())
    result = {
        "stations": args.stations,
        "parts_per_second_per_station": args.rate,
        "seconds": round(wall, 1),
        "published": line.published,
        "published_total": published_total,
        "published_mb": round(line.bytes / 1e6, 1),
        "ingested": ingested,
        "ingested_total": ingested_total,
        "not_ingested": published_total - ingested_total,  # dropped by the broker's queue for a slow console, or QoS 0 lost
        "malformed": int(scraped(text, "edge_console_malformed_total")),
        "duplicates": int(scraped(text, "edge_console_duplicates_total")),
        "history_dropped": int(scraped(text, "edge_console_history_dropped_total")),
        "db_errors": int(scraped(text, "edge_console_db_errors_total")),
        "retention_deleted": {t: int(scraped(text, "edge_console_retention_deleted_total", f'table="{t}"')) for t in ("parts", "heatmaps")},
        "db_rows": {"parts": parts_rows, "heatmaps": heatmap_rows},
        "db_mb": round(db_bytes / 1e6, 1),
        "retention_mb": args.retention_mb,
        "console_cpu_percent_of_one_core": round(100 * console_cpu / wall, 1),
        "broker_cpu_percent_of_one_core": round(100 * broker_cpu / wall, 1),
        "publisher_cpu_percent_of_one_core": round(100 * (time.process_time() - own_before) / wall, 1),
        "console_rss_mb": {"start": round(rss_start / 1e6, 1), "end": round(rss_end / 1e6, 1)},
        "api_stations_ms_median": round(statistics.median(page_ms), 1),
    }
    rows = [
        ("messages published", f"{published_total} ({line.bytes / 1e6:.0f} MB in {wall:.0f} s: {published_total / wall:.0f}/s)"),
        ("messages ingested", f"{ingested_total} (not ingested {result['not_ingested']}, malformed {result['malformed']})"),
        ("parts in history", f"{parts_rows} (retention deleted {result['retention_deleted']['parts']}, not written {result['history_dropped']})"),
        ("heatmaps in history", f"{heatmap_rows} (retention deleted {result['retention_deleted']['heatmaps']})"),
        ("database on disk", f"{result['db_mb']} MB (retention {args.retention_mb:g} MB)"),
        ("console CPU", f"{result['console_cpu_percent_of_one_core']} % of one core"),
        ("console RSS", f"{result['console_rss_mb']['start']} -> {result['console_rss_mb']['end']} MB"),
        ("broker / publisher CPU", f"{result['broker_cpu_percent_of_one_core']} % / {result['publisher_cpu_percent_of_one_core']} %"),
        ("GET /api/stations after", f"{result['api_stations_ms_median']} ms median"),
    ]
    width = max(len(name) for name, _ in rows)
    print(f"\nedge-console under {args.stations} stations x {args.rate:g} parts/s for {wall:.0f} s")
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    write_results(args.output, {"machine": machine(), "settings": vars(args) | {"output": str(args.output)}, "results": result})
    return 0


if __name__ == "__main__":
    sys.exit(main())
