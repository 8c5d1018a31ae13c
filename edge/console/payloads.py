"""What the stations publish, validated at the door (DESIGN.md's MQTT contract).

Everything on the broker is untrusted: any client the ACL lets publish under the prefix can send
anything. Each payload is size-capped, parsed and validated by a strict pydantic model here;
what fails is refused with a reason that names the key, and the rest of the console only ever
sees the typed results. Extra keys are ignored, so a newer daemon that adds fields still shows.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Annotated, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge.jpeg_comment import NotAJpeg, read_comment

# Caps on one payload. JSON messages are a few hundred bytes; 64 kB leaves room for a part with
# many regions. A 512 px heatmap is 30-80 kB; 2 MB stops a runaway publisher filling memory.
MAX_JSON_BYTES = 64 * 1024
MAX_JPEG_BYTES = 2 * 1024 * 1024
MAX_TEXT = 1024  # cause, error, messages
MAX_ID = 256  # part ids, bundle ids, alarm keys

VERDICTS = ("pass", "reject", "error", "no_frame", "not_inspected")


class PayloadError(ValueError):
    """A payload refused; str() says why, naming the key where there is one. `reason` is a short
    label for the metrics (oversized, not_json, invalid, not_jpeg)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


Id = Annotated[str, Field(min_length=1, max_length=MAX_ID)]
Text = Annotated[str, Field(max_length=MAX_TEXT)]
Finite = Annotated[float, Field(allow_inf_nan=False)]
Count = Annotated[int, Field(ge=0)]


class _Message(BaseModel):
    # strict: a number where text is expected (or "0.5" for a score) is a publisher's bug to show,
    # not to paper over. ints are still taken for floats.
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


_M = TypeVar("_M", bound=_Message)


class Region(_Message):
    bbox: Annotated[tuple[int, int, int, int], Field()]
    area: Count
    peak: Finite


class PartMessage(_Message):
    """A `result` or `reject` message: one inspected (or not inspected) part."""

    part_id: Id
    frame_id: int | None = None
    capture_time: str | None = None
    verdict: Literal["pass", "reject", "error", "no_frame", "not_inspected"]
    score: Finite | None = None
    threshold: Finite | None = None
    bundle_id: Annotated[str, Field(max_length=MAX_ID)] | None = None
    regions: Annotated[list[Region], Field(max_length=1000)] = []
    cause: Text | None = None
    error: Text | None = None
    file: Text | None = None
    time: str | None = None
    late: bool = False
    recipe: Annotated[str, Field(max_length=MAX_ID)] | None = None  # the product it was inspected as


class Latency(_Message):
    p50: Finite | None = None
    p95: Finite | None = None
    p99: Finite | None = None


class Drift(_Message):
    recent_median: Finite | None = None
    recent_q95: Finite | None = None
    calibration_median: Finite | None = None
    calibration_q95: Finite | None = None
    median_shift_in_spreads: Finite | None = None


class TeachState(_Message):
    """A station's teach-in: collecting good parts into a folder for edge-calibrate."""

    active: bool
    folder: Text | None = None
    saved: Count = 0
    count: Count | None = None  # the number of parts it stops at, when it was given one


class LabelCounts(_Message):
    """Operators' labels the station has filed, by what they say of its verdicts."""

    false_rejects: Count = 0  # rejected, labelled good
    misses: Count = 0  # passed, labelled defect
    confirmed_rejects: Count = 0
    confirmed_good: Count = 0


class StatsMessage(_Message):
    """The retained `stats` message. Every key is optional: an older daemon sends fewer."""

    parts: Count | None = None
    rejects: Count | None = None
    reject_rate: Finite | None = None
    fps: Finite | None = None
    latency_ms: Latency | None = None
    dropped_frames: Count | None = None
    bad_frames: Count | None = None
    trigger_timeouts: Count | None = None
    bad_triggers: Count | None = None
    inference_errors: Count | None = None
    not_inspected: Count | None = None
    uninspected: Count | None = None
    repeated_part_ids: Count | None = None
    uptime_s: Finite | None = None
    drift: Drift | None = None
    camera: Annotated[str, Field(max_length=32)] | None = None
    bundle_id: Annotated[str, Field(max_length=MAX_ID)] | None = None
    outbox_pending: Count | None = None
    audit_write_errors: Count | None = None
    audit_files_dropped: Count | None = None
    rejects_not_saved: Count | None = None
    results_dropped: Count | None = None
    disk_full: bool | None = None
    broker_error: Annotated[str, Field(max_length=4096)] | None = None
    calibration_quantiles: Annotated[dict[Annotated[str, Field(max_length=16)], Finite], Field(max_length=32)] | None = None
    threshold: Finite | None = None
    recipe: Annotated[str, Field(max_length=MAX_ID)] | None = None  # the active recipe
    recipes: Annotated[list[Annotated[str, Field(min_length=1, max_length=MAX_ID)]], Field(max_length=256)] | None = None
    teach: TeachState | None = None
    labels: LabelCounts | None = None


class ActiveAlarm(_Message):
    alarm: Id
    message: Text = ""
    since: Annotated[str, Field(max_length=64)] | None = None


class AlarmMessage(_Message):
    """The retained `alarm` message: the whole set of active alarms; empty is all clear."""

    active: Annotated[list[ActiveAlarm], Field(max_length=64)]
    time: Annotated[str, Field(max_length=64)] | None = None


