"""A station's recipes: the bundle for each product it inspects, and the one the PLC asked for.

The PLC switches with the retained `recipe` topic or a trigger's `recipe` field (MQTT's thread);
the capture thread stamps the recipe on each part as it enters the station, so a switch takes
effect at a part boundary and every part is inspected with the bundle it was asked under.
Every bundle is loaded ahead (edge.station_engine.load_engines): a switch loads nothing."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from edge.config import valid_recipe_name
from edge.station_engine import StationEngine
from edge.triggers import printable

log = logging.getLogger("edge.recipes")


class StationRecipes:
    def __init__(self, station: str, engines: dict[str, StationEngine], default: str, remembered: Path):
        self.station = station
        self.engines = engines  # recipe name -> engine; replaced whole on reload
        self.default = default
        self.remembered = remembered  # the last recipe asked for, so a restart resumes it before the broker answers
        self.lock = threading.Lock()
        self.active = self._recall()

    def _recall(self) -> str:
        try:
            name = self.remembered.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            return self.default
        if name in self.engines:
            return name
        log.warning("%s: recipe %r from before the restart is not configured any more; inspecting with %r", self.station, name[:64], self.default)
        return self.default

    @property
    def names(self) -> list[str]:
        return list(self.engines)

    def current(self) -> str:
        with self.lock:
            return self.active

    def select(self, name: str | None) -> str:
        """Make `name` (None: the configured default) the recipe of the next parts, known or not:
        parts asked under an unknown one are rejected, never inspected with another bundle."""
        name = self.default if name is None else name
        with self.lock:
            changed, self.active = self.active != name, name
        if changed:
            log.info("%s: recipe %s for the next parts", self.station, name)
            self._remember(name)
        return name

    def _remember(self, name: str) -> None:
        try:
            self.remembered.parent.mkdir(parents=True, exist_ok=True)
            temporary = self.remembered.with_suffix(".tmp")
            temporary.write_text(name + "\n", encoding="utf-8")
            os.replace(temporary, self.remembered)
        except OSError as error:  # inspection goes on; only a restart forgets the switch
            log.warning("%s: cannot remember recipe %s in %s (%s)", self.station, name, self.remembered, error.strerror)

    def engine(self, recipe: str | None) -> StationEngine | None:
        """The engine for a part's recipe; None for a name this station does not have."""
        return self.engines.get(recipe or self.default)

    def bundle_id(self, recipe: str | None) -> str:
        engine = self.engine(recipe)
        return engine.bundle.bundle_id if engine is not None else ""

    def known(self, name: str) -> bool:
        return name in self.engines


def parse_recipe(payload: bytes) -> str | None:
    """The `recipe` topic's payload: a recipe name as plain text ("" for an empty payload, which
    is how a retained recipe is cleared: back to the configured default). None: not a name."""
    if len(payload) > 256:
        return None
    try:
        text = payload.decode("utf-8").strip()
    except UnicodeDecodeError:
        return None
    if not text:
        return ""
    return text if valid_recipe_name(text) else None


def refused_recipe_name(payload: bytes) -> str:
    """What the log, the alarm and each answer call a `recipe` payload that is no name: its text,
    control characters escaped, cut at 80 characters. It can never be a configured name (those
    pass valid_recipe_name; a cut one ends in an ellipsis), so parts asked under it are refused."""
    text = printable(payload[:400].decode("utf-8", "replace").strip())
    if len(text) > 80 or len(payload) > 400 or valid_recipe_name(text) or not text:
        text = text[:80] + "\u2026"  # never empty: that would mean the configured default
    return text
