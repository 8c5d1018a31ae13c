"""The console's web app: three pages, their JSON, images, a server-sent event stream and
/metrics (FastAPI on uvicorn), and the login and operators' commands of edge/console/actions.py.

Reading needs no login; every write does (DESIGN.md). No docs pages: FastAPI's pull their
scripts from a CDN.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import FastAPI, HTTPException, Query
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles

from edge.console import pages
from edge.console.actions import add_actions
from edge.console.headers import SecurityHeaders
from edge.console.history import GALLERY_LIMIT, HistoryUnavailable, RejectQuery
from edge.console.metrics import exposition
from edge.console.payloads import epoch_of

if TYPE_CHECKING:
    from edge.console.service import Console

STATIC = Path(__file__).resolve().parent / "static"
EVENT_INTERVAL_S = 0.5  # the streams send at most this often, whatever the message rate
KEEPALIVE_S = 15.0  # a comment line on a quiet stream, so proxies and browsers keep it open
MAX_STREAMS = 32  # event streams open at once; each costs a little every tick
PARTS_PER_EVENT = 250  # a station event carries at most the newest this many new parts
JPEG = "image/jpeg"


def create_app(console: Console) -> FastAPI:
    app = FastAPI(title="edge-console", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(SecurityHeaders, loopback_only=console.loopback_only)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    _add_pages(app)
    _add_live_model(app, console)
    _add_history(app, console)
    _add_streams_and_metrics(app, console)
    add_actions(app, console)
    return app


def _add_pages(app: FastAPI) -> None:
    @app.get("/", response_class=HTMLResponse)
    def overview_page() -> str:
        return pages.overview()

    @app.get("/station/{name}", response_class=HTMLResponse)
    def station_page(name: str) -> str:
        return pages.station(name)

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> RedirectResponse:
        return RedirectResponse("/static/favicon.svg", status_code=301)

    @app.get("/rejects", response_class=HTMLResponse)
    def rejects_page() -> str:
        return pages.rejects()


def _add_live_model(app: FastAPI, console: Console) -> None:
    @app.get("/api/stations")
    def stations() -> dict:
        return {"stations": console.model.summaries(), "console": console.health()}

    @app.get("/api/stations/{name}")
    def station(name: str) -> dict:
        detail = console.model.detail(name)
        if detail is None:
            raise HTTPException(404, f"no station {name!r} has published on this broker since the console started")
        return detail

    def jpeg_or_404(image, what: str, name: str) -> Response:
        if image is None:
            raise HTTPException(404, f"no {what} from station {name!r} yet")
        return Response(image.jpeg, media_type=JPEG)

    @app.get("/api/preview/{name}.jpg")
    def preview(name: str) -> Response:
        return jpeg_or_404(console.model.preview(name), "preview", name)

    @app.get("/api/stations/{name}/heatmap.jpg")
    def latest_heatmap(name: str) -> Response:
        return jpeg_or_404(console.model.latest_heatmap(name), "heatmap", name)


def _add_history(app: FastAPI, console: Console) -> None:
    @app.get("/api/stations/{name}/parts")
    def station_parts(name: str, limit: int = Query(100, ge=1, le=5000)) -> dict:
        return {"parts": _history(lambda: console.history.parts(name, limit))}

    @app.get("/api/rejects")
    def rejects(
        part_id: str | None = Query(None, max_length=256),
        since: str | None = Query(None, max_length=64),
        until: str | None = Query(None, max_length=64),
        station: str | None = Query(None, max_length=128),
        limit: int = Query(60, ge=1, le=GALLERY_LIMIT),
    ) -> dict:
        query = RejectQuery(part_id=part_id or None, since=_time("since", since), until=_time("until", until), station=station or None, limit=limit)
        return {"rejects": _history(lambda: console.history.rejects(query))}

    @app.get("/api/heatmap/{heatmap_id}.jpg")
    def heatmap(heatmap_id: int) -> Response:
        # SQLite's rowids are 64-bit; a larger number names no heatmap (and would raise there).
        jpeg = _history(lambda: console.history.heatmap(heatmap_id)) if 0 < heatmap_id < 2**63 else None
        if jpeg is None:
            raise HTTPException(404, f"no heatmap {heatmap_id} (retention may have deleted it)")
        # A heatmap's id never names another image, so the browser may keep it.
        return Response(jpeg, media_type=JPEG, headers={"Cache-Control": "private, max-age=3600"})


def _add_streams_and_metrics(app: FastAPI, console: Console) -> None:
    streams = _Streams()

    @app.get("/api/events")
    async def events(station: str | None = Query(None, max_length=128), after: int = Query(0, ge=0)) -> StreamingResponse:
        if not streams.open():
            raise HTTPException(503, f"{MAX_STREAMS} live views are open already; close one")
        return StreamingResponse(_stream(console, streams, station, after), media_type="text/event-stream", headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(exposition(console.registry), media_type="text/plain; version=0.0.4; charset=utf-8")


def _history(read):
    try:
        return read()
    except HistoryUnavailable as error:
        # The page says history is unavailable and why; the live view is unaffected.
        raise HTTPException(503, f"history unavailable: {error}") from None


def _time(name: str, value: str | None) -> float | None:
    if not value:
        return None
    moment = epoch_of(value)
    if moment is None:
        raise HTTPException(400, f"{name}: expected an ISO 8601 time such as 2026-12-07T08:30:00Z, got {value[:64]!r}")
    return moment


class _Streams:
    """How many event streams are open (all on the event loop's thread: no lock)."""

    def __init__(self) -> None:
        self.count = 0

    def open(self) -> bool:
        if self.count >= MAX_STREAMS:
            return False
        self.count += 1
        return True

    def close(self) -> None:
        self.count -= 1


def _event(name: str, data: dict) -> str:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


async def _stream(console: Console, streams: _Streams, station: str | None, after: int) -> AsyncIterator[str]:
    """`stations` (every station's summary and the console's health) whenever anything changed,
    and, for a station page, `station` with that station's state and its parts after `after`.
    At most every EVENT_INTERVAL_S: at 1000 messages a second a browser gets two updates a
    second, not a thousand."""
    try:
        yield "retry: 3000\n\n"
        seen_version, quiet_since = -1, time.monotonic()
        while not console.stopping.is_set():
            version = console.model.version
            if version != seen_version:
                seen_version, quiet_since = version, time.monotonic()
                yield _event("stations", {"stations": console.model.summaries(), "console": console.health()})
                if station is not None:
                    detail = console.model.detail(station, after)
                    if detail is not None:
                        after = detail["last_seq"]
                        detail["parts"] = detail["parts"][-PARTS_PER_EVENT:]
                        yield _event("station", detail)
            elif time.monotonic() - quiet_since > KEEPALIVE_S:
                quiet_since = time.monotonic()
                yield ": keep-alive\n\n"
            await asyncio.sleep(EVENT_INTERVAL_S)
    finally:
        streams.close()
