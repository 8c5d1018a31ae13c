"""edge-console against a real Mosquitto and, for the pages, a real headless Chromium.

One broker and one console subprocess serve the whole module (each test uses its own station
names); the config, JPEG-tag and history tests run in-process on real files and real SQLite.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from edge.console import cli
from edge.console.counters import ConsoleCounters
from edge.console.history import HeatmapRecord, History, used_bytes
from edge.console.payloads import PartRecord, parse_part
from edge.jpeg_comment import NotAJpeg, read_comment, with_comment
from tests.console_helpers import CALIBRATION_QUANTILES, ConsoleProcess, Publisher, image_tag, jpeg, part, self_signed, stats

ROOT = Path(__file__).resolve().parents[1]


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def module_broker(tmp_path_factory):
    from tests.mqtt_helpers import Broker, find_mosquitto

    if find_mosquitto() is None:
        pytest.skip("mosquitto not installed (apt-get install -y mosquitto; make test installs it)")
    broker = Broker(tmp_path_factory.mktemp("console-broker")).start()
    yield broker
    broker.stop()


@pytest.fixture(scope="module")
def console(module_broker, tmp_path_factory):
    process = ConsoleProcess(module_broker.port, tmp_path_factory.mktemp("console"))
    yield process
    code = process.stop()
    assert code == 0, "edge-console did not stop cleanly on SIGTERM:\n" + "\n".join(process.log[-30:])
    assert not any("Traceback" in line for line in process.log), "\n".join(process.log)


@pytest.fixture(scope="module")
def station(module_broker):
    publisher = Publisher(module_broker.port)
    yield publisher
    publisher.close()


def _station_state(console: ConsoleProcess, name: str) -> dict | None:
    status, _, body = console.get(f"/api/stations/{name}")
    return json.loads(body) if status == 200 else None


def _samples(text: str) -> dict[tuple[str, str | None, tuple], float]:
    """/metrics parsed by prometheus_client's own parser: (name, station, other labels) -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = dict(sample.labels)
            station = labels.pop("station", None)
            samples[(sample.name, station, tuple(sorted(labels.items())))] = sample.value
    return samples


def _publish_part(station: Publisher, name: str, message: dict) -> None:
    station.send(name, "result", message)
    if message["verdict"] != "pass":
        station.send(name, "reject", {**message, "late": False})


# --- config refusals: exit 2, the key named, no traceback ----------------------------------------

BAD_CONFIGS = [
    ("listn: 127.0.0.1:8080\n", "listn (line 1): unknown key"),
    ("mqtt:\n  host: broker\n  port: '1883'\n", "mqtt.port (line 3)"),
    ("mqtt:\n  port: 70000\n", "mqtt.port (line 2)"),
    ("mqtt:\n  prot: 1883\n", "mqtt.prot (line 2): unknown key; allowed: host, password_file, port, tls, topic_prefix, username"),
    ("mqtt:\n  topic_prefix: 'edge/#'\n", "mqtt.topic_prefix (line 2)"),
    ("mqtt:\n  password_file: /nonexistent/mqtt.pw\n", "mqtt.password_file (line 2): cannot read /nonexistent/mqtt.pw"),
    ("mqtt:\n  tls:\n    ca_file: /nonexistent/ca.pem\n", "mqtt.tls.ca_file (line 3): cannot read"),
    ("mqtt:\n  tls: {ca_file: @CA@, cert_file: @CA@}\n", "mqtt.tls (line 2): cert_file and key_file go together"),
    ("mqtt:\n  tls: {ca_file: @NOTPEM@}\n", "mqtt.tls.ca_file (line 2): @NOTPEM@ holds no CA certificate in PEM form"),
    ("mqtt:\n  tls: {ca_file: @CA@, cert_file: @CA@, key_file: @NOTPEM@}\n", "mqtt.tls (line 2): cert_file @CA@ and key_file @NOTPEM@ are not a PEM certificate"),
    ("mqtt: broker.local\n", "mqtt (line 1): expected a mapping"),
    ("listen: '8080'\n", "listen (line 1): expected HOST:PORT"),
    ("listen: '::1:8080'\n", "listen (line 1): put an IPv6 host in brackets"),
    ("retention_days: '30'\n", "retention_days (line 1)"),
    ("retention_mb: 0\n", "retention_mb (line 1): Input should be greater than 0"),
    ("retention_mb: .nan\n", "retention_mb (line 1)"),
    ("database: @DIR@\n", "database (line 1):"),
    ("listen: 127.0.0.1:1\nlisten: 127.0.0.1:2\n", "listen (line 2): given twice"),
    ("mqtt: [\n", "not valid YAML"),
    ("- a\n- b\n", "top level (line 1): expected a mapping"),
]


