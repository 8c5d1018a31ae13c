"""When each stage's loop last came round, for systemd's watchdog."""

from __future__ import annotations

import logging
import time

log = logging.getLogger("edge.heartbeats")


class Heartbeats:
    def __init__(self, owner: str, stages: list[str]):
        self.owner = owner
        # Per stage, when its loop last came round; None once the loop has ended.
        self.beats: dict[str, float | None] = {stage: time.monotonic() for stage in stages}
        self.crashed: list[str] = []  # stages whose loop died of an error, for the exit status

    def beat(self, stage: str) -> None:
        self.beats[stage] = time.monotonic()

    def exited(self, stage: str, ended: bool) -> None:
        """A loop that ended (source done, drained, stopped) is no longer watched. One that
        crashed keeps its last heartbeat, which goes stale: the watchdog ping is withheld and
        systemd restarts the daemon, instead of the crash passing for the end of the source."""
        if ended:
            self.beats[stage] = None
        else:
            self.crashed.append(stage)
            log.error("%s: the %s loop crashed; withholding the watchdog so systemd restarts the daemon", self.owner, stage)

    def stale(self, max_age_s: float) -> list[str]:
        now = time.monotonic()
        return [stage for stage, beat in self.beats.items() if beat is not None and now - beat > max_age_s]