class ImageTag(_Message):
    """The JSON in a heatmap's or preview's COM segment."""

    part_id: Id
    frame_id: int | None = None
    verdict: Annotated[str, Field(max_length=32)] | None = None
    score: Finite | None = None
    threshold: Finite | None = None


@dataclass(frozen=True)
class Image:
    """A heatmap or preview JPEG, with the part it shows when its tag says so."""

    jpeg: bytes
    tag: ImageTag | None
    received: float


def _validated(model: type[_M], payload: bytes) -> _M:
    if len(payload) > MAX_JSON_BYTES:
        raise PayloadError("oversized", f"{len(payload)} bytes, over the {MAX_JSON_BYTES} byte cap")
    # Pydantic's own JSON parser: it reads arrays as tuples in strict mode, bounds the nesting
    # depth, and the Finite fields refuse the NaN and Infinity it would otherwise accept.
    try:
        return model.model_validate_json(payload)
    except ValidationError as error:
        if any(item["type"] == "json_invalid" for item in error.errors()):
            raise PayloadError("not_json", f"not JSON: {error.errors()[0]['msg'][:200]}") from None
        raise PayloadError("invalid", describe(error)) from None


def describe(error: ValidationError) -> str:
    """Pydantic's errors as `key.path: what is wrong`, the first three."""
    parts = []
    for item in error.errors(include_url=False)[:3]:
        key = ".".join(str(k) for k in item["loc"]) or "top level"
        parts.append(f"{key}: {item['msg']}")
    more = error.error_count() - len(parts)
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def parse_part(payload: bytes) -> PartMessage:
    return _validated(PartMessage, payload)


def parse_stats(payload: bytes) -> StatsMessage:
    return _validated(StatsMessage, payload)


def parse_alarms(payload: bytes) -> AlarmMessage:
    return _validated(AlarmMessage, payload)


def parse_status(payload: bytes) -> Literal["online", "offline"]:
    text = payload[:16].strip().decode("ascii", "replace")
    if len(payload) > 16 or text not in ("online", "offline"):
        raise PayloadError("invalid", f"status must be 'online' or 'offline', got {text[:16]!r}")
    return "online" if text == "online" else "offline"


def parse_image(payload: bytes, received: float) -> Image:
    """A heatmap or preview. A JPEG without our tag is kept, unattributed; a tag that is there but
    does not validate is refused, because it would attach the image to the wrong part."""
    if len(payload) > MAX_JPEG_BYTES:
        raise PayloadError("oversized", f"{len(payload)} bytes, over the {MAX_JPEG_BYTES} byte cap")
    try:
        comment = read_comment(payload)
    except NotAJpeg as error:
        raise PayloadError("not_jpeg", f"not a JPEG: {error}") from None
    if comment is None or "part_id" not in comment.data:
        return Image(payload, None, received)
    try:
        tag = ImageTag.model_validate(comment.data)
    except ValidationError as error:
        raise PayloadError("invalid", f"JPEG comment: {describe(error)}") from None
    return Image(payload, tag, received)


def epoch_of(text: str | None) -> float | None:
    """Seconds since the epoch of an ISO 8601 time (UTC when it names no zone), or None."""
    if not text or len(text) > 64:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    value = moment.timestamp()
    return value if math.isfinite(value) else None


@dataclass(frozen=True)
class PartRecord:
    """One part as the console keeps it: live model, history and pages."""

    station: str
    part_id: str
    frame_id: int | None
    time: float  # capture time; the answer's time or our arrival for parts without one
    received: float
    verdict: str
    score: float | None
    threshold: float | None
    bundle_id: str | None
    cause: str | None
    regions: tuple[Region, ...]
    error: str | None
    late: bool
    recipe: str | None = None

    @property
    def key(self) -> tuple[str, str, int | None]:
        """What a part is deduplicated by: a reject comes on both `result` and `reject`."""
        return (self.station, self.part_id, self.frame_id)

    @property
    def is_reject(self) -> bool:
        return self.verdict != "pass"

    @classmethod
    def of(cls, station: str, message: PartMessage, received: float | None = None) -> PartRecord:
        arrived = time.time() if received is None else received
        moment = epoch_of(message.capture_time) or epoch_of(message.time) or arrived
        return cls(
            station=station,
            part_id=message.part_id,
            frame_id=message.frame_id,
            time=moment,
            received=arrived,
            verdict=message.verdict,
            score=message.score,
            threshold=message.threshold,
            bundle_id=message.bundle_id,
            cause=message.cause,
            regions=tuple(message.regions),
            error=message.error,
            late=message.late,
            recipe=message.recipe,
        )

    def regions_json(self) -> str:
        return json.dumps([region.model_dump(mode="json") for region in self.regions], separators=(",", ":"))

    def to_json(self) -> dict:
        return {
            "station": self.station,
            "part_id": self.part_id,
            "frame_id": self.frame_id,
            "time": iso(self.time),
            "verdict": self.verdict,
            "score": self.score,
            "threshold": self.threshold,
            "bundle_id": self.bundle_id,
            "cause": self.cause,
            "regions": [region.model_dump(mode="json") for region in self.regions],
            "error": self.error,
            "late": self.late,
            "recipe": self.recipe,
        }


def iso(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds")