@pytest.mark.parametrize("text,expected", BAD_CONFIGS, ids=[expected.split(" ")[0] + f"-{i}" for i, (_, expected) in enumerate(BAD_CONFIGS)])
def test_bad_config_is_refused_naming_the_key(tmp_path, capsys, text, expected):
    ca, _ = self_signed(tmp_path)
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("not a certificate\n")
    places = {"@CA@": str(ca), "@NOTPEM@": str(not_pem), "@DIR@": str(tmp_path)}
    for placeholder, value in places.items():
        text, expected = text.replace(placeholder, value), expected.replace(placeholder, value)
    config = tmp_path / "console.yaml"
    config.write_text(text)
    assert cli.main(["--config", str(config), "--validate-config"]) == cli.EXIT_BAD_CONFIG
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err, err
    assert err.startswith(f"edge-console: {config}: "), err


@pytest.mark.parametrize(
    "argv,expected",
    [
        (["--listen", "localhost"], "--listen: expected HOST:PORT"),
        (["--mqtt-port", "0"], "--mqtt-port: Input should be greater than or equal to 1"),
        (["--retention-mb", "-5"], "--retention-mb: Input should be greater than 0"),
        (["--topic-prefix", "a//b"], "--topic-prefix: must be non-empty"),
        (["--config", "/nonexistent/console.yaml"], "/nonexistent/console.yaml: cannot read config"),
    ],
)
def test_bad_flag_is_refused_naming_the_flag(capsys, argv, expected):
    assert cli.main([*argv, "--validate-config"]) == cli.EXIT_BAD_CONFIG
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err, err


def test_good_config_validates_and_flags_override(tmp_path, capsys):
    config = tmp_path / "console.yaml"
    config.write_text("mqtt: {host: broker.local, port: 8883, topic_prefix: plant/line1}\nlisten: 0.0.0.0:9000\nretention_days: 7\nretention_mb: 512\n")
    assert cli.main(["--config", str(config), "--validate-config", "--listen", "[::1]:9001"]) == cli.EXIT_OK
    assert "OK" in capsys.readouterr().out
    from edge.console.config import load_config

    loaded = load_config(config, {"--listen": "[::1]:9001"})
    assert loaded.listen_address == ("::1", 9001) and loaded.mqtt.topic_prefix == "plant/line1" and loaded.retention_days == 7.0


def test_port_in_use_is_a_clear_start_failure(capsys):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert cli.main(["--listen", f"127.0.0.1:{port}", "--database", "/nonexistent/never-opened.sqlite3"]) == cli.EXIT_FAILED
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


