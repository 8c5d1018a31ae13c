"""The daemon's YAML config, validated strictly at load.

One frozen pydantic model per section, `extra="forbid"` throughout; the camera source is picked
by its `type`. The YAML is composed with its node tree kept, so that every refusal (an unknown
key, a wrong type, a bad value) names the key's dotted path and its line in the file.
Secrets are read from files (or $CREDENTIALS_DIRECTORY) and never kept in a field or a repr.
"""

from __future__ import annotations

import os
import re
import socket
import tempfile
import typing
from pathlib import Path
from typing import Annotated, Literal

import cv2
import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StrictBool,
    StrictFloat,
    StrictInt,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from edge.config_fields import (
    MAX_STATION_NAME,
    CaFile,
    ConfigError,
    PathSetting,
    ReadableFile,
    TopicPrefix,
    check_client_certificate,
    missing_path,
    read_password,
    read_secret,
    resolve_path,
    valid_station_name,
    yaml_error_line,
)
from engines.backends import BackendName

__all__ = ["ConfigError", "Config", "load_config"]


def _video_file(value: str) -> str:
    path = Path(value)
    if not path.is_file():
        raise ValueError(f"video file {missing_path(value, 'file')}")
    # Opened once here, as the daemon will: an empty or foreign file would otherwise pass and
    # then be retried for ever as a lost camera.
    if path.stat().st_size == 0:
        raise ValueError(f"video file {value} is empty (0 bytes)")
    if not os.access(path, os.R_OK):
        raise ValueError(f"video file {value} is not readable by this user (check its permissions)")
    capture = cv2.VideoCapture(value, cv2.CAP_FFMPEG)
    try:
        if not capture.isOpened():
            raise ValueError(f"{value} is not a video OpenCV (FFmpeg) can read")
    finally:
        capture.release()
    return value


def _folder(value: str) -> str:
    if not Path(value).is_dir():
        raise ValueError(f"folder {missing_path(value, 'folder')}")
    return value


def _stream_url(value: str) -> str:
    if value.split("://", 1)[0].lower() not in ("rtsp", "rtsps", "http", "https"):
        raise ValueError("expected an rtsp:// or http(s):// URL")
    return value


def _station(value: str) -> str:
    if not valid_station_name(value):
        raise ValueError(f"must be 1-{MAX_STATION_NAME} printable characters (at most 200 bytes), without /, + or #, and not '.' or '..' (it names the station's topics and files)")
    return value


def _roi(value: tuple[int, ...]) -> tuple[int, ...]:
    # One message for the shape and the bounds: it says what an ROI is, which pydantic's per-item errors would not.
    if len(value) != 4 or value[0] < 0 or value[1] < 0 or value[2] < 8 or value[3] < 8:
        raise ValueError("expected [x, y, width, height] with x, y >= 0 and a size of at least 8x8")
    return value


RECIPE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
DEFAULT_RECIPE = "default"  # the name of a camera's only bundle when it lists no recipes


def valid_recipe_name(text: str) -> bool:
    """A recipe name as a PLC sends it: letters, digits, '_', '.', '-', at most 64, no leading
    punctuation (it names a topic payload, a log line and the console's selector)."""
    return RECIPE_NAME.fullmatch(text) is not None


def _recipe_name(value: str) -> str:
    if not valid_recipe_name(value):
        raise ValueError("a recipe name is 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit")
    return value


RecipeName = Annotated[str, AfterValidator(_recipe_name)]


def _some_cameras(value: tuple) -> tuple:
    # Not Field(min_length=1): pydantic counts only the cameras that validated, and would add
    # "too short" to every error inside a lone camera.
    if not value:
        raise ValueError("at least one camera is needed")
    return value


# Strict scalars: YAML already types its values, so "5" for a number or "yes please" for a flag is
# a mistake to report, not to convert. Floats take whole numbers (fps: 25).


def _writable_directory(value: str) -> str:
    """A directory the daemon can write (its outbox, audit log and frame numbers), or one it can
    create: refused here rather than in a restart loop under systemd."""
    path = Path(value)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{existing} is a file, not a directory" if existing == path else f"{existing} is a file, so {value} cannot be a directory")
    try:
        tempfile.TemporaryDirectory(dir=existing).cleanup()
    except OSError as error:
        raise ValueError(f"cannot write in {existing} ({error.strerror or error}); the daemon keeps its outbox and audit log there") from None
    return value


