"""edge-inspect teach: start, stop or look at a station's teach-in from a shell, through the
broker the daemon listens on (the daemon's hardened unit opens no port; the `teach` topic is how
it is asked). It waits for the daemon's stats to confirm, so a command nobody acted on says so."""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time

from pydantic import ValidationError

from edge.commands import FOLDER_RULE, MAX_TEACH_COUNT, TeachCommand
from edge.config import Config, ConfigError, load_config
from edge.publisher import make_client

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="the daemon's YAML config (for the broker and the stations)")
    parser.add_argument("--station", help="the station (needed when the config has several)")
    actions = parser.add_subparsers(dest="action", required=True)
    start = actions.add_parser("start", help="collect good parts from the running camera")
    start.add_argument("--name", help="the folder under state_dir/teach/<station> (default: the start time); an existing one is added to")
    start.add_argument("--count", type=int, help=f"stop after this many parts, 1 to {MAX_TEACH_COUNT} (default 1000)")
    start.add_argument("--wait", action="store_true", help="show progress until the teach-in ends")
    actions.add_parser("stop", help="stop collecting")
    actions.add_parser("status", help="the station's teach-in now")


class _StatsWatch:
    """The station's retained stats, as they come."""

    def __init__(self) -> None:
        self.condition = threading.Condition()
        self.latest: dict | None = None
        self.count = 0

    def on_message(self, client, userdata, message) -> None:
        try:
            stats = json.loads(message.payload)
        except (ValueError, RecursionError):
            return
        with self.condition:
            self.latest, self.count = stats, self.count + 1
            self.condition.notify_all()

    def next(self, after: int, timeout_s: float) -> tuple[dict | None, int]:
        with self.condition:
            self.condition.wait_for(lambda: self.count > after, timeout_s)
            return self.latest, self.count


def _station(config: Config, name: str | None) -> str:
    stations = [camera.station for camera in config.cameras]
    if name is None:
        if len(stations) > 1:
            raise ConfigError(f"the config has several stations ({', '.join(stations)}): say which with --station")
        return stations[0]
    if name not in stations:
        raise ConfigError(f"no station {name!r} in the config (it has {', '.join(stations)})")
    return name


def run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
        station = _station(config, args.station)
    except ConfigError as error:
        print(f"edge-inspect teach: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.action == "start":
        # The station's own rules, checked here: a bad name or count is said now, not as a
        # confirmation that never comes.
        try:
            TeachCommand(action="start", name=args.name, count=args.count)
        except ValidationError as error:
            said = {"count": f"--count {args.count}: must be 1 to {MAX_TEACH_COUNT}", "name": f"--name {args.name!r}: {FOLDER_RULE}"}
            print(f"edge-inspect teach: {said[str(error.errors()[0]['loc'][0])]}", file=sys.stderr)
            return EXIT_BAD_INPUT
    base = f"{config.mqtt.topic_prefix}/{station}"
    watch = _StatsWatch()
    client = make_client(config.mqtt, f"edge-inspect-teach-{os.getpid()}")
    client.on_message = watch.on_message
    connected = threading.Event()

    def on_connect(client, userdata, flags, reason_code, properties) -> None:
        if not reason_code.is_failure:
            client.subscribe(f"{base}/stats", qos=1)
            connected.set()

    client.on_connect = on_connect
    try:
        client.connect(config.mqtt.host, config.mqtt.port, keepalive=30)
    except OSError as error:
        print(f"edge-inspect teach: cannot reach the broker at {config.mqtt.host}:{config.mqtt.port} ({error})", file=sys.stderr)
        return EXIT_FAILED
    client.loop_start()
    try:
        if not connected.wait(10):
            print(f"edge-inspect teach: the broker at {config.mqtt.host}:{config.mqtt.port} did not accept the connection (check mqtt.username and the password)", file=sys.stderr)
            return EXIT_FAILED
        return _act(args, client, watch, base, config.publish.stats_interval_s)
    finally:
        client.loop_stop()
        client.disconnect()


def _act(args: argparse.Namespace, client, watch: _StatsWatch, base: str, interval_s: float) -> int:
    wait_s = max(10.0, 3 * interval_s)
    stats, seen = watch.next(0, wait_s)  # the retained one: the daemon is there
    if stats is None:
        print(f"edge-inspect teach: no stats from {base} within {wait_s:.0f} s; is edge-inspect running for this station?", file=sys.stderr)
        return EXIT_FAILED
    if args.action == "status":
        print(_describe(stats.get("teach")))
        return EXIT_OK
    command: dict = {"action": args.action}
    if args.action == "start":
        command.update({k: v for k, v in (("name", args.name), ("count", args.count)) if v is not None})
    client.publish(f"{base}/teach", json.dumps(command), qos=1).wait_for_publish(10)
    wanted = args.action == "start"
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        stats, seen = watch.next(seen, deadline - time.monotonic())
        teach = (stats or {}).get("teach") or {}
        if bool(teach.get("active")) == wanted or (wanted and teach.get("saved", 0) >= (teach.get("count") or 1) and teach.get("folder")):
            print(_describe(teach))
            break
    else:
        print(f"edge-inspect teach: the daemon did not confirm within {wait_s:.0f} s (see its log: a bad name is refused there)", file=sys.stderr)
        return EXIT_FAILED
    while wanted and args.wait and teach.get("active"):
        stats, seen = watch.next(seen, 3600)
        teach = (stats or {}).get("teach") or {}
        print(_describe(teach), flush=True)
    return EXIT_OK


def _describe(teach: dict | None) -> str:
    if not teach:
        return "no teach-in since the daemon started"
    state = "running" if teach.get("active") else "ended"
    return f"teach-in {state}: {teach.get('saved')} of {teach.get('count')} parts in {teach.get('folder')}"