def test_version_and_no_torch():
    """--version names the package and the bundle formats; the console imports no torch and no
    calibration code (DESIGN.md: edge/ must not)."""
    probe = "import sys, edge.console.service, edge.console.cli;bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'calibration', 'torchvision', 'onnxruntime'));print(bad)"
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr
    version = subprocess.run([sys.executable, "-m", "edge.console", "--version"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and re.match(r"edge-console \S+ \(reads bundle format", version.stdout), version.stdout + version.stderr


# --- the systemd unit -------------------------------------------------------------------------

CONSOLE_UNIT = ROOT / "systemd" / "edge-console.service"
CONSOLE_MAX_EXPOSURE = 1.1  # systemd 252, --offline=yes: "1.1 OK". Raise only on purpose.


def test_console_unit_verifies_and_stays_hardened(tmp_path):
    from tests.test_systemd import GOOD_LEVELS, _checkable_copy, _exposure, _verify_problems

    copy = _checkable_copy(CONSOLE_UNIT, tmp_path)
    rc, problems = _verify_problems(copy)
    assert rc == 0 and problems == [], problems
    score, level = _exposure(copy)
    assert level in GOOD_LEVELS and score <= CONSOLE_MAX_EXPOSURE, (score, level)


# --- the JPEG tag --------------------------------------------------------------------------------


def test_jpeg_tag_is_read_by_walking_the_markers():
    tag = {"station": "s1", "part_id": "P-7", "frame_id": 7, "verdict": "reject", "score": 1.25, "threshold": 0.8125}
    plain = jpeg(None)
    assert read_comment(plain) is None  # cv2's JPEG has no comment: kept as unattributed
    tagged = with_comment(plain, tag)
    assert read_comment(tagged).data == tag
    # An encoder's own comment first (not JSON), then ours: ours is found.
    foreign = b"\xff\xfe\x00\x07hello" + tagged[2:]
    assert read_comment(b"\xff\xd8" + foreign).data == tag
    # The tag's bytes inside another segment are not a marker: an APP1 holding them hides nothing.
    body = b"\xff\xfe\x00\x10" + b'{"part_id":"x"}'
    app1 = b"\xff\xe1" + (len(body) + 2).to_bytes(2, "big") + body
    assert read_comment(b"\xff\xd8" + app1 + plain[2:]) is None
    for broken in (b"", b"GIF89a....", tagged[:20], b"\xff\xd8\xff\xfe\x00"):
        with pytest.raises(NotAJpeg):
            read_comment(broken)


# --- history: retention and a broken database ------------------------------------------------------


def _record(i: int, t: float, size: int) -> tuple[PartRecord, HeatmapRecord]:
    message = parse_part(json.dumps(part("s1", f"P{i:04d}", i, 1.5)).encode())
    record = replace(PartRecord.of("s1", message, received=t), time=t)
    return record, HeatmapRecord("s1", record.part_id, i, t, "reject", 1.5, 0.8125, os.urandom(size))


def test_retention_by_megabytes_deletes_the_oldest(tmp_path):
    counters = ConsoleCounters()
    path = tmp_path / "history.sqlite3"
    # Retention after every batch, as the console does every 30 s.
    history = History(path, retention_days=30, retention_mb=1.0, counters=counters, retention_interval_s=0)
    history.start()
    now = time.time()
    for i in range(80):  # 80 x 40 kB in 4 batches: about 3.2 MB against a 1 MB limit
        record, heatmap = _record(i, now - 80 + i, 40_000)
        history.add_part(record)
        history.add_heatmap(heatmap)
        if i % 20 == 19:
            deadline = time.monotonic() + 10
            while history.pending and time.monotonic() < deadline:
                time.sleep(0.02)
            time.sleep(0.1)  # the batch's retention
    history.stop()  # writes what is queued, then enforces retention once more
    assert history.health.ok, history.health.error
    with sqlite3.connect(path) as db:
        assert used_bytes(db) <= 1024 * 1024
        kept = [row[0] for row in db.execute("SELECT part_id FROM heatmaps ORDER BY time")]
        kept_parts = [row[0] for row in db.execute("SELECT part_id FROM parts ORDER BY time")]
    assert 5 <= len(kept) < 80, len(kept)
    expected = [f"P{i:04d}" for i in range(80 - len(kept), 80)]
    assert kept == expected, "retention must delete the oldest heatmaps first"
    assert kept_parts == kept, "parts and heatmaps are cut at the same time"
    assert dict(counters.retention_deleted.items())["heatmaps"] == 80 - len(kept)
    # Freed pages are reused: the file stays near the limit plus one batch, not 3.2 MB.
    assert path.stat().st_size < 2.2 * 1024 * 1024, path.stat().st_size


def test_retention_by_days_and_the_gallery_query(tmp_path):
    counters = ConsoleCounters()
    history = History(tmp_path / "history.sqlite3", retention_days=1, retention_mb=100, counters=counters, retention_interval_s=3600)
    history.start()
    now = time.time()
    for i, age_days in enumerate((3.0, 2.0, 0.5, 0.1)):
        record, heatmap = _record(i, now - age_days * 86400, 1000)
        history.add_part(record)
        history.add_heatmap(heatmap)
    history.add_part(_record(3, now, 10)[0])  # a duplicate key: ignored, the first one stays
    history.stop()
    from edge.console.history import RejectQuery

    found = history.rejects(RejectQuery())
    assert [r["part_id"] for r in found] == ["P0003", "P0002"]
    assert all(r["heatmap"] and r["regions"] and r["cause"] == "defect region" for r in found)
    assert [r["part_id"] for r in history.rejects(RejectQuery(part_id="0003"))] == ["P0003"]
    assert history.rejects(RejectQuery(part_id="%")) == []  # LIKE wildcards are searched as text
    assert [r["part_id"] for r in history.rejects(RejectQuery(until=now - 0.3 * 86400))] == ["P0002"]
    assert history.heatmap(int(found[0]["heatmap"].split("/")[-1].split(".")[0])) is not None


def test_unwritable_database_degrades_history_only(tmp_path):
    """The database's folder is a file: history is degraded (counted, said why), nothing raises."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    counters = ConsoleCounters()
    history = History(blocker / "history.sqlite3", 30, 100, counters, retention_interval_s=3600)
    history.start()
    history.add_part(_record(1, time.time(), 10)[0])
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and counters.history_dropped.value == 0:
        time.sleep(0.05)
    history.stop()
    assert counters.db_errors.value >= 1 and counters.history_dropped.value == 1
    assert not history.health.ok and str(blocker) in (history.health.error or "")
    from edge.console.history import HistoryUnavailable, RejectQuery

    with pytest.raises(HistoryUnavailable):
        history.rejects(RejectQuery())


# --- the console process against a real broker ------------------------------------------------


def test_live_model_metrics_and_dedupe(console, station):
    name = "metrics-1"
    station.send(name, "status", "online", retain=True)
    station.send(name, "stats", stats(name), retain=True)
    invented = {"alarm": "made-up-by-someone", "message": "not a daemon's", "since": "2026-12-07T03:00:01Z"}
    active = [{"alarm": "camera_lost", "message": "no frame for 5 s", "since": "2026-12-07T03:00:00Z"}, invented]
    station.send(name, "alarm", {"station": name, "active": active, "time": "x"}, retain=True)
    for i in range(20):
        _publish_part(station, name, part(name, f"M{i}", i, 1.5 if i % 10 == 3 else 0.3))
    _publish_part(station, name, part(name, "M-none", None, None, verdict="no_frame", error="trigger got no frame"))
    state = console.wait_for(lambda: (s := _station_state(console, name)) and s["parts_seen"] == 21 and s["alarms"] and s["stats"] and s, what="21 parts")
    assert state["status"] == "online" and state["outbox_pending"] == 4 and state["latency_p99_ms"] == 63.7
    assert state["threshold"] == 0.8125 and state["stats"]["calibration_quantiles"] == CALIBRATION_QUANTILES
    expected = {
        ("edge_station_up", name, ()): 1.0,
        ("edge_station_parts_total", name, ()): 21.0,
        ("edge_station_rejects_total", name, (("cause", "defect region"),)): 2.0,
        ("edge_station_rejects_total", name, (("cause", "no_frame"),)): 1.0,
        ("edge_station_latency_seconds", name, (("quantile", "0.99"),)): 0.0637,
        ("edge_station_outbox_pending", name, ()): 4.0,
        ("edge_station_drift_spreads", name, ()): 0.125,
        ("edge_station_alarms_active", name, ()): 2.0,
        ("edge_station_alarm", name, (("alarm", "camera_lost"),)): 1.0,
        ("edge_station_alarm", name, (("alarm", "other"),)): 1.0,  # a name no daemon raises: one label, not a new one per name
        ("edge_station_dropped_frames_total", name, ()): 3.0,
        ("edge_station_bad_frames_total", name, ()): 1.0,
    }
    # The duplicates on `reject` may trail the last result: wait for the counts, then compare.
    console.wait_for(lambda: {key: _samples(console.metrics()).get(key) for key in expected} == expected, what="the metrics of 21 parts")
    got = _samples(console.metrics())
    assert {key: got.get(key) for key in expected} == expected
    assert got[("edge_console_messages_total", None, (("kind", "result"),))] >= 21
    assert got[("edge_console_duplicates_total", None, ())] >= 3  # each reject came on both topics
    assert got[("edge_console_db_size_bytes", None, ())] > 0
    # An empty retained alarm message is all clear.
    station.send(name, "alarm", {"station": name, "active": [], "time": "x"}, retain=True)
    console.wait_for(lambda: _station_state(console, name)["alarms"] == [], what="alarm cleared")


def test_broker_away_at_start_then_back(tmp_path):
    """The pages serve while the broker is away (and say so); the console connects when it is back."""
    from tests.mqtt_helpers import Broker, find_mosquitto, free_port

    if find_mosquitto() is None:
        pytest.skip("mosquitto not installed")
    port = free_port()
    console = ConsoleProcess(port, tmp_path)
    try:
        health = console.wait_for(lambda: (h := console.json("/api/stations")["console"])["broker_error"] and h, what="the broker error shown")
        assert not health["broker_connected"] and "could not connect" in health["broker_error"]
        (tmp_path / "broker").mkdir()
        broker = Broker(tmp_path / "broker", port=port).start()
        try:
            publisher = Publisher(port, client_id="late-station")
            publisher.send("late-1", "status", "online", retain=True)
            publisher.close()
            console.wait_for(lambda: console.json("/api/stations")["console"]["broker_connected"], timeout_s=20, what="reconnect")
            console.wait_for(lambda: _station_state(console, "late-1"), what="the retained status after reconnecting")
        finally:
            broker.stop()
    finally:
        assert console.stop() == 0


MALFORMED = [
    ("result", b"{not json", "not_json"),
    ("result", json.dumps({"part_id": "X", "verdict": "pass", "score": "0.5"}).encode(), "invalid"),
    ("result", b'{"part_id": "X", "verdict": "pass", "score": NaN}', "invalid"),
    ("result", json.dumps({"part_id": "X", "verdict": "maybe"}).encode(), "invalid"),
    ("reject", json.dumps({"part_id": "X", "verdict": "reject", "regions": [{"bbox": [1, 2], "area": 1, "peak": 1}]}).encode(), "invalid"),
    ("reject", b"[" * 50_000, "not_json"),
    ("result", b'{"pad": "' + b"x" * 70_000 + b'"}', "oversized"),
    ("result", b"\xff\xfe\x00garbage", "not_json"),
    ("stats", json.dumps({"parts": -3}).encode(), "invalid"),
    ("stats", json.dumps({"latency_ms": {"p50": "fast"}}).encode(), "invalid"),
    ("alarm", json.dumps({"active": "camera"}).encode(), "invalid"),
    ("status", b"maybe", "invalid"),
    ("heatmap", b"GIF89a not a jpeg", "not_jpeg"),
    ("heatmap", b"\xff\xd8\xff\xe0\x00\x10JFIF", "not_jpeg"),
    ("preview", b"\xff\xd8" + b"\x00" * (2 * 1024 * 1024 + 10), "oversized"),
    ("heatmap", with_comment(b"\xff\xd8\xff\xd9", {"part_id": 17, "verdict": "reject"}), "invalid"),
]


def test_malformed_payloads_are_counted_and_do_not_stop_the_console(console, station):
    name = "malformed-1"
    for kind, payload, _ in MALFORMED:
        station.send(name, kind, payload, retain=False)
    station.send(name, "trigger", b"P1")  # a command to the station: not ours, not malformed
    _publish_part(station, name, part(name, "after-the-garbage", 1, 0.2))
    console.wait_for(lambda: (s := _station_state(console, name)) and s["parts_seen"] == 1, what="the good part after the bad ones")
    assert console.process.poll() is None
    got = _samples(console.metrics())
    expected: dict[tuple[str, str], int] = {}
    for kind, _, reason in MALFORMED:
        expected[(kind, reason)] = expected.get((kind, reason), 0) + 1
    for (kind, reason), count in expected.items():
        assert got.get(("edge_console_malformed_total", None, (("kind", kind), ("reason", reason))), 0) >= count, (kind, reason)
    assert got[("edge_console_messages_total", None, (("kind", "other"),))] >= 1
    # Refusals are logged (throttled) with the station and the key.
    assert any("'malformed-1': result payload refused: score" in line for line in console.log), console.log[-20:]


def test_reject_history_heatmap_and_search(console, station):
    name = "gallery-1"
    message = part(name, "G-0042", 42, 1.75)
    heatmap = jpeg(image_tag(name, message), seed=42)
    station.send(name, "heatmap", heatmap, qos=0)  # may come before its reject
    _publish_part(station, name, message)
    _publish_part(station, name, part(name, "G-0043", 43, 0.2))
    found = console.wait_for(lambda: console.json("/api/rejects?part_id=G-0042")["rejects"], what="the reject in history")
    (reject,) = found
    assert reject["station"] == name and reject["score"] == 1.75 and reject["threshold"] == 0.8125 and reject["cause"] == "defect region"
    assert reject["regions"] == [{"bbox": [120, 64, 40, 22], "area": 610, "peak": 2.1}]
    status, headers, body = console.get(reject["heatmap"])
    assert status == 200 and headers["Content-Type"] == "image/jpeg" and body == heatmap
    assert console.json("/api/rejects?part_id=G-0043")["rejects"] == []  # a pass is no reject
    assert console.json("/api/rejects?part_id=G-0042&until=2000-01-01T00:00:00Z")["rejects"] == []
    status, _, body = console.get("/api/rejects?since=yesterday")
    assert status == 400 and b"since" in body
    for beyond in ("9223372036854775808", "99999999999999999999999", "0"):  # no 64-bit row id
        assert console.get(f"/api/heatmap/{beyond}.jpg")[0] == 404, beyond


def test_security_headers_and_read_only(console):
    status, headers, body = console.get("/")
    assert status == 200 and b"Line overview" in body
    assert "default-src 'self'" in headers["content-security-policy"] and headers["x-content-type-options"] == "nosniff"
    assert console.get("/api/stations")[1]["cache-control"] == "no-store"
    assert console.get("/static/station.js")[0] == 200
    assert console.get("/docs")[0] == 404 and console.get("/openapi.json")[0] == 404
    request_status = _post(console.url + "/api/stations")
    assert request_status == 405
    # A name that rebinds to 127.0.0.1 is refused (the console listens on loopback).
    assert console.get("/", headers={"Host": "evil.example:80"})[0] == 421


def _post(url: str) -> int:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=b"{}", method="POST"), timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


# --- the pages in a real browser ---------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = "/usr/bin/chromedriver" if os.path.exists("/usr/bin/chromedriver") else shutil.which("chromedriver")


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM or not CHROMEDRIVER:
        pytest.skip("chromium and chromium-driver are not installed (Debian: apt-get install -y chromium chromium-driver)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed (pip install selenium)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1400,1100"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


@pytest.fixture
def screenshots(tmp_path) -> Path:
    folder = Path(os.environ.get("EDGE_SCREENSHOTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _wait(driver, condition, timeout_s: float = 15.0, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            value = condition(driver)
        except Exception:  # an element replaced between find and read: look again
            value = None
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what} on {driver.current_url}")


def _loaded(driver, image) -> int:
    return driver.execute_script("return arguments[0].complete ? arguments[0].naturalWidth : 0", image)


def test_pages_in_a_browser(console, station, browser, screenshots):
    from selenium.webdriver.common.by import By

    name, hostile = "line-a", "<img src=x onerror=alert(1)>"
    station.send(name, "status", "online", retain=True)
    station.send(name, "stats", stats(name), retain=True)
    station.send(hostile, "status", "online", retain=True)
    for i in range(30):
        _publish_part(station, name, part(name, f"A-{i:03d}", i, 0.25 + 0.01 * (i % 9) if i % 12 != 5 else 1.4))
    first = part(name, "A-100", 100, 0.3)
    station.send(name, "preview", jpeg(image_tag(name, first), seed=1), qos=0)
    console.wait_for(lambda: (s := _station_state(console, name)) and s["parts_seen"] == 30 and s["preview"], what="station line-a")

    # Overview: the station's row, live; the hostile name shown as text, not markup. The page
    # redraws its rows on every event, so each check finds its elements afresh.
    browser.get(console.url + "/")
    row = f'tr[data-testid="station-row"][data-station="{name}"]'
    _wait(browser, lambda d: "online" in (text := d.find_element(By.CSS_SELECTOR, row).text) and "24.5" in text, what="station row")

    def hostile_text(d):
        return next((r.text for r in d.find_elements(By.CSS_SELECTOR, 'tr[data-testid="station-row"]') if r.get_attribute("data-station") == hostile), None)

    assert hostile in _wait(browser, hostile_text, what="hostile row")
    assert browser.find_elements(By.CSS_SELECTOR, "table.stations img") == []
    # A station that comes up while the page is open appears without a reload.
    station.send("line-b", "status", "online", retain=True)
    _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, 'tr[data-testid="station-row"][data-station="line-b"]'), what="a new station, live")
    browser.save_screenshot(str(screenshots / "overview.png"))

    # Station page: preview, strip, threshold line, histogram quantiles; the live view follows.
    browser.get(console.url + "/station/" + name)
    preview = _wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, 'img[data-testid="preview"]'), what="preview")  # never replaced
    _wait(browser, lambda d: _loaded(d, preview) > 0, what="first preview loaded")
    first_src = preview.get_attribute("src")

    def strip(d):
        return [(item.get_attribute("class"), item.get_attribute("title")) for item in d.find_elements(By.CSS_SELECTOR, '[data-testid="strip-item"]')]

    items = _wait(browser, lambda d: len(found := strip(d)) == 30 and found, what="strip")
    assert sum("reject" in cls for cls, _ in items) == 3 and all("score" in title for _, title in items)
    threshold = _wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, '[data-testid="threshold-line"]').get_attribute("data-threshold"), what="threshold line")
    assert float(threshold) == 0.8125

    def quantiles(d):
        return {q.get_attribute("data-quantile"): float(q.get_attribute("data-value")) for q in d.find_elements(By.CSS_SELECTOR, '[data-testid="calibration-quantile"]')}

    assert _wait(browser, quantiles, what="calibration quantiles") == CALIBRATION_QUANTILES
    station.send(name, "preview", jpeg(image_tag(name, part(name, "A-101", 101, 0.31)), seed=2), qos=0)
    _publish_part(station, name, part(name, "A-101", 101, 0.31))
    _wait(browser, lambda d: preview.get_attribute("src") != first_src and _loaded(d, preview) > 0, what="the live view to change")
    _wait(browser, lambda d: len(strip(d)) == 31, what="the new part in the strip")
    browser.set_window_size(1400, 1500)  # the whole page: live view, strip, chart and histogram
    browser.save_screenshot(str(screenshots / "station.png"))
    browser.set_window_size(1400, 1100)

    # Gallery: a published reject with its heatmap, found by part id.
    reject = part(name, "A-REJ-7", 7007, 1.9)
    station.send(name, "heatmap", jpeg(image_tag(name, reject), seed=7), qos=0)
    _publish_part(station, name, reject)
    console.wait_for(lambda: (r := console.json("/api/rejects?part_id=A-REJ-7")["rejects"]) and r[0]["heatmap"], what="reject with heatmap in history")
    browser.get(console.url + "/rejects?part_id=A-REJ")
    item = _wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, '[data-testid="gallery-item"][data-part-id="A-REJ-7"]'), what="gallery item")
    image = item.find_element(By.CSS_SELECTOR, '[data-testid="gallery-heatmap"]')
    _wait(browser, lambda d: _loaded(d, image) > 0, what="heatmap image loaded")
    assert "defect region" in item.text and "1.9000" in item.text and "0.8125" in item.text and "120,64" in item.text
    browser.get(console.url + "/rejects")
    _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, '[data-testid="gallery-item"]'), what="unfiltered gallery")
    _wait(browser, lambda d: all(_loaded(d, i) > 0 for i in d.find_elements(By.CSS_SELECTOR, '[data-testid="gallery-heatmap"]')[:4]), what="gallery images")
    browser.save_screenshot(str(screenshots / "gallery.png"))

    # The hostile station's own page: the name is text in the heading.
    from urllib.parse import quote

    browser.get(console.url + "/station/" + quote(hostile, safe=""))
    _wait(browser, lambda d: hostile in d.find_element(By.ID, "station-name").text, what="hostile heading")
    assert browser.find_elements(By.CSS_SELECTOR, "h1 img") == []

    severe = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert severe == [], severe
    print(f"screenshots in {screenshots}")