def _public_key(value: str) -> str:
    from engines.signing import SigningError, check_public_key

    try:
        check_public_key(Path(value))
    except SigningError as error:
        raise ValueError(str(error)) from None
    return value


PublicKeyFile = Annotated[ReadableFile, AfterValidator(_public_key)]
Positive = Annotated[StrictFloat, Field(gt=0, allow_inf_nan=False)]
# Frames a second: at least one in 1000 s (a pace slower than that is a typo, and 1/fps overflows
# near 1e-308), at most what any camera delivers.
FramesPerSecond = Annotated[StrictFloat, Field(ge=0.001, le=10_000, allow_inf_nan=False)]


class _Section(BaseModel):
    # Numbers become text where text is expected: `device: 0` and `station: 12` are names.
    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)


class TlsConfig(_Section):
    ca_file: CaFile
    cert_file: ReadableFile | None = None
    key_file: ReadableFile | None = None
    key_password_file: ReadableFile | None = None
    insecure_skip_hostname_check: StrictBool = False

    @model_validator(mode="after")
    def _client_certificate_is_whole(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        if self.cert_file is not None and self.key_file is not None:
            check_client_certificate(self.cert_file, self.key_file, read_secret(self.key_password_file))
        return self


class MqttConfig(_Section):
    host: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)] = "localhost"
    port: Annotated[StrictInt, Field(ge=1, le=65535)] = 1883
    topic_prefix: TopicPrefix = "edge"
    client_id: str | None = None
    username: str | None = None
    password_file: ReadableFile | None = None  # else $CREDENTIALS_DIRECTORY/mqtt_password when present
    keepalive_s: Annotated[StrictInt, Field(ge=5, le=3600)] = 30
    tls: TlsConfig | None = None
    # Private, so that it is no key of the file and stays out of repr and str.
    _password: str | None = PrivateAttr(default=None)

    @property
    def password(self) -> str | None:
        return self._password

    @model_validator(mode="after")
    def _read_password(self) -> MqttConfig:
        self._password = read_password(self.password_file)
        return self


# Each source type has only its own keys; code that reads them narrows by type (edge/capture.py).


class V4l2SourceConfig(_Section):
    type: Literal["v4l2"]
    device: str  # /dev/videoN or an index
    width: StrictInt | None = None
    height: StrictInt | None = None
    fps: FramesPerSecond | None = None  # asked of the device


class FileSourceConfig(_Section):
    type: Literal["file"]
    path: Annotated[str, StringConstraints(min_length=1), AfterValidator(resolve_path), AfterValidator(_video_file)]
    loop: StrictBool = False
    fps: FramesPerSecond | None = None  # pace playback like a camera; None: as fast as inspected


class StreamSourceConfig(_Section):
    type: Literal["stream"]
    url: Annotated[str, AfterValidator(_stream_url)]


class GstreamerSourceConfig(_Section):
    type: Literal["gstreamer"]
    pipeline: str


class FolderSourceConfig(_Section):
    type: Literal["folder"]
    path: Annotated[str, StringConstraints(min_length=1), AfterValidator(resolve_path), AfterValidator(_folder)]
    poll_interval_s: Annotated[StrictFloat, Field(gt=0, le=60, allow_inf_nan=False)] = 0.2
    done_dir: PathSetting | None = None  # move each file here once its part is answered (default: leave it, remember)


_SOURCE_MODELS = (V4l2SourceConfig, FileSourceConfig, StreamSourceConfig, GstreamerSourceConfig, FolderSourceConfig)
SOURCE_TYPES: tuple[str, ...] = tuple(typing.get_args(m.model_fields["type"].annotation)[0] for m in _SOURCE_MODELS)
_SOURCE_BY_TYPE: dict[str, type[BaseModel]] = dict(zip(SOURCE_TYPES, _SOURCE_MODELS))
VideoSourceConfig = V4l2SourceConfig | FileSourceConfig | StreamSourceConfig | GstreamerSourceConfig  # read through OpenCV
SourceConfig = Annotated[
    V4l2SourceConfig | FileSourceConfig | StreamSourceConfig | GstreamerSourceConfig | FolderSourceConfig,
    Field(discriminator="type"),
]
_SOURCE_ADAPTER: TypeAdapter[SourceConfig] = TypeAdapter(SourceConfig)


def source_config(**keys) -> SourceConfig:
    """A camera source from its keys, as under `source:` in the file (type picks the model)."""
    return _SOURCE_ADAPTER.validate_python(keys)


