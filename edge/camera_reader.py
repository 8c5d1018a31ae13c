"""The capture side of a station: reads the next frame, keeps the camera open across losses
(reconnect with backoff) and numbers each frame that comes."""

from __future__ import annotations

import logging
import threading

from edge.alarms import CAMERA_LOST, Alarms
from edge.capture import EndOfStream, Frame, NoFrameYet, SourceUnavailable
from edge.frame_numbers import FrameNumbers

log = logging.getLogger("edge.camera")
FIRST_BACKOFF_S = 0.5
# Back within about 5 s of the source's return, without retrying a dead device in a tight loop.
MAX_BACKOFF_S = 2.0


class CameraReader:
    def __init__(self, station: str, source, frame_numbers: FrameNumbers, stop: threading.Event, alarms: Alarms):
        self.station = station
        self.alarms = alarms
        self.source = source
        self.frame_numbers = frame_numbers  # a free-run part id is its frame number: never reused
        self.stop = stop
        self.state = "starting"  # then "ok" or "lost"; published in the stats
        self.backoff = FIRST_BACKOFF_S

    def next_frame(self) -> Frame | None:
        """The next frame, or None when there is none now (the camera is lost, or a watched
        folder has no new part): the caller comes round again, alive. EndOfStream at the end of a
        finite source."""
        try:
            if self.state != "ok":
                self.source.open()
                if self.state != "starting":
                    log.info("%s: %s is back", self.station, self.source.description)
                    self.alarms.clear(CAMERA_LOST)
                self.state, self.backoff = "ok", FIRST_BACKOFF_S
            return self._read()
        except SourceUnavailable as error:
            if self.state != "lost":
                log.error("%s: camera lost: %s; retrying with backoff", self.station, error)
                self.alarms.raise_alarm(CAMERA_LOST, f"{error}; retrying")
            self.state = "lost"
            self.stop.wait(self.backoff)
            self.backoff = min(self.backoff * 2, MAX_BACKOFF_S)
            return None
        except NoFrameYet:
            return None
        except EndOfStream:
            log.info("%s: %s ended", self.station, self.source.description)
            raise

    def _read(self) -> Frame:
        frame_id = self.frame_numbers.current()
        if self.source.waits_for_parts:
            frame = self.source.read(frame_id, stop=self.stop)
        else:
            frame = self.source.read(frame_id)
        self.frame_numbers.advance()  # only a frame that came uses a number
        return frame
