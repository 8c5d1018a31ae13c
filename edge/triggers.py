"""PLC triggers: parsing the `trigger` payload, and the triggers waiting for a frame."""

from __future__ import annotations

import collections
import json
import threading
import time
import unicodedata
from dataclasses import dataclass

from edge.config import valid_recipe_name

MAX_TRIGGER_BYTES = 256
MAX_PART_ID = 128  # characters: a serial number, a barcode, a file name's stem
# Beyond this the oldest waiting trigger is answered without a frame (not_inspected): a PLC this
# far ahead of the camera is misconfigured, and every part it asked about still gets its answer.
WAITING_TRIGGERS = 1000
REMEMBERED_IDS = 10_000  # how far back a repeated part id is noticed


def valid_part_id(text: str) -> str | None:
    """The part id, stripped, or None if it cannot be one: empty, longer than MAX_PART_ID, or
    with control or format characters (terminal escapes, NUL, newlines, bidi overrides), which
    would go into the journal, the audit file and the PLC's messages as they are."""
    text = text.strip()
    if not text or len(text) > MAX_PART_ID:
        return None
    if any(unicodedata.category(c) in ("Cc", "Cf", "Cs", "Co", "Cn") for c in text):
        return None
    return text


def printable(text: str) -> str:
    """A name for the log: control characters escaped, so the journal shows them, not runs them."""
    return "".join(c if unicodedata.category(c)[0] != "C" else c.encode("unicode_escape").decode("ascii") for c in text)


@dataclass(frozen=True)
class Trigger:
    part_id: str
    recipe: str | None = None  # the product this part is, when the PLC says so with the trigger
    # Why this part cannot be inspected as asked (a recipe field that is no recipe name, a key a
    # trigger does not have). The part still takes its frame, so the next part does not get it,
    # and is answered not_inspected with this reason: the PLC waits for every part it named.
    problem: str | None = None


TRIGGER_KEYS = ("part_id", "recipe")


class _Number(str):
    """A JSON number as the text it was written in."""


def parse_trigger(payload: bytes) -> Trigger | None:
    """A trigger is a JSON object with part_id (and optionally recipe), a JSON string, or the
    plain part id. Without a usable part id it is refused (None), never raised: a malformed
    message must not stop a line. With one, anything else wrong is the trigger's `problem`."""
    try:
        text = payload.decode("utf-8").strip()
    except UnicodeDecodeError:
        return None
    if not text or len(text) > MAX_TRIGGER_BYTES:
        return None
    try:
        # Numbers keep the characters the PLC sent: a serial 1.50 or 1E5 must come back as itself,
        # not as 1.5 or 100000.0 (nor NaN as nan), or the PLC cannot match the answer to its part.
        value = json.loads(text, parse_int=_Number, parse_float=_Number, parse_constant=_Number)
    except (ValueError, RecursionError):
        if text[0] in '{["':
            return None  # broken JSON, not a part id that happens to start with a brace
        value = text
    recipe, problem = None, None
    if isinstance(value, dict):
        recipe, problem = _trigger_recipe(value)
        value = value.get("part_id")
    if not isinstance(value, str):
        return None
    part_id = valid_part_id(value)
    if part_id is None:
        return None
    return Trigger(part_id, None, problem) if problem else Trigger(part_id, recipe)


def _trigger_recipe(fields: dict) -> tuple[str | None, str | None]:
    """(recipe, problem) of a JSON trigger: a misspelt key ("Recipe") or a recipe that is no
    name must not mean "inspect with the current product"."""
    unknown = sorted(k for k in fields if k not in TRIGGER_KEYS)
    if unknown:
        keys = ", ".join(repr(printable(k)[:40]) for k in unknown[:3])
        return None, f"the trigger has key(s) {keys}; a trigger has only part_id and recipe"
    recipe = fields.get("recipe")
    if recipe is None:
        return None, None
    if not isinstance(recipe, str) or isinstance(recipe, _Number):
        written = recipe if isinstance(recipe, _Number) else json.dumps(recipe)
        return None, f"the trigger's recipe must be a JSON string, not {printable(written)[:40]}"
    if not valid_recipe_name(recipe):
        return None, f"the trigger's recipe {printable(recipe)[:80]!r} is not a recipe name (1-64 letters, digits, '_', '.', '-')"
    return recipe, None


class PendingTriggers:
    """Parts the PLC asked about, oldest first, each with the recipe it was asked under, waiting
    for the next frame (MQTT's thread adds, the capture thread takes and expires)."""

    def __init__(self, timeout_s: float, capacity: int = WAITING_TRIGGERS):
        self.timeout_s = timeout_s
        self.capacity = capacity
        self.lock = threading.Lock()
        self.waiting: collections.deque[tuple[Trigger, float]] = collections.deque()
        self.pushed_out: list[Trigger] = []  # the oldest, over capacity: answered by the capture thread

    def add(self, trigger: Trigger) -> None:
        with self.lock:
            if len(self.waiting) >= self.capacity:
                self.pushed_out.append(self.waiting.popleft()[0])
            self.waiting.append((trigger, time.monotonic()))

    def overflowed(self) -> list[Trigger]:
        """Take the triggers that more than `capacity` newer ones pushed out of the queue."""
        with self.lock:
            out, self.pushed_out = self.pushed_out, []
        return out

    def next_part(self) -> Trigger | None:
        """The part the frame just captured belongs to, if any trigger waits."""
        with self.lock:
            return self.waiting.popleft()[0] if self.waiting else None

    def expired(self, everything: bool = False) -> list[Trigger]:
        """Take the triggers that waited longer than the timeout (all of them at the end)."""
        now = time.monotonic()
        out = []
        with self.lock:
            while self.waiting and (everything or now - self.waiting[0][1] > self.timeout_s):
                out.append(self.waiting.popleft()[0])
        return out


class RecentPartIds:
    """The last REMEMBERED_IDS part ids a station inspected (its capture thread alone), to say when
    one comes again: a PLC that re-triggers, or a camera that reuses a file name."""

    def __init__(self, size: int = REMEMBERED_IDS):
        self.order: collections.deque[str] = collections.deque()
        self.seen: set[str] = set()
        self.size = size

    def seen_again(self, part_id: str) -> bool:
        if part_id in self.seen:
            return True
        self.order.append(part_id)
        self.seen.add(part_id)
        if len(self.order) > self.size:
            self.seen.discard(self.order.popleft())
        return False
