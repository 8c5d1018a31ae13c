"""What a station does with the commands it subscribes to (DESIGN.md: trigger, recipe, feedback,
teach). Called on MQTT's network thread: each handler validates, acts in a few microseconds (a
rename at most) and returns; a bad payload is counted and logged, never acted on."""

from __future__ import annotations

import logging

from edge.alarms import UNKNOWN_RECIPE, Alarms
from edge.commands import BadCommand, CommandModel, FeedbackCommand, TeachCommand, parse_command
from edge.counters import ThrottledLog
from edge.recipes import StationRecipes, parse_recipe, refused_recipe_name
from edge.review import ReviewRing
from edge.stats import StationStats
from edge.teach import TeachIn
from edge.triggers import PendingTriggers, Trigger, parse_trigger, printable

log = logging.getLogger("edge.commands")
RECIPE_TOPIC = "the recipe topic"


class StationCommands:
    def __init__(self, station: str, recipes: StationRecipes, triggers: PendingTriggers, alarms: Alarms, teach: TeachIn, review: ReviewRing, stats: StationStats):
        self.station = station
        self.recipes = recipes
        self.triggers = triggers
        self.alarms = alarms
        self.teach = teach
        self.review = review
        self.bad = {kind: ThrottledLog(log, logging.WARNING, first=5, every=100, count=stats.bad_commands[kind]) for kind in stats.bad_commands}
        self.bad["trigger"] = ThrottledLog(log, logging.WARNING, first=5, every=100, count=stats.bad_triggers)

    def handlers(self) -> dict:
        """Topic name under the station -> handler, as the publisher subscribes them (recipe
        first: a retained recipe must apply before the triggers that follow it)."""
        return {"recipe": self.on_recipe, "trigger": self.on_trigger, "feedback": self.on_feedback, "teach": self.on_teach}

    def on_trigger(self, payload: bytes) -> None:
        """A part id for the next frame, with the recipe asked for now (or the trigger's own)."""
        trigger = parse_trigger(payload)
        if trigger is None:
            self.bad["trigger"]("%s: ignored malformed trigger %r", self.station, payload[:80])
            return
        if trigger.problem is not None:
            # Still queued: it takes its part's frame and is answered not_inspected with the reason.
            self.bad["trigger"]("%s: part %s is not inspected: %s", self.station, trigger.part_id, trigger.problem)
            self.triggers.add(Trigger(trigger.part_id, self.recipes.current(), trigger.problem))
            return
        if trigger.recipe is not None:
            self._check_recipe(trigger.recipe, "a trigger")
        self.triggers.add(Trigger(trigger.part_id, trigger.recipe or self.recipes.current()))

    def on_recipe(self, payload: bytes) -> None:
        name = parse_recipe(payload)
        if name is None:
            # Not a name, so no recipe this station has: the next parts are rejected as not
            # inspected, as under an unknown name. Keeping the previous product would inspect
            # the new one with the wrong bundle, without a word.
            self.bad["recipe"]("%s: recipe %r is not a recipe name (1-64 letters, digits, '_', '.', '-')", self.station, payload[:80])
            name = refused_recipe_name(payload)
        active = self.recipes.select(name or None)
        self._check_recipe(active, RECIPE_TOPIC)

    def _check_recipe(self, name: str, asked_by: str) -> None:
        if not self.recipes.known(name):
            known = ", ".join(self.recipes.names)
            message = f"{asked_by} asked for recipe {name!r}, which this station does not have ({known}); parts asked under it are rejected as not inspected"
            # The topic's name is restated; triggers' are not (interleaved unknown names would
            # publish the alarm on every part).
            self.alarms.raise_alarm(UNKNOWN_RECIPE, message, restate=asked_by == RECIPE_TOPIC)
        elif self.recipes.known(self.recipes.current()):
            # A trigger naming a known recipe clears the alarm only while the recipe topic's does
            # not itself reject every part asked without one.
            self.alarms.clear(UNKNOWN_RECIPE)

    def _parsed(self, kind: str, model: type[CommandModel], payload: bytes) -> CommandModel | None:
        try:
            return parse_command(payload, model)
        except BadCommand as error:
            self.bad[kind]("%s: ignored %s command: %s", self.station, kind, error)
            return None

    def on_feedback(self, payload: bytes) -> None:
        command = self._parsed("feedback", FeedbackCommand, payload)
        if command is None:
            return
        problem = self.review.label(command)
        if problem is not None:
            self.bad["feedback"]("%s: ignored feedback for part %s: %s", self.station, printable(command.part_id), problem)

    def on_teach(self, payload: bytes) -> None:
        command = self._parsed("teach", TeachCommand, payload)
        if command is None:
            return
        if command.action == "stop":
            if not self.teach.stop():
                log.info("%s: teach stop, but no teach-in runs", self.station)
            return
        recipe = self.recipes.current()
        try:
            self.teach.start(command.name, command.count, recipe, self.recipes.bundle_id(recipe))
        except OSError as error:
            self.bad["teach"]("%s: cannot start a teach-in: %s", self.station, error)
