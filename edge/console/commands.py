"""The operators' commands the console sends to a station (DESIGN.md's MQTT contract: `recipe`,
`teach`, `feedback`): the request bodies the pages post, validated strictly, and the exact MQTT
message each becomes.

The names' rules are the daemon's own (edge/config.py's recipe names, edge/commands.py's folder
and defect type names): what the console sends, the station takes. A body that breaks them is
refused here with the key and the rule, and nothing is published.
"""

from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt, StringConstraints, ValidationError, model_validator

from edge.commands import MAX_TEACH_COUNT, DefectType, FolderName
from edge.console.payloads import MAX_ID, describe

MAX_BODY_BYTES = 4096
RECIPE_RULE = "1-64 letters, digits, '_', '.' or '-', starting with a letter or digit"
RecipeName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
UNSPECIFIED = "unspecified"  # the defect type sent when the operator gives none


def _part_id(value: str) -> str:
    if value != value.strip() or any(unicodedata.category(c)[0] == "C" for c in value):
        raise ValueError("a part id has no control characters and no leading or trailing spaces")
    return value


PartId = Annotated[str, Field(min_length=1, max_length=MAX_ID), AfterValidator(_part_id)]


class BadBody(ValueError):
    """A request body refused; str() names the key and what is wrong."""


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class RecipeBody(_Body):
    recipe: RecipeName


class TeachStart(_Body):
    action: Literal["start"]
    name: FolderName | None = None  # the teach-in folder; the station names one by the time without it
    count: Annotated[StrictInt, Field(ge=1, le=MAX_TEACH_COUNT)] | None = None  # stop after this many parts


class TeachStop(_Body):
    action: Literal["stop"]


class FeedbackBody(_Body):
    part_id: PartId
    label: Literal["good", "defect"]
    defect_type: DefectType | None = None

    @model_validator(mode="after")
    def _type_goes_with_defect(self) -> FeedbackBody:
        if self.label == "good" and self.defect_type is not None:
            raise ValueError("defect_type goes with label 'defect' only")
        return self


@dataclass(frozen=True)
class Command:
    """One MQTT message to a station's command topic."""

    kind: str  # recipe | teach | feedback: the topic under the station
    payload: bytes
    retain: bool
    said: str  # for the log and the page: what was asked


def _object(body: bytes) -> dict:
    if len(body) > MAX_BODY_BYTES:
        raise BadBody(f"the body has {len(body)} bytes; a command has at most {MAX_BODY_BYTES}")
    try:
        value = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):  # RecursionError: thousands of nested brackets
        raise BadBody("the body is not JSON") from None
    if not isinstance(value, dict):
        raise BadBody("the body is not a JSON object")
    return value


def _validated(model: type[_Body], value: dict) -> _Body:
    try:
        return model.model_validate(value)
    except ValidationError as error:
        message = describe(error)
        if any(item["type"] == "string_pattern_mismatch" for item in error.errors()):
            message += _rules(model)
        raise BadBody(message) from None


def _rules(model: type[_Body]) -> str:
    if model is RecipeBody:
        return f" (a recipe name is {RECIPE_RULE})"
    if model is TeachStart:
        return " (a folder name is 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit)"
    return " (a defect type is 1-40 letters, digits, '_' or '-', starting with a letter or digit)"


def _json(value: dict) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def recipe_command(body: bytes) -> tuple[RecipeBody, Command]:
    request = _validated(RecipeBody, _object(body))
    assert isinstance(request, RecipeBody)
    # Plain UTF-8 text, retained: a station that restarts or reconnects gets it again.
    return request, Command("recipe", request.recipe.encode("utf-8"), True, f"recipe {request.recipe!r}")


def teach_command(body: bytes) -> Command:
    value = _object(body)
    action = value.get("action")
    if action == "start":
        start = _validated(TeachStart, value)
        assert isinstance(start, TeachStart)
        message: dict = {"action": "start"}
        if start.name is not None:
            message["name"] = start.name
        if start.count is not None:
            message["count"] = start.count
        said = "teach-in start" + (f" into {start.name!r}" if start.name else "") + (f" for {start.count} parts" if start.count else "")
        return Command("teach", _json(message), False, said)
    if action == "stop":
        _validated(TeachStop, value)
        return Command("teach", _json({"action": "stop"}), False, "teach-in stop")
    raise BadBody(f"action: expected 'start' or 'stop', got {str(action)[:40]!r}" if action is not None else "action: required ('start' or 'stop')")


def feedback_command(body: bytes) -> tuple[FeedbackBody, Command]:
    request = _validated(FeedbackBody, _object(body))
    assert isinstance(request, FeedbackBody)
    message: dict = {"part_id": request.part_id, "label": request.label}
    if request.label == "defect":
        message["defect_type"] = request.defect_type or UNSPECIFIED
    said = f"label {request.label}" + (f" ({message['defect_type']})" if request.label == "defect" else "") + f" for part {request.part_id!r}"
    return request, Command("feedback", _json(message), False, said)