class CameraConfig(_Section):
    source: SourceConfig
    station: Annotated[str, AfterValidator(_station)] = Field(default_factory=socket.gethostname, validate_default=True)
    roi: Annotated[tuple[StrictInt, ...], AfterValidator(_roi)] | None = None  # x, y, width, height in frame pixels
    mode: Literal["free-run", "triggered"] = "free-run"
    trigger_timeout_s: Positive = 2.0
    bundle: PathSetting | None = None  # overrides the top-level bundle
    # Products this station inspects, each with its bundle; the PLC picks one with the `recipe`
    # topic or a trigger's `recipe` field, and `recipe` names the one used until it does.
    recipes: dict[RecipeName, PathSetting] | None = None
    recipe: RecipeName | None = None
    min_region_area: Annotated[StrictInt, Field(ge=1)] = 16

    @model_validator(mode="after")
    def _recipes_are_whole(self) -> CameraConfig:
        if self.recipes is None:
            if self.recipe is not None:
                raise ValueError("'recipe' names one of 'recipes', and this camera lists none")
            return self
        if self.bundle is not None:
            raise ValueError("give either 'bundle' or 'recipes', not both (a recipe names its own bundle)")
        if not self.recipes:
            raise ValueError("'recipes' is empty: list at least one, as NAME: BUNDLE_DIRECTORY")
        if self.recipe is None and len(self.recipes) > 1:
            raise ValueError(f"set 'recipe': the one to inspect with until the PLC picks one (of {', '.join(self.recipes)})")
        if self.recipe is not None and self.recipe not in self.recipes:
            raise ValueError(f"recipe {self.recipe!r} is not in 'recipes' ({', '.join(self.recipes)})")
        return self

    @property
    def default_recipe(self) -> str:
        if self.recipes is None:
            return DEFAULT_RECIPE
        return self.recipe or next(iter(self.recipes))


class PublishConfig(_Section):
    results: StrictBool = True
    heatmaps: Literal["rejects", "all", "none"] = "rejects"
    heatmap_quality: Annotated[StrictInt, Field(ge=1, le=100)] = 85
    stats_interval_s: Annotated[StrictFloat, Field(ge=0.5, le=3600, allow_inf_nan=False)] = 5.0
    # The console's live view: the latest inspected part with its map, at most this often (0: off).
    preview_hz: Annotated[StrictFloat, Field(ge=0, le=30)] = 0.0


class AlarmsConfig(_Section):
    # Passing parts' median score this many calibration spreads (q50..q95) away from the good
    # parts' median, over the stats window: lighting, lens or product changed.
    drift_spreads: Annotated[StrictFloat, Field(gt=0)] = 3.0
    # Rejects waiting for the broker beyond this: the PLC is not getting them.
    outbox_backlog: Annotated[StrictInt, Field(ge=1)] = 100
    # More than this share of the last reject_rate_parts inspected parts rejected. Score drift
    # watches passing parts only, so it is blind when the picture changes so much that nothing
    # passes (an MJPEG camera on a bundle calibrated from PNG images rejects every good plate).
    # 1.0 turns it off.
    reject_rate: Annotated[StrictFloat, Field(gt=0, le=1)] = 0.5
    reject_rate_parts: Annotated[StrictInt, Field(ge=10)] = 50


class ReviewConfig(_Section):
    """The ring of recent parts' images that operator labels find (edge/review.py)."""

    enabled: StrictBool = True
    keep_parts: Annotated[StrictInt, Field(ge=10)] = 500  # rejects on disk, and passes in memory, each
    keep_mb: Annotated[StrictFloat, Field(gt=0)] = 500.0  # rejects' images on disk
    memory_mb: Annotated[StrictFloat, Field(gt=0)] = 200.0  # passes' images in memory
    # A reject nobody labelled within this long is deleted (passes go as newer parts come).
    keep_rejects_hours: Positive = 24.0
    # The ring keeps this much free on the state directory's disk, which the reject outbox and the
    # audit log need more: below it the ring's oldest images go, and new ones are not kept.
    min_free_mb: Annotated[StrictFloat, Field(ge=0)] = 200.0


def _default_state_dir() -> str:
    # systemd's StateDirectory= sets $STATE_DIRECTORY (per instance for the template unit).
    return os.environ.get("STATE_DIRECTORY", "/var/lib/edge-inspect").split(":")[0]


