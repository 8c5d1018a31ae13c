"""The operator's commands a station subscribes to besides the trigger (DESIGN.md: `recipe`,
`feedback`, `teach`): their schemas, and parsing that refuses instead of raising.

Anyone the broker's ACL lets publish can send these, so every payload is checked here and a bad
one is counted and logged by the station, never acted on."""

from __future__ import annotations

import json
from typing import Annotated, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StringConstraints, ValidationError

from edge.triggers import printable, valid_part_id

MAX_COMMAND_BYTES = 4096  # a label or a teach command is a few dozen bytes; more is not one
MAX_TEACH_COUNT = 10_000  # parts one teach-in saves (PNG each: a few GB at most); the console and CLI say the same

FOLDER_RULE = "1-64 letters, digits, '_', '.' or '-', starting with a letter or digit"
FolderName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
DefectType = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,39}$")]


class _Command(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class TeachCommand(_Command):
    """Start or stop collecting good parts into state_dir/teach/<station>/<name>."""

    action: Literal["start", "stop"]
    name: FolderName | None = None  # the teach-in folder; default: the start time
    count: Annotated[StrictInt, Field(ge=1, le=MAX_TEACH_COUNT)] | None = None  # stop after this many parts


class FeedbackCommand(_Command):
    """An operator's label for a recent part: its image goes to review/good or review/defect/<type>."""

    part_id: str
    label: Literal["good", "defect"]
    defect_type: DefectType | None = None


class BadCommand(ValueError):
    """Why a payload is not a command; str() is the line for the log."""


CommandModel = TypeVar("CommandModel", bound=_Command)


def parse_command(payload: bytes, model: type[CommandModel]) -> CommandModel:
    """The command the payload is, or BadCommand saying why not (for the log)."""
    if len(payload) > MAX_COMMAND_BYTES:
        raise BadCommand(f"{len(payload)} bytes, more than the {MAX_COMMAND_BYTES} a command may have")
    try:
        value = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):  # RecursionError: thousands of nested brackets
        raise BadCommand(f"not JSON: {printable(payload[:80].decode('utf-8', 'replace'))!r}") from None
    try:
        command = model.model_validate(value)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(str(k) for k in e['loc']) or 'payload'}: {e['msg']}" for e in error.errors(include_url=False))
        raise BadCommand(problems) from None
    if isinstance(command, FeedbackCommand):
        if valid_part_id(command.part_id) != command.part_id:
            raise BadCommand(f"part_id {printable(command.part_id[:80])!r} cannot be a part id")
        if command.label == "good" and command.defect_type is not None:
            raise BadCommand("defect_type goes with label 'defect' only")
    return command
