"""edge-inspect --validate-config: a table of bad configs, each refused with exit code 2 and a
message naming the key (and its line); the good one passes; secrets never appear."""
from __future__ import annotations

import copy

import pytest
import yaml

from edge.cli import main as edge_inspect
from tests.scenarios import parts_video

SECRET = "s3cret-Pa55"


@pytest.fixture
def setup(small_bundle, tmp_path):
    bundle, _ = small_bundle
    video = parts_video(tmp_path / "line.avi", 2, bundle.manifest.input_size)
    (tmp_path / "empty.avi").write_bytes(b"")
    (tmp_path / "garbage.avi").write_bytes(b"RIFF, but no video in it at all" * 10)
    password = tmp_path / "mqtt.pw"
    password.write_text(SECRET + "\n")
    base = {
        "bundle": str(bundle.path),
        "state_dir": str(tmp_path / "state"),
        "mqtt": {"host": "127.0.0.1", "port": 1883, "username": "line", "password_file": str(password)},
        "cameras": [{"station": "s1", "source": {"type": "file", "path": str(video)}}],
    }
    return base, tmp_path


def _run(tmp_path, text: str, capsys) -> tuple[int, str]:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    code = edge_inspect(["--config", str(path), "--validate-config"])
    captured = capsys.readouterr()
    return code, captured.err + captured.out


def _set(config: dict, dotted: str, value) -> dict:
    config = copy.deepcopy(config)
    *parents, last = dotted.split(".")
    node = config
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    key = int(last) if isinstance(node, list) else last
    if value is _DELETE:
        del node[key]
    else:
        node[key] = value
    return config


_DELETE = object()
SYSTEM_CA = "/etc/ssl/certs/ca-certificates.crt"  # Debian's ca-certificates: PEM, every CA a broker may use

