"""The part a heatmap or preview JPEG belongs to, from the COM segment the daemon puts after SOI.

The daemon writes UTF-8 JSON {"station","part_id","frame_id","verdict","score","threshold"}
into a JPEG comment (marker 0xFFFE) so that the image carries its own identity: heatmaps are
QoS 0 and may arrive before, after or without the part's result. The markers are walked from
the start rather than searched for, so bytes that happen to look like a marker inside another
segment are never mistaken for one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

SOI, EOI, SOS, COM = 0xD8, 0xD9, 0xDA, 0xFE
# Markers without a length field: TEM and the restart markers RST0..RST7.
_STANDALONE = {0x01, *range(0xD0, 0xD8)}
# The daemon's tag comes first; a JPEG with hundreds of segments before its scan is no heatmap.
MAX_SEGMENTS = 64


class NotAJpeg(ValueError):
    """The bytes are not a JPEG stream this console will store or serve."""


@dataclass(frozen=True)
class JpegComment:
    """The first comment segment that holds a JSON object, as the decoded object."""

    data: dict


def read_comment(jpeg: bytes) -> JpegComment | None:
    """The JSON object in the first COM segment before the scan, or None when there is none.

    Raises NotAJpeg when the stream does not start with SOI or a segment runs past the end: such
    bytes are refused, not stored, because the browser would show a broken image.
    """
    if len(jpeg) < 4 or jpeg[0] != 0xFF or jpeg[1] != SOI:
        raise NotAJpeg("does not start with the JPEG SOI marker")
    position, segments = 2, 0
    while segments < MAX_SEGMENTS:
        if position + 2 > len(jpeg):
            raise NotAJpeg(f"ends inside the marker at byte {position}")
        if jpeg[position] != 0xFF:
            raise NotAJpeg(f"no marker at byte {position}")
        marker = jpeg[position + 1]
        if marker == 0xFF:  # fill byte before a marker (T.81 B.1.1.2)
            position += 1
            continue
        if marker in (SOS, EOI):
            return None
        if marker in _STANDALONE:
            position += 2
            continue
        if position + 4 > len(jpeg):
            raise NotAJpeg(f"ends inside the length of segment 0x{marker:02X} at byte {position}")
        length = int.from_bytes(jpeg[position + 2 : position + 4], "big")
        end = position + 2 + length
        if length < 2 or end > len(jpeg):
            raise NotAJpeg(f"segment 0x{marker:02X} at byte {position} runs past the end")
        if marker == COM:
            data = _json_object(jpeg[position + 4 : end])
            if data is not None:
                return JpegComment(data)
        position, segments = end, segments + 1
    return None


def _json_object(body: bytes) -> dict | None:
    """A comment that is not our JSON (an encoder's own note) is skipped, not an error."""
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def with_comment(jpeg: bytes, data: dict) -> bytes:
    """`jpeg` with a COM segment holding `data` right after SOI: how the daemon tells which part
    a heatmap or preview shows, keeping the payload a plain JPEG on the same topic."""
    if jpeg[:2] != b"\xff\xd8":
        raise NotAJpeg("does not start with the JPEG SOI marker")
    body = json.dumps(data, separators=(",", ":")).encode("utf-8")
    if len(body) + 2 > 0xFFFF:
        raise ValueError("comment too long for one JPEG segment")
    return jpeg[:2] + b"\xff\xfe" + (len(body) + 2).to_bytes(2, "big") + body + jpeg[2:]
