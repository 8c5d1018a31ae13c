"""The console's write side: the login, and the operators' commands to a station (recipe,
teach-in, a part's label), each sent as an MQTT message and confirmed by the broker before the
page is told so.

Every write needs a session (a login, edge/console/auth.py) and its CSRF token in the
X-CSRF-Token header; a console without a users file answers 403 and says how to enable them. The
operator's name is in the log line of every action, sent or refused.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from edge.config_fields import valid_station_name
from edge.console import pages
from edge.console.auth import CSRF_HEADER, READ_ONLY, SESSION_COOKIE, Session, csrf_matches
from edge.console.commands import BadBody, Command, FeedbackBody, feedback_command, recipe_command, teach_command
from edge.console.history import HistoryUnavailable, LabelRecord
from edge.console.ingest import PublishError
from edge.console.payloads import iso

if TYPE_CHECKING:
    from edge.console.service import Console

log = logging.getLogger("edge.console.actions")

MAX_LOGIN_BYTES = 8192
MAX_COMMAND_BYTES = 4096


def add_actions(app: FastAPI, console: Console) -> None:
    _add_login(app, console)
    _add_commands(app, console)


# -- requests --------------------------------------------------------------------------------------


async def _body(request: Request, limit: int) -> bytes:
    """The request's body, refused past `limit` bytes without reading more."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise HTTPException(413, f"the body is over {limit} bytes")
    data = b""
    async for chunk in request.stream():
        data += chunk
        if len(data) > limit:
            raise HTTPException(413, f"the body is over {limit} bytes")
    return data


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def _same_origin(request: Request) -> None:
    """A browser says where a POST comes from; one from another site's page is refused (on top of
    the SameSite cookie and the CSRF token). Sec-Fetch-Site is what browsers send always; Origin
    is "null" from our own pages (Referrer-Policy: no-referrer), so only a real one is compared."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        raise HTTPException(403, f"a request from another site (Sec-Fetch-Site: {site[:20]}) is refused")
    origin = request.headers.get("origin")
    if origin is not None and origin != "null" and urlsplit(origin).netloc != request.headers.get("host", ""):
        raise HTTPException(403, f"a request from another site ({origin[:100]}) is refused")


def _address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _https(request: Request) -> bool:
    return request.url.scheme == "https"


def _set_session_cookie(response: Response, request: Request, token: str, lifetime_s: float) -> None:
    response.set_cookie(SESSION_COOKIE, token, max_age=int(lifetime_s), path="/", secure=_https(request), httponly=True, samesite="strict")


def _clear_session_cookie(response: Response, request: Request) -> None:
    response.delete_cookie(SESSION_COOKIE, path="/", secure=_https(request), httponly=True, samesite="strict")


def _next(value: str | None) -> str:
    """Where to go after the login: a path of this console only (no //host, no scheme)."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value or len(value) > 512 or any(ord(c) < 32 for c in value):
        return "/"
    return value


# -- login, logout, session --------------------------------------------------------------------------


def _add_login(app: FastAPI, console: Console) -> None:
    auth = console.auth

    @app.get("/login", response_class=HTMLResponse)
    def login_page(request: Request, next: str = Query("/", max_length=512)) -> str:
        session = auth.session(request.cookies.get(SESSION_COOKIE))
        return pages.login(_next(next), enabled=auth.enabled, error=None if auth.enabled else READ_ONLY[0].upper() + READ_ONLY[1:] + ".", user=session.user if session else None)

    @app.post("/login")
    async def login(request: Request) -> Response:
        kind = _media_type(request)
        as_form = kind == "application/x-www-form-urlencoded"
        if not auth.enabled:
            return _login_answer(as_form, 403, READ_ONLY, "/")
        _same_origin(request)
        body = await _body(request, MAX_LOGIN_BYTES)
        try:
            fields = _login_fields(kind, body)
        except ValueError as error:
            return _login_answer(as_form, 415 if "Content-Type" in str(error) else 400, str(error), "/")
        target = _next(fields.get("next"))
        username, password = fields.get("username", ""), fields.get("password", "")
        if not username or not password:
            return _login_answer(as_form, 400, "give a user name and a password", target)
        result = await run_in_threadpool(auth.login, username, password, _address(request))
        if result.token is None or result.session is None:
            headers = {"Retry-After": str(result.retry_after_s)} if result.retry_after_s else None
            return _login_answer(as_form, result.status, result.message, target, headers)
        answer: Response
        if as_form:
            answer = RedirectResponse(target, status_code=303)
        else:
            answer = JSONResponse(_session_json(auth.enabled, result.session))
        _set_session_cookie(answer, request, result.token, auth.sessions.lifetime_s)
        return answer

    @app.post("/logout")
    def logout(request: Request) -> Response:
        _same_origin(request)
        token = request.cookies.get(SESSION_COOKIE)
        session = auth.session(token)
        if session is not None:
            if not csrf_matches(session, request.headers.get(CSRF_HEADER)):
                raise HTTPException(403, f"the {CSRF_HEADER} header is missing or wrong; reload the page and log out again")
            auth.sessions.end(token)
            log.info("operator %s logged out", session.user)
        answer = JSONResponse(_session_json(auth.enabled, None))
        _clear_session_cookie(answer, request)
        return answer

    @app.get("/api/session")
    def session(request: Request) -> dict:
        """Whether write actions are on, who is logged in, and the CSRF token the pages send."""
        return _session_json(auth.enabled, auth.session(request.cookies.get(SESSION_COOKIE)))


def _login_fields(kind: str, body: bytes) -> dict[str, str]:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("the body is not UTF-8") from None
    if kind == "application/x-www-form-urlencoded":
        try:
            parsed = parse_qs(text, keep_blank_values=True, max_num_fields=10)
        except ValueError:
            raise ValueError("the form has too many fields") from None
        return {key: values[0] for key, values in parsed.items() if key in ("username", "password", "next")}
    if kind == "application/json":
        try:
            value = json.loads(text)
        except (ValueError, RecursionError):  # RecursionError: thousands of nested brackets
            raise ValueError("the body is not JSON") from None
        if not isinstance(value, dict) or not all(isinstance(value.get(key, ""), str) for key in ("username", "password", "next")):
            raise ValueError('expected {"username": "...", "password": "..."}')
        return {key: value[key] for key in ("username", "password", "next") if key in value}
    raise ValueError("send the login as a form or as JSON (Content-Type application/x-www-form-urlencoded or application/json)")


def _login_answer(as_form: bool, status: int, message: str, target: str, headers: dict[str, str] | None = None) -> Response:
    if as_form:
        return HTMLResponse(pages.login(target, enabled=status != 403, error=message), status_code=status, headers=headers)
    return JSONResponse({"detail": message}, status_code=status, headers=headers)


def _session_json(enabled: bool, session: Session | None) -> dict:
    return {
        "write_enabled": enabled,
        "user": session.user if session else None,
        "csrf": session.csrf if session else None,
        "expires": iso(session.expires) if session else None,
        "read_only": None if enabled else READ_ONLY,
    }


# -- the commands -------------------------------------------------------------------------------------


class _Commands:
    """One command's way through the console: the operator, the station, the body, the publish."""

    def __init__(self, console: Console):
        self.console = console
        self.auth = console.auth
        self.counters = console.counters

    def operator(self, request: Request, what: str, station: str) -> Session:
        """The logged-in operator behind a write, or 403 (logged with the reason)."""
        if not self.auth.enabled:
            raise HTTPException(403, READ_ONLY)
        _same_origin(request)
        session = self.auth.session(request.cookies.get(SESSION_COOKIE))
        if session is None:
            log.warning("%s for %r from %s refused: no login", what, station[:64], _address(request))
            raise HTTPException(403, "log in first (/login): write actions need an operator login; a session ends at logout or after its hours")
        if not csrf_matches(session, request.headers.get(CSRF_HEADER)):
            log.warning("operator %s: %s for %r refused: no or wrong %s header", session.user, what, station[:64], CSRF_HEADER)
            raise HTTPException(403, f"the {CSRF_HEADER} header is missing or wrong: send the token from /api/session with every write (the pages do); reload the page")
        return session

    def known_station(self, name: str) -> None:
        known, _ = self.console.model.station_stats(name) if valid_station_name(name) else (False, None)
        if not known:
            raise HTTPException(404, f"no station {name[:128]!r} has published on this broker since the console started; commands go only to stations the console has seen")

    def send(self, user: str, station: str, command: Command) -> dict:
        """Publish and wait for the broker's PUBACK (a web thread); the answer for the page."""
        topic = f"{self.console.config.mqtt.topic_prefix.rstrip('/')}/{station}/{command.kind}"
        try:
            self.console.ingest.publish(topic, command.payload, retain=command.retain)
        except PublishError as error:
            self.counters.commands.add((command.kind, "not_sent"))
            log.warning("operator %s: %s for station %s NOT sent: %s", user, command.said, station, error)
            raise HTTPException(503, f"not sent: {error}") from None
        self.counters.commands.add((command.kind, "sent"))
        retained = " (retained)" if command.retain else ""
        log.info("operator %s: %s sent to %s%s", user, command.said, topic, retained)
        return {
            "sent": True,
            "station": station,
            "topic": topic,
            "payload": command.payload.decode("utf-8"),
            "retained": command.retain,
            "by": user,
            "message": f"{command.said} sent to {station}{retained}, confirmed by the broker",
        }

    async def run(self, request: Request, name: str, what: str, build: Callable[[str, bytes], Command]) -> tuple[str, dict]:
        """Login, station, body, the command (`build`, on a web thread: it may read the history),
        then the publish. Any refusal is counted and answered before anything is published."""
        user = None
        try:
            user = self.operator(request, what, name).user
            self.known_station(name)
            if _media_type(request) != "application/json":
                raise HTTPException(415, "send the command as JSON (Content-Type: application/json)")
            body = await _body(request, MAX_COMMAND_BYTES)
            try:
                command = await run_in_threadpool(build, user, body)
            except BadBody as error:
                raise HTTPException(422, str(error)) from None
        except HTTPException as refusal:
            self.counters.commands.add((what, "refused"))
            if user is not None:
                log.info("operator %s: %s for station %s refused: %s", user, what, name[:64], refusal.detail)
            raise
        return user, await run_in_threadpool(self.send, user, name, command)

    def recipe(self, station: str, body: bytes) -> Command:
        """Only a recipe the station lists: it would reject every part under any other."""
        chosen, command = recipe_command(body)
        _, stats = self.console.model.station_stats(station)
        recipes = stats.recipes if stats is not None else None
        if recipes is None:
            raise HTTPException(409, f"station {station} has not said which recipes it has (its stats carry no 'recipes'); the console sends only a recipe the station lists")
        if chosen.recipe not in recipes:
            raise HTTPException(409, f"station {station} has no recipe {chosen.recipe!r}; it has {', '.join(recipes) or 'none'}")
        return command

    def part_known(self, station: str, part_id: str) -> bool:
        if self.console.model.has_part(station, part_id):
            return True
        try:
            return self.console.history.has_part(station, part_id)
        except HistoryUnavailable as error:
            raise HTTPException(503, f"cannot look the part up: history unavailable: {error}") from None

    def record_label(self, station: str, labelled: FeedbackBody, user: str, answer: dict) -> None:
        """Recorded once the broker confirmed it: the gallery and the strip show what was sent."""
        record = LabelRecord(station, labelled.part_id, labelled.label, json.loads(answer["payload"]).get("defect_type"), user, time.time())
        self.console.model.set_label(station, labelled.part_id, record.to_json())
        self.console.history.add_label(record)
        answer["label"] = record.to_json()


def _add_commands(app: FastAPI, console: Console) -> None:
    commands = _Commands(console)

    @app.post("/api/stations/{name}/recipe")
    async def recipe(name: str, request: Request) -> dict:
        return (await commands.run(request, name, "recipe", lambda user, body: commands.recipe(name, body)))[1]

    @app.post("/api/stations/{name}/teach")
    async def teach(name: str, request: Request) -> dict:
        return (await commands.run(request, name, "teach", lambda user, body: teach_command(body)))[1]

    @app.post("/api/stations/{name}/feedback")
    async def feedback(name: str, request: Request) -> dict:
        asked: list[FeedbackBody] = []

        def build(user: str, body: bytes) -> Command:
            labelled, command = feedback_command(body)
            if not commands.part_known(name, labelled.part_id):
                raise HTTPException(404, f"no part {labelled.part_id[:128]!r} from station {name} in the live view or the history")
            asked.append(labelled)
            return command

        user, answer = await commands.run(request, name, "feedback", build)
        commands.record_label(name, asked[0], user, answer)
        return answer