BAD = [
    # (what, dotted key to change, value, key the message must name)
    ("unknown top-level key", "colour", "red", "colour"),
    ("unknown nested key", "mqtt.hots", "x", "mqtt.hots"),
    ("port is text", "mqtt.port", "eighteen", "mqtt.port"),
    ("port out of range", "mqtt.port", 70000, "mqtt.port"),
    ("port zero", "mqtt.port", 0, "mqtt.port"),
    ("bundle missing", "bundle", "/nonexistent/bundle", "bundle"),
    ("bundle is a file", "bundle", "/etc/hostname", "/etc/hostname is a file, not a folder"),
    ("video file is a folder", "cameras.0.source.path", "/etc", "/etc is a folder, not a file"),
    ("no cameras key", "cameras", _DELETE, "cameras"),
    ("empty cameras", "cameras", [], "cameras"),
    ("wildcard in topic prefix", "mqtt.topic_prefix", "edge/#", "mqtt.topic_prefix"),
    ("empty topic level", "mqtt.topic_prefix", "edge//line", "mqtt.topic_prefix"),
    ("slash in station", "cameras.0.station", "a/b", "cameras[0].station"),
    ("unknown source type", "cameras.0.source.type", "usb", "cameras[0].source.type"),
    ("file source without path", "cameras.0.source.path", _DELETE, "cameras[0].source"),
    ("video file not found", "cameras.0.source.path", "/nonexistent.avi", "cameras[0].source.path"),
    ("video file empty", "cameras.0.source.path", "empty.avi", "is empty (0 bytes)"),
    ("video file not a video", "cameras.0.source.path", "garbage.avi", "not a video OpenCV (FFmpeg) can read"),
    ("unreadable TLS CA", "mqtt.tls", {"ca_file": "/nonexistent/ca.pem"}, "mqtt.tls.ca_file"),
    ("TLS cert without key", "mqtt.tls", {"ca_file": SYSTEM_CA, "cert_file": SYSTEM_CA}, "cert_file and key_file go together"),
    # Loaded as paho loads them: a wrong file is refused now, not a traceback when the service starts.
    ("TLS CA not PEM", "mqtt.tls", {"ca_file": "/etc/hostname"}, "/etc/hostname holds no CA certificate in PEM form"),
    ("TLS CA is a folder", "mqtt.tls", {"ca_file": "/etc"}, "/etc is a folder"),
    ("TLS cert and key not a pair", "mqtt.tls", {"ca_file": SYSTEM_CA, "cert_file": SYSTEM_CA, "key_file": "/etc/hostname"}, "are not a PEM certificate and its key"),
    ("password file missing", "mqtt.password_file", "/nonexistent/pw", "mqtt.password_file"),
    ("unknown backend", "backend", "cuda", "backend"),
    ("queue of zero", "queue_size", 0, "queue_size"),
    ("negative threads", "threads", -1, "threads"),
    ("too many workers", "workers", 65, "workers"),
    ("workers not a number", "workers", "two", "workers"),
    ("heatmap policy", "publish.heatmaps", "some", "publish.heatmaps"),
    ("heatmap quality", "publish.heatmap_quality", 101, "publish.heatmap_quality"),
    ("ROI with three numbers", "cameras.0.roi", [0, 0, 10], "cameras[0].roi"),
    ("ROI too small", "cameras.0.roi", [0, 0, 4, 4], "cameras[0].roi"),
    ("unknown mode", "cameras.0.mode", "auto", "cameras[0].mode"),
    ("stream with ftp URL", "cameras.0.source", {"type": "stream", "url": "ftp://cam/1"}, "cameras[0].source.url"),
    ("negative fps", "cameras.0.source.fps", -5, "cameras[0].source.fps"),
    ("timeout is text", "cameras.0.trigger_timeout_s", "soon", "cameras[0].trigger_timeout_s"),
    ("keepalive too short", "mqtt.keepalive_s", 1, "mqtt.keepalive_s"),
    ("loop is not a boolean", "cameras.0.source.loop", "yes please", "cameras[0].source.loop"),
    # "." is the config file's own folder: relative paths resolve against it.
    ("duplicate station", "cameras", [{"station": "s1", "source": {"type": "folder", "path": "."}}] * 2, "cameras[1].station"),
    ("folder source path missing", "cameras.0.source", {"type": "folder", "path": "no-such-folder"}, "cameras[0].source.path"),
    ("v4l2 without device", "cameras.0.source", {"type": "v4l2"}, "cameras[0].source"),
    ("gstreamer without pipeline", "cameras.0.source", {"type": "gstreamer"}, "cameras[0].source"),
    ("stream url missing", "cameras.0.source", {"type": "stream"}, "cameras[0].source"),
    ("source type missing", "cameras.0.source.type", _DELETE, "cameras[0].source.type"),
    ("min_region_area 0", "cameras.0.min_region_area", 0, "cameras[0].min_region_area"),
    ("trigger_timeout_s 0", "cameras.0.trigger_timeout_s", 0, "cameras[0].trigger_timeout_s"),
    ("stats_interval_s 0.1", "publish.stats_interval_s", 0.1, "publish.stats_interval_s"),
    ("audit_max_bytes 5", "audit_max_bytes", 5, "audit_max_bytes"),
    ("url on a file source", "cameras.0.source.url", "rtsp://cam/1", "cameras[0].source.url"),
    ("camera is not a mapping", "cameras", ["usb0"], "cameras[0]"),
    ("state_dir is a file", "state_dir", "/etc/hostname", "state_dir"),
    ("state_dir inside a file", "state_dir", "/etc/hostname/state", "state_dir"),
    ("state_dir not writable", "state_dir", "/proc/edge-state", "state_dir"),
    ("bundle public key missing", "bundle_public_key", "/nonexistent/key.pub", "bundle_public_key"),
    ("bundle public key not a key", "bundle_public_key", "/etc/hostname", "bundle_public_key"),
    ("password written in the file", "mqtt.password", SECRET, "mqtt.password"),
    ("recipe name with a space", "cameras.0.recipes", {"a b": "."}, "cameras[0].recipes"),
    ("recipe bundle missing", "cameras.0.recipes", {"A": "/nonexistent/bundle"}, "cameras[0].recipes.A"),
    ("several recipes and no default", "cameras.0.recipes", {"A": ".", "B": "."}, "cameras[0]"),
    ("default recipe not listed", "cameras.0", {"station": "s1", "source": {"type": "folder", "path": "."}, "recipes": {"A": "."}, "recipe": "B"}, "cameras[0]"),
    ("recipes and a bundle", "cameras.0", {"station": "s1", "source": {"type": "folder", "path": "."}, "recipes": {"A": "."}, "bundle": "."}, "cameras[0]"),
    ("recipe without recipes", "cameras.0.recipe", "A", "cameras[0]"),
    ("empty recipes", "cameras.0.recipes", {}, "cameras[0]"),
    ("station '..' (its files would be the state folder's own)", "cameras.0.station", "..", "cameras[0].station"),
    ("station with a non-breaking space", "cameras.0.station", "Presse\u00a01", "cameras[0].station"),
    ("station name of 200 characters", "cameras.0.station", "S" * 200, "cameras[0].station"),
    ("station name of 128 characters but 384 bytes", "cameras.0.station", "\u65e5" * 128, "cameras[0].station"),
    ("fps too small to pace", "cameras.0.source.fps", 1e-320, "cameras[0].source.fps"),
    ("fps infinite", "cameras.0.source.fps", float("inf"), "cameras[0].source.fps"),
    ("poll interval infinite", "cameras.0.source", {"type": "folder", "path": ".", "poll_interval_s": float("inf")}, "cameras[0].source.poll_interval_s"),
    ("poll interval of 2 minutes", "cameras.0.source", {"type": "folder", "path": ".", "poll_interval_s": 120}, "cameras[0].source.poll_interval_s"),
    ("empty folder path", "cameras.0.source", {"type": "folder", "path": ""}, "cameras[0].source.path"),
    ("stats interval infinite", "publish.stats_interval_s", float("inf"), "publish.stats_interval_s"),
    ("review ring of one part", "review.keep_parts", 1, "review.keep_parts"),
    ("reject-rate alarm above 1", "alarms.reject_rate", 1.5, "alarms.reject_rate"),
    ("reject-rate alarm over 3 parts", "alarms.reject_rate_parts", 3, "alarms.reject_rate_parts"),
]