class Config(_Section):
    cameras: Annotated[tuple[CameraConfig, ...], AfterValidator(_some_cameras)]
    bundle: PathSetting | None = None
    # Ed25519 public key (PEM): when set, only bundles signed with its private key are run.
    bundle_public_key: PublicKeyFile | None = None
    backend: BackendName = "auto"
    threads: Annotated[StrictInt, Field(ge=0)] = 0  # CPU cores inference may use, all stations together; 0: every core this process may use
    workers: Annotated[StrictInt, Field(ge=0, le=64)] = 0  # frames each station inspects at once (ONNX Runtime only); 0: one per core of its share, at most 8
    state_dir: Annotated[PathSetting, AfterValidator(_writable_directory)] = Field(default_factory=_default_state_dir, validate_default=True)
    queue_size: Annotated[StrictInt, Field(ge=1, le=1000)] = 4
    audit_max_bytes: Annotated[StrictInt, Field(ge=10_000)] = 50_000_000
    audit_backups: Annotated[StrictInt, Field(ge=0, le=1000)] = 5
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    publish: PublishConfig = Field(default_factory=PublishConfig)
    alarms: AlarmsConfig = Field(default_factory=AlarmsConfig)
    review: ReviewConfig = Field(default_factory=ReviewConfig)

    def bundle_of(self, camera: CameraConfig) -> str:
        """The bundle directory a camera inspects with by default: its default recipe's, else its
        own, else the top-level one (load_config refuses a camera with none)."""
        return self.recipes_of(camera)[camera.default_recipe]

    def recipes_of(self, camera: CameraConfig) -> dict[str, str]:
        """Every bundle directory a camera may inspect with, by recipe name (one, named
        'default', for a camera that lists no recipes)."""
        if camera.recipes is not None:
            return dict(camera.recipes)
        bundle = camera.bundle or self.bundle
        if bundle is None:
            raise ConfigError(f"camera {camera.station} has no bundle: set 'bundle' at the top level or per camera")
        return {DEFAULT_RECIPE: bundle}


def load_config(path: str | os.PathLike, check_frames: bool = False) -> Config:
    """Parse and validate; raises ConfigError with the file, key and line. `check_frames` also
    opens the sources whose frame size is known before the first frame (--validate-config): the
    daemon itself starts anyway and raises an alarm, so parts are rejected, not left unanswered."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"{path}: cannot read config ({error.strerror})") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not a text file (byte {error.start} is not UTF-8); a config is YAML text") from None
    data, root = _parse_yaml(path, text)
    try:
        config = Config.model_validate(data, context={"base": path.parent})
    except ValidationError as error:
        raise ConfigError("\n".join(_message(path, root, e) for e in error.errors(include_url=False))) from None
    problem = _check_cameras(config) or (_check_frames(config) if check_frames else None)
    if problem is not None:
        keys, message = problem
        raise ConfigError(_located(path, root, keys, message))
    return config


def _parse_yaml(path: Path, text: str) -> tuple[object, yaml.Node]:
    """The plain data, and the node tree its lines are looked up in."""
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            raise ConfigError(f"{path}: empty config; at least 'bundle' and 'cameras' are needed")
        _refuse_repeated_keys(path, root, [], set())
        return loader.construct_document(root), root
    except yaml.YAMLError as error:
        raise ConfigError(yaml_error_line(path, error)) from None
    finally:
        loader.dispose()


def _refuse_repeated_keys(path: Path, node: yaml.Node, keys: list, visited: set[int]) -> None:
    # YAML keeps the last of a repeated key; a config edited twice in one place must not silently lose the first.
    if id(node) in visited:  # an alias: checked where its anchor is
        return
    visited.add(id(node))
    if isinstance(node, yaml.MappingNode):
        seen = set()
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                if key_node.value in seen:
                    raise ConfigError(f"{path}: {_dotted([*keys, key_node.value])} (line {key_node.start_mark.line + 1}): given twice")
                seen.add(key_node.value)
            _refuse_repeated_keys(path, value_node, [*keys, key_node.value], visited)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _refuse_repeated_keys(path, item, [*keys, index], visited)


def _check_cameras(config: Config) -> tuple[list, str] | None:
    """What no single section can check: stations against each other, and each camera's bundle."""
    stations = set()
    for i, camera in enumerate(config.cameras):
        if camera.station in stations:
            return ["cameras", i, "station"], f"station {camera.station!r} is used twice"
        stations.add(camera.station)
        if camera.recipes is not None:
            for name, path in camera.recipes.items():
                if not Path(path).is_dir():
                    return ["cameras", i, "recipes", name], f"bundle directory {missing_path(path, 'folder')}, for recipe {name!r} (give the folder edge-calibrate wrote)"
            continue
        bundle = camera.bundle or config.bundle
        if bundle is None:
            return ["cameras", i, "bundle"], "no bundle: set 'bundle' at the top level or per camera"
        if not Path(bundle).is_dir():
            return (["cameras", i, "bundle"] if camera.bundle else ["bundle"]), f"bundle directory {missing_path(bundle, 'folder')} (give the folder edge-calibrate wrote)"
    return None


