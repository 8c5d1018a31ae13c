"""The daemon's YAML config, validated strictly at load.

Every section is a frozen dataclass; the loader walks the YAML node tree so that an unknown key,
a wrong type or a bad value is refused with the key's dotted path and its line in the file.
Secrets are read from files (or $CREDENTIALS_DIRECTORY) and never stored in the repr.
"""
from __future__ import annotations

import dataclasses
import os
import socket
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

BACKENDS = ("auto", "onnxruntime", "torch", "tensorrt")
SOURCE_TYPES = ("v4l2", "file", "stream", "gstreamer", "folder")
MODES = ("free-run", "triggered")
HEATMAP_POLICIES = ("rejects", "all", "none")


class ConfigError(ValueError):
    """A config problem; str() is a message naming the file, key and line."""


@dataclass(frozen=True)
class TlsConfig:
    ca_file: str
    cert_file: str | None = None
    key_file: str | None = None
    key_password_file: str | None = None
    insecure_skip_hostname_check: bool = False


@dataclass(frozen=True)
class MqttConfig:
    host: str = "localhost"
    port: int = 1883
    topic_prefix: str = "edge"
    client_id: str | None = None
    username: str | None = None
    password_file: str | None = None  # else $CREDENTIALS_DIRECTORY/mqtt_password when present
    keepalive_s: int = 30
    tls: TlsConfig | None = None
    password: str | None = field(default=None, repr=False, compare=False)  # filled from password_file


@dataclass(frozen=True)
class SourceConfig:
    type: str
    path: str | None = None  # file, folder
    device: str | None = None  # v4l2: /dev/videoN or an index
    url: str | None = None  # stream
    pipeline: str | None = None  # gstreamer
    loop: bool = False  # file
    width: int | None = None  # v4l2
    height: int | None = None
    fps: float | None = None  # v4l2 request; file: pace playback (None = as fast as inspected)
    poll_interval_s: float = 0.2  # folder
    done_dir: str | None = None  # folder: move each file here once its part is answered (default: leave it, remember)


@dataclass(frozen=True)
class CameraConfig:
    source: SourceConfig
    station: str = field(default_factory=socket.gethostname)
    roi: tuple[int, int, int, int] | None = None  # x, y, width, height in frame pixels
    mode: str = "free-run"
    trigger_timeout_s: float = 2.0
    bundle: str | None = None  # overrides the top-level bundle
    min_region_area: int = 16


@dataclass(frozen=True)
class PublishConfig:
    results: bool = True
    heatmaps: str = "rejects"
    heatmap_quality: int = 85
    stats_interval_s: float = 5.0


@dataclass(frozen=True)
class Config:
    cameras: tuple[CameraConfig, ...]
    bundle: str | None = None
    backend: str = "auto"
    threads: int = 0  # CPU cores inference may use, all stations together; 0: every core this process may use
    workers: int = 0  # frames each station inspects at once (ONNX Runtime only); 0: one per core of its share, at most 8
    # systemd's StateDirectory= sets $STATE_DIRECTORY (per instance for the template unit).
    state_dir: str = field(default_factory=lambda: os.environ.get("STATE_DIRECTORY", "/var/lib/edge-inspect").split(":")[0])
    queue_size: int = 4
    audit_max_bytes: int = 50_000_000
    audit_backups: int = 5
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    publish: PublishConfig = field(default_factory=PublishConfig)


