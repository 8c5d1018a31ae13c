"""Camera sources: each yields Frames until stopped; reconnects are the caller's loop's job.

A source raises SourceUnavailable when it cannot deliver (device gone, stream down, folder
unmounted); the capture loop reports that and retries with backoff.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge.config import FileSourceConfig, FolderSourceConfig, GstreamerSourceConfig, SourceConfig, StreamSourceConfig, V4l2SourceConfig, VideoSourceConfig
from edge.counters import ThrottledLog
from edge.triggers import MAX_PART_ID, printable, valid_part_id

log = logging.getLogger("edge.capture")
# Sources that deliver a view of the line now, rather than parts that wait to be read.
LIVE_SOURCES = ("v4l2", "stream", "gstreamer")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


@dataclass
class Frame:
    image: np.ndarray | None  # as OpenCV delivers it: BGR, gray or BGRA; uint8 or uint16
    frame_id: int
    t_capture: float  # time.time() when the frame was read
    part_id: str | None = None
    source_name: str | None = None  # file name for folder sources
    unreadable: str | None = None  # why a delivered part has no image (a corrupt file): answered as an error
    recipe: str | None = None  # the product it was asked under, stamped as it enters the station
    refused: str | None = None  # why its trigger cannot be inspected as asked: answered not_inspected


class SourceUnavailable(RuntimeError):
    """The source cannot deliver now; the message says what and where."""


class EndOfStream(Exception):
    """A finite source (a video file without loop) has no more frames."""


class NoFrameYet(Exception):
    """A source that waits for parts (a watched folder) has none yet; the caller gets control
    back every so often to show it is alive and to expire triggers, not only when a part comes."""


# How long a waiting source keeps the capture loop before handing it back.
WAIT_SLICE_S = 0.5

# How long a network stream may take to open or to deliver the next frame before it counts as
# lost. OpenCV's default is 30 s, far past the daemon's 5 s heartbeat: a stream whose cable was
# pulled (the TCP connection stays up, nothing arrives) would stop the watchdog ping and have
# systemd restart a daemon that is merely waiting for its camera.
STREAM_TIMEOUT_MS = 3000


class VideoCaptureSource:
    """V4L2 devices, video files, RTSP/HTTP streams and GStreamer pipelines through OpenCV."""

    moves_files = False
    waits_for_parts = False

    def __init__(self, config: VideoSourceConfig):
        self.config = config
        self.capture: cv2.VideoCapture | None = None
        self.next_due = 0.0

    @property
    def description(self) -> str:
        c = self.config
        if isinstance(c, V4l2SourceConfig):
            return f"V4L2 device {c.device}"
        if isinstance(c, FileSourceConfig):
            return f"video file {c.path}"
        if isinstance(c, StreamSourceConfig):
            return f"stream {c.url}"
        return "GStreamer pipeline"

    def open(self) -> None:
        capture = self._capture()
        if not capture.isOpened():
            capture.release()
            raise SourceUnavailable(f"cannot open {self.description}")
        self.capture = capture

    def _capture(self) -> cv2.VideoCapture:
        c = self.config
        if isinstance(c, V4l2SourceConfig):
            capture = cv2.VideoCapture(int(c.device) if c.device.isdigit() else c.device, cv2.CAP_V4L2)
            for setting, value in ((cv2.CAP_PROP_FRAME_WIDTH, c.width), (cv2.CAP_PROP_FRAME_HEIGHT, c.height), (cv2.CAP_PROP_FPS, c.fps)):
                if value:
                    capture.set(setting, value)
            return capture
        if isinstance(c, StreamSourceConfig):
            timeouts = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, STREAM_TIMEOUT_MS, cv2.CAP_PROP_READ_TIMEOUT_MSEC, STREAM_TIMEOUT_MS]
            return cv2.VideoCapture(c.url, cv2.CAP_FFMPEG, timeouts)
        if isinstance(c, GstreamerSourceConfig):
            if not _has_gstreamer():
                raise SourceUnavailable("this OpenCV build has no GStreamer support; install an OpenCV built with GStreamer (e.g. the distribution's python3-opencv) to use gstreamer sources")
            return cv2.VideoCapture(c.pipeline, cv2.CAP_GSTREAMER)
        if not Path(c.path).is_file():
            raise SourceUnavailable(f"video file {c.path} not found")
        return cv2.VideoCapture(c.path, cv2.CAP_FFMPEG)

    def read(self, frame_id: int) -> Frame:
        if self.capture is None:
            self.open()
        capture = self.capture
        assert capture is not None, "open() sets it or raises"
        c = self.config
        if isinstance(c, FileSourceConfig) and c.fps:
            # Pace a file like the camera it stands in for; a slow pace (fps: 0.1) waits in slices,
            # so the capture loop still comes round for the watchdog and for triggers' timeouts.
            now = time.monotonic()
            if now < self.next_due:
                time.sleep(min(self.next_due - now, WAIT_SLICE_S))
                if time.monotonic() < self.next_due:
                    raise NoFrameYet()
            self.next_due = max(now, self.next_due) + 1.0 / c.fps
        ok, image = capture.read()
        if (not ok or image is None) and isinstance(c, FileSourceConfig):
            if not Path(c.path).is_file():
                self.close()
                raise SourceUnavailable(f"video file {c.path} disappeared")
            if c.loop:
                capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
                ok, image = capture.read()
            if not ok or image is None:
                raise EndOfStream()
        if not ok or image is None:
            self.close()
            raise SourceUnavailable(f"{self.description} stopped delivering frames")
        return Frame(image=image, frame_id=frame_id, t_capture=time.time())

    def finish(self, frame: Frame, keep_file: bool = False) -> None:
        """A video frame has nothing to hand back once its part is answered."""

    def close(self) -> None:
        if self.capture is not None:
            self.capture.release()
            self.capture = None


def _has_gstreamer() -> bool:
    for line in cv2.getBuildInformation().splitlines():
        if line.strip().startswith("GStreamer:"):
            return "YES" in line
    return False


def _stat(entry: os.DirEntry) -> os.stat_result | None:
    try:
        return entry.stat()
    except FileNotFoundError:
        return None


class FolderSource:
    """A line camera drops one image file per part into a folder; the file name (without the
    suffix) is the part id. Files are taken oldest first, once each; a file is only read once
    its size has stopped changing, so a half-written image is never inspected."""

    waits_for_parts = True  # read() waits for the next file, and gives control back meanwhile

    def __init__(self, config: FolderSourceConfig):
        self.config = config
        self.folder = Path(config.path)
        self.done_dir = Path(config.done_dir) if config.done_dir else None
        self.seen: set[str] = set()
        self.sizes: dict[str, int] = {}
        self.pending: set[str] = set()  # read and not yet answered (finish); kept in `seen` meanwhile
        self.pending_lock = threading.Lock()
        # A misconfigured done_dir must not flood the journal.
        self.move_failures = ThrottledLog(log, logging.WARNING)
        self.ignored: set[str] = set()  # files here that are not images, each said once while present
        self.ignored_log = ThrottledLog(log, logging.WARNING, first=20, every=1000)

    @property
    def moves_files(self) -> bool:
        return self.done_dir is not None

    @property
    def description(self) -> str:
        return f"folder {self.folder}"

    def open(self) -> None:
        if not self.folder.is_dir():
            raise SourceUnavailable(f"folder {self.folder} not found (unmounted?)")
        if self.done_dir:
            self.done_dir.mkdir(parents=True, exist_ok=True)

    def _candidates(self) -> list[tuple[os.DirEntry, int]]:
        """The image files not taken yet, oldest first, with their sizes."""
        try:
            everything = [e for e in os.scandir(self.folder) if e.is_file() and not e.name.startswith(".")]
        except OSError:
            raise SourceUnavailable(f"folder {self.folder} not readable (unmounted?)") from None
        files = [e for e in everything if e.name.lower().endswith(IMAGE_SUFFIXES)]
        self._say_ignored({e.name for e in everything} - {e.name for e in files})
        # Forget files that are gone (moved or cleaned up by the line), so a months-long run
        # does not remember every part it ever saw.
        present = {e.name for e in files}
        with self.pending_lock:
            # A file read and not yet answered stays seen even if a remount briefly hides it.
            self.seen.intersection_update(present | self.pending)
        for name in self.sizes.keys() - present:
            del self.sizes[name]
        # A file can leave between the listing and its stat: answered and moved to done_dir by
        # the publisher meanwhile, or taken by the line's cleanup. It is no candidate then.
        stated = [(status, e) for e in files if e.name not in self.seen and (status := _stat(e)) is not None]
        stated.sort(key=lambda pair: (pair[0].st_mtime_ns, pair[1].name))
        return [(e, status.st_size) for status, e in stated]

    def _say_ignored(self, others: set[str]) -> None:
        for name in sorted(others - self.ignored):
            self.ignored_log("folder %s: ignoring %s: not an image (%s)", self.folder, printable(name), ", ".join(IMAGE_SUFFIXES))
        self.ignored = others

    def read(self, frame_id: int, stop=None) -> Frame:
        """The next settled file; NoFrameYet after WAIT_SLICE_S without one."""
        deadline = time.monotonic() + WAIT_SLICE_S
        while stop is None or not stop.is_set():
            for entry, size in self._candidates():
                if self.sizes.get(entry.name) != size:
                    # First sighting or still growing: look again next poll.
                    self.sizes[entry.name] = size
                    continue
                self.sizes.pop(entry.name, None)
                with self.pending_lock:
                    self.seen.add(entry.name)
                    self.pending.add(entry.name)
                return self._load(Path(entry.path), frame_id)
            left = deadline - time.monotonic()
            if left <= 0:
                raise NoFrameYet()
            # Never past the slice: a long poll interval must not starve the watchdog's heartbeat.
            time.sleep(min(self.config.poll_interval_s, left))
        raise EndOfStream()

    def _load(self, path: Path, frame_id: int) -> Frame:
        part_id = valid_part_id(path.stem)
        if part_id is None:
            part_id = printable(path.stem).strip()[:MAX_PART_ID] or f"frame-{frame_id}"  # " .png" is no part id
            log.warning("folder %s: %s is no usable part id (empty, over %d characters, or control characters); the part is %s", self.folder, printable(path.name), MAX_PART_ID, part_id)
        frame = Frame(image=None, frame_id=frame_id, t_capture=time.time(), part_id=part_id, source_name=path.name)
        try:
            data = np.fromfile(str(path), dtype=np.uint8)
        except OSError as error:
            frame.unreadable = f"{path}: cannot read ({error.strerror})"
            return frame
        frame.image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
        if frame.image is None:
            # Still a part the line delivered: it goes on, to be answered (rejected) in its turn.
            frame.unreadable = f"{path}: not a readable image (empty, corrupt or unsupported)"
        return frame

    def finish(self, frame: Frame, keep_file: bool = False) -> None:
        """The part is answered: its file may leave the folder if the answer is on disk (outbox,
        audit). Until then, or with `keep_file`, it stays, so a daemon killed mid-part (or one whose
        answer a full disk refused) inspects it again on its next start. It stays seen meanwhile;
        once moved, its name is free again: the camera may reuse it for a new part at once."""
        if frame.source_name:
            moved = not keep_file and self._move_to_done(frame.source_name)
            with self.pending_lock:
                self.pending.discard(frame.source_name)
                if moved:
                    self.seen.discard(frame.source_name)

    def _move_to_done(self, name: str) -> bool:
        if not self.done_dir:
            return False
        target = self.done_dir / name
        for n in range(1, 10_000):
            if not target.exists():
                break
            # A reused file name: keep both, the earlier part's image stays as it was.
            target = self.done_dir / f"{Path(name).stem}.{n}{Path(name).suffix}"
        if target.name != name:
            log.warning("folder %s: %s is already in %s; kept both, this one as %s", self.folder, printable(name), self.done_dir, printable(target.name))
        try:
            os.replace(self.folder / name, target)
        except OSError as error:
            self.move_failures(
                "folder %s: could not move %s to %s (%s); it stays and is inspected again after a restart",
                self.folder,
                printable(name),
                self.done_dir,
                error.strerror or error,
            )
            return False
        return True

    def close(self) -> None:
        pass


def known_frame_size(config: SourceConfig) -> tuple[int, int] | None:
    """(width, height) of the frames a source will deliver, where that is known before the
    first frame: a video file's, a V4L2 device's asked-for size, the oldest image waiting in a
    folder. None where only the first frame will tell."""
    if isinstance(config, V4l2SourceConfig):
        return (config.width, config.height) if config.width and config.height else None
    if isinstance(config, FileSourceConfig):
        capture = cv2.VideoCapture(config.path, cv2.CAP_FFMPEG)
        try:
            size = (int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)))
        finally:
            capture.release()
        return size if size[0] > 0 and size[1] > 0 else None
    if isinstance(config, FolderSourceConfig):
        try:
            images = sorted((e for e in os.scandir(config.path) if e.is_file() and e.name.lower().endswith(IMAGE_SUFFIXES)), key=lambda e: e.stat().st_mtime_ns)
        except OSError:
            return None
        for entry in images[:5]:  # the first readable one
            image = cv2.imread(entry.path, cv2.IMREAD_UNCHANGED)
            if image is not None:
                return image.shape[1], image.shape[0]
    return None


def roi_outside(roi: tuple[int, ...] | None, width: int, height: int) -> str | None:
    """Why the ROI does not fit frames of this size, or None if it does."""
    if roi is None:
        return None
    x, y, w, h = roi
    if x + w <= width and y + h <= height:
        return None
    return f"the ROI [{x}, {y}, {w}, {h}] reaches outside the {width}x{height} frames (it ends at x={x + w}, y={y + h})"


def open_source(config: SourceConfig) -> FolderSource | VideoCaptureSource:
    return FolderSource(config) if isinstance(config, FolderSourceConfig) else VideoCaptureSource(config)