def _check_frames(config: Config) -> tuple[list, str] | None:
    from edge.capture import known_frame_size, roi_outside

    for i, camera in enumerate(config.cameras):
        size = known_frame_size(camera.source) if camera.roi is not None else None
        outside = roi_outside(camera.roi, *size) if size else None
        if outside:
            return ["cameras", i, "roi"], f"{outside} of {camera.source.type} source; fix the ROI or the source"
    return None


def _message(path: Path, root: yaml.Node, error) -> str:
    """One pydantic error as the key written in the file, its line and what to do."""
    loc = error["loc"]
    keys, source_type, _ = _walk(loc)
    kind = error["type"]
    message = error["msg"]
    if kind == "extra_forbidden":
        section = _walk(loc[:-1])[2]
        allowed = ", ".join(sorted(section.model_fields)) if section is not None else "none"
        message = f"unknown key for a {source_type} source; allowed: {allowed}" if source_type else f"unknown key; allowed: {allowed}"
    elif kind == "missing" and source_type:
        keys, message = keys[:-1], f"a {source_type} source needs '{keys[-1]}'"
    elif kind == "missing":
        message = "required key missing"
    elif kind == "union_tag_invalid":
        keys, message = [*keys, "type"], f"must be one of {', '.join(SOURCE_TYPES)}"
    elif kind == "union_tag_not_found":
        keys, message = [*keys, "type"], "required key missing"
    elif kind == "value_error":
        message = str(error["ctx"]["error"])  # our own validators' words, without pydantic's "Value error, "
    elif kind in ("model_type", "model_attributes_type", "dict_type"):
        message = "expected a mapping of settings"
    elif kind in ("tuple_type", "list_type"):
        message = "expected a list"
    elif isinstance(error.get("input"), (str, int, float)):
        message = f"{message}, got {error['input']!r}"
    return _located(path, root, keys, message)


def _located(path: Path, root: yaml.Node, keys: list, message: str) -> str:
    return f"{path}: {_dotted(keys) or 'top level'} (line {_line_of(root, keys)}): {message}"


def _dotted(keys: list) -> str:
    text = ""
    for key in keys:
        text += f"[{key}]" if isinstance(key, int) else (f".{key}" if text else str(key))
    return text


def _line_of(root: yaml.Node, keys: list) -> int:
    """The line of the deepest of `keys` that is in the file: a missing key is reported on its section's line."""
    node, line = root, root.start_mark.line + 1
    for key in keys:
        if isinstance(node, yaml.MappingNode):
            pair = next(((k, v) for k, v in node.value if k.value == key), None)
            if pair is None:
                break
            line, node = pair[0].start_mark.line + 1, pair[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and 0 <= key < len(node.value):
            node = node.value[key]
            line = node.start_mark.line + 1
        else:
            break
    return line


def _walk(loc: tuple) -> tuple[list, str | None, type[BaseModel] | None]:
    """Pydantic's error location as the keys written in the file, the source type it passed
    through, and the model that reads the mapping it ends at (None past any model). A source's
    location carries the type tag pydantic picked its model by (cameras.0.source.file.path),
    which is no key in the file."""
    keys: list = []
    source_type = None
    section: type[BaseModel] | None = Config
    at_source = False
    for part in loc:
        if at_source:
            source_type, section, at_source = part, _SOURCE_BY_TYPE.get(part), False
            continue
        keys.append(part)
        if isinstance(part, int) or section is None:
            continue  # an item of a list is read by the list's model (cameras)
        field = section.model_fields.get(part)
        inner = _sections_in(field.annotation) if field is not None else []
        at_source = len(inner) > 1
        section = inner[0] if len(inner) == 1 else None
    return keys, source_type, section


def _sections_in(annotation) -> list[type[BaseModel]]:
    """The models in a field's type: one for a section, several for the source union."""
    if typing.get_origin(annotation) is None and isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for arg in typing.get_args(annotation) for model in _sections_in(arg)]