class _Reader:
    def __init__(self, path: Path):
        self.path = path

    def fail(self, key: str, node: yaml.Node | None, message: str) -> typing.NoReturn:
        where = f" (line {node.start_mark.line + 1})" if node is not None else ""
        raise ConfigError(f"{self.path}: {key or 'top level'}{where}: {message}")

    def build(self, cls, node: yaml.Node, key: str):
        if not isinstance(node, yaml.MappingNode):
            self.fail(key, node, f"expected a mapping of {cls.__name__} settings")
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls) if f.compare or f.name != "password"}
        settable = {name for name in fields if name != "password"}
        values, seen = {}, {}
        for key_node, value_node in node.value:
            name = key_node.value
            path = f"{key}.{name}" if key else name
            if name not in settable:
                self.fail(path, key_node, f"unknown key; allowed: {', '.join(sorted(settable))}")
            if name in seen:
                self.fail(path, key_node, "given twice")
            seen[name] = key_node
            values[name] = self.convert(hints[name], value_node, path)
        for name, f in fields.items():
            if name not in values and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                self.fail(f"{key}.{name}" if key else name, node, "required key missing")
        try:
            return cls(**values), seen
        except TypeError as error:
            self.fail(key, node, str(error))

    def convert(self, hint, node: yaml.Node, key: str):
        origin = typing.get_origin(hint)
        args = typing.get_args(hint)
        if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) and type(None) in args:
            if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null":
                return None
            inner = [a for a in args if a is not type(None)][0]
            return self.convert(inner, node, key)
        if dataclasses.is_dataclass(hint):
            return self.build(hint, node, key)[0]
        if origin is tuple:
            if not isinstance(node, yaml.SequenceNode):
                self.fail(key, node, "expected a list")
            if len(args) == 2 and args[1] is Ellipsis:
                return tuple(self.convert(args[0], item, f"{key}[{i}]") for i, item in enumerate(node.value))
            if len(node.value) != len(args):
                self.fail(key, node, f"expected a list of {len(args)} values")
            return tuple(self.convert(a, item, f"{key}[{i}]") for i, (a, item) in enumerate(zip(args, node.value)))
        if not isinstance(node, yaml.ScalarNode):
            self.fail(key, node, f"expected a single {hint.__name__} value")
        value = yaml.safe_load(yaml.serialize(node))
        if hint is bool:
            if not isinstance(value, bool):
                self.fail(key, node, f"expected true or false, got {node.value!r}")
            return value
        if hint is int:
            if isinstance(value, bool) or not isinstance(value, int):
                self.fail(key, node, f"expected a whole number, got {node.value!r}")
            return value
        if hint is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                self.fail(key, node, f"expected a number, got {node.value!r}")
            return float(value)
        if hint is str:
            if isinstance(value, (dict, list)) or value is None:
                self.fail(key, node, f"expected text, got {node.value!r}")
            return str(value)
        raise AssertionError(f"unsupported config type {hint}")


def _check(reader: _Reader, cond: bool, key: str, node, message: str) -> None:
    if not cond:
        reader.fail(key, node, message)


