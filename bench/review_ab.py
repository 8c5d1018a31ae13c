"""The review ring's cost end to end: bench/speed.py's daemon run on Lite0 256, with the ring
(the default) and without it (`review: {enabled: false}`), alternated, on the same machine.

  python bench/review_ab.py [--frames 1000] [--rounds 2]
Writes bench/results/review_ab.json. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.quality import machine, write_results  # noqa: E402
from bench.speed import end_to_end, make_bundle  # noqa: E402
from tests.mqtt_helpers import Broker  # noqa: E402
from tests.scenarios import parts_video  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    runs: dict[str, list[dict]] = {"ring": [], "no ring": []}
    with tempfile.TemporaryDirectory(dir=ROOT.parent) as directory:
        work = Path(directory)
        bundle = make_bundle("efficientnet-lite0", 256, work)
        video = work / "parts.avi"
        parts_video(video, args.frames, (256, 256))
        (work / "broker").mkdir()
        broker = Broker(work / "broker").start()
        try:
            for round_ in range(args.rounds):
                for name, extra in (("ring", ""), ("no ring", "review: {enabled: false}\n")):
                    run = end_to_end(bundle, video, args.frames, broker, work / f"{name.replace(' ', '-')}-{round_}", None, extra_config=extra)
                    runs[name].append(run)
                    print(f"{name:8s} round {round_}: {run['fps']} parts/s, p50 {run['latency_ms']['p50']} ms, {run['rejects']} rejects", flush=True)
        finally:
            broker.stop()
    write_results(ROOT / "bench" / "results" / "review_ab.json", {"machine": machine(), "frames": args.frames, "runs": runs})


if __name__ == "__main__":
    main()