@pytest.mark.parametrize("what, key, value, named", BAD, ids=[b[0] for b in BAD])
def test_bad_config_is_refused_naming_the_key(setup, capsys, what, key, value, named):
    base, tmp_path = setup
    code, message = _run(tmp_path, yaml.safe_dump(_set(base, key, value), sort_keys=False), capsys)
    assert code == 2, f"{what}: accepted ({message})"
    assert named in message, f"{what}: message does not name {named}: {message}"
    assert "Traceback" not in message
    assert SECRET not in message
    if named not in ("cameras",):
        assert "(line " in message, f"{what}: message gives no line: {message}"


def test_duplicate_key_and_broken_yaml(setup, capsys):
    base, tmp_path = setup
    path = tmp_path / "config.yaml"
    path.write_bytes(b"\xff\xfe\x00 not text")
    code = edge_inspect(["--config", str(path), "--validate-config"])
    message = capsys.readouterr().err
    assert code == 2 and "not a text file" in message and "Traceback" not in message
    text = yaml.safe_dump(base, sort_keys=False)
    code, message = _run(tmp_path, text + "backend: onnxruntime\nbackend: torch\n", capsys)
    assert code == 2 and "backend" in message and "given twice" in message
    code, message = _run(tmp_path, text + "cameras: [\n", capsys)
    assert code == 2 and "not valid YAML at line" in message and len(message.strip().splitlines()) == 1, message
    code, message = _run(tmp_path, "", capsys)
    assert code == 2 and "empty config" in message


def test_duplicate_station(setup, capsys):
    base, tmp_path = setup
    config = copy.deepcopy(base)
    config["cameras"].append(copy.deepcopy(config["cameras"][0]))
    code, message = _run(tmp_path, yaml.safe_dump(config), capsys)
    assert code == 2 and "cameras[1].station" in message and "twice" in message


def test_good_config_passes_and_keeps_the_secret_out_of_output(setup, capsys):
    base, tmp_path = setup
    code, message = _run(tmp_path, yaml.safe_dump(base), capsys)
    assert code == 0, message
    assert "OK (1 camera(s))" in message and SECRET not in message


def test_corrupt_bundle_is_refused_at_validation(setup, capsys, tmp_path_factory):
    import shutil

    base, tmp_path = setup
    copy_dir = tmp_path_factory.mktemp("corrupt") / "bundle"
    shutil.copytree(base["bundle"], copy_dir)
    weights = copy_dir / "flows.pt"
    weights.write_bytes(weights.read_bytes()[:100])
    code, message = _run(tmp_path, yaml.safe_dump(_set(base, "bundle", str(copy_dir))), capsys)
    assert code == 2 and "flows.pt" in message and "checksum" in message
    assert "station s1, recipe default: " in message  # which one, where a line has dozens


def test_an_roi_outside_the_frames_of_a_known_source_is_refused_at_validation(setup, capsys):
    """A video file's frame size is known before the first frame: an ROI reaching outside it is
    refused with the key and line, instead of every part becoming an error reject at run time."""
    import cv2
    import numpy as np

    base, tmp_path = setup
    video = tmp_path / "small.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter.fourcc(*"MJPG"), 10, (160, 120))
    for _ in range(3):
        writer.write(np.full((120, 160, 3), 90, np.uint8))
    writer.release()
    config = _set(_set(base, "cameras.0.source.path", str(video)), "cameras.0.roi", [100, 0, 80, 80])
    code, message = _run(tmp_path, yaml.safe_dump(config, sort_keys=False), capsys)
    assert code == 2 and "cameras[0].roi" in message and "(line " in message and "160x120" in message, message
    code, message = _run(tmp_path, yaml.safe_dump(_set(config, "cameras.0.roi", [80, 40, 80, 80]), sort_keys=False), capsys)
    assert code == 0, message  # ends exactly at the frame's edge