def load_config(path: str | os.PathLike) -> Config:
    """Parse and validate; raises ConfigError with the file, key and line."""
    path = Path(path)
    reader = _Reader(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError(f"{path}: cannot read config ({error.strerror})") from None
    try:
        root = yaml.compose(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    if root is None:
        raise ConfigError(f"{path}: empty config; at least 'bundle' and 'cameras' are needed")
    config, seen = reader.build(Config, root, "")
    config = _resolve_paths(config, path.parent)
    validate(config, reader, root, seen, path.parent)
    return _with_secrets(config, reader, seen)


def _node_of(root: yaml.Node, dotted: str):
    node = root
    for part in dotted.replace("]", "").replace("[", ".").split("."):
        if isinstance(node, yaml.MappingNode):
            node = next((v for k, v in node.value if k.value == part), node)
        elif isinstance(node, yaml.SequenceNode) and part.isdigit() and int(part) < len(node.value):
            node = node.value[int(part)]
    return node


def validate(config: Config, reader: _Reader, root: yaml.Node, seen: dict, base: Path) -> None:
    def check(cond, key, message):
        _check(reader, cond, key, _node_of(root, key), message)

    check(config.backend in BACKENDS, "backend", f"must be one of {', '.join(BACKENDS)}")
    check(config.threads >= 0, "threads", "must be 0 (all cores) or more")
    check(0 <= config.workers <= 64, "workers", "must be between 0 (one per core) and 64")
    check(1 <= config.queue_size <= 1000, "queue_size", "must be between 1 and 1000")
    check(config.audit_max_bytes >= 10_000, "audit_max_bytes", "must be at least 10000")
    check(0 <= config.audit_backups <= 1000, "audit_backups", "must be between 0 and 1000")
    check(len(config.cameras) >= 1, "cameras", "at least one camera is needed")
    m = config.mqtt
    check(1 <= m.port <= 65535, "mqtt.port", f"port {m.port} out of range 1-65535")
    check(bool(m.host.strip()), "mqtt.host", "must not be empty")
    check(5 <= m.keepalive_s <= 3600, "mqtt.keepalive_s", "must be between 5 and 3600")
    check(_valid_topic_part(m.topic_prefix, allow_slash=True), "mqtt.topic_prefix", "must be non-empty, without +, # or empty levels")
    if m.password_file:
        check(os.access(m.password_file, os.R_OK), "mqtt.password_file", f"cannot read {m.password_file}")
    if m.tls is not None:
        for name in ("ca_file", "cert_file", "key_file", "key_password_file"):
            value = getattr(m.tls, name)
            if value is not None:
                check(os.access(value, os.R_OK), f"mqtt.tls.{name}", f"cannot read {value}")
        check((m.tls.cert_file is None) == (m.tls.key_file is None), "mqtt.tls", "cert_file and key_file go together")
    p = config.publish
    check(p.heatmaps in HEATMAP_POLICIES, "publish.heatmaps", f"must be one of {', '.join(HEATMAP_POLICIES)}")
    check(1 <= p.heatmap_quality <= 100, "publish.heatmap_quality", "must be between 1 and 100")
    check(p.stats_interval_s >= 0.5, "publish.stats_interval_s", "must be at least 0.5")
    stations = set()
    for i, camera in enumerate(config.cameras):
        key = f"cameras[{i}]"
        check(_valid_topic_part(camera.station, allow_slash=False), f"{key}.station", "must be non-empty, without /, + or #")
        check(camera.station not in stations, f"{key}.station", f"station {camera.station!r} is used twice")
        stations.add(camera.station)
        check(camera.mode in MODES, f"{key}.mode", f"must be one of {', '.join(MODES)}")
        check(camera.trigger_timeout_s > 0, f"{key}.trigger_timeout_s", "must be positive")
        check(camera.min_region_area >= 1, f"{key}.min_region_area", "must be at least 1")
        if camera.roi is not None:
            x, y, w, h = camera.roi
            check(x >= 0 and y >= 0 and w >= 8 and h >= 8, f"{key}.roi", "expected [x, y, width, height] with x, y >= 0 and a size of at least 8x8")
        bundle = camera.bundle or config.bundle
        check(bundle is not None, f"{key}.bundle", "no bundle: set 'bundle' at the top level or per camera")
        check(Path(bundle).is_dir(), f"{key}.bundle" if camera.bundle else "bundle", f"bundle directory {bundle} not found (run edge-calibrate first)")
        s = camera.source
        skey = f"{key}.source"
        check(s.type in SOURCE_TYPES, f"{skey}.type", f"must be one of {', '.join(SOURCE_TYPES)}")
        needed = {"file": "path", "folder": "path", "v4l2": "device", "stream": "url", "gstreamer": "pipeline"}[s.type]
        check(getattr(s, needed) is not None, skey, f"a {s.type} source needs '{needed}'")
        if s.type == "file":
            check(Path(s.path).is_file(), f"{skey}.path", f"video file {s.path} not found")
        if s.type == "folder":
            check(Path(s.path).is_dir(), f"{skey}.path", f"folder {s.path} not found")
        if s.type == "stream":
            check(s.url.split("://", 1)[0].lower() in ("rtsp", "rtsps", "http", "https"), f"{skey}.url", "expected an rtsp:// or http(s):// URL")
        check(s.poll_interval_s > 0, f"{skey}.poll_interval_s", "must be positive")
        check(s.fps is None or s.fps > 0, f"{skey}.fps", "must be positive")


def _resolve_paths(config: Config, base: Path) -> Config:
    """Relative paths in a config are relative to the config file, not to the working directory."""

    def resolve(value):
        return value if value is None or os.path.isabs(value) else str((base / value).resolve())

    replace = dataclasses.replace
    cameras = tuple(
        replace(c, bundle=resolve(c.bundle), source=replace(c.source, path=resolve(c.source.path), done_dir=resolve(c.source.done_dir)))
        for c in config.cameras
    )
    m = config.mqtt
    tls = m.tls and replace(
        m.tls,
        ca_file=resolve(m.tls.ca_file), cert_file=resolve(m.tls.cert_file),
        key_file=resolve(m.tls.key_file), key_password_file=resolve(m.tls.key_password_file),
    )
    mqtt = replace(m, password_file=resolve(m.password_file), tls=tls)
    return replace(config, cameras=cameras, bundle=resolve(config.bundle), state_dir=resolve(config.state_dir), mqtt=mqtt)


def _valid_topic_part(text: str, allow_slash: bool) -> bool:
    if not text or any(c in text for c in "+#\0"):
        return False
    if not allow_slash and "/" in text:
        return False
    return all(level for level in text.split("/"))


def _with_secrets(config: Config, reader: _Reader, seen: dict) -> Config:
    m = config.mqtt
    password_file = m.password_file
    credentials = os.environ.get("CREDENTIALS_DIRECTORY")
    if password_file is None and credentials and Path(credentials, "mqtt_password").is_file():
        password_file = str(Path(credentials, "mqtt_password"))
    if password_file is None:
        return config
    password = Path(password_file).read_text().rstrip("\r\n")
    return dataclasses.replace(config, mqtt=dataclasses.replace(m, password=password))
