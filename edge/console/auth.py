"""Operator logins for the console's write actions (DESIGN.md: "every write action needs a
login"): the users file, sessions, CSRF tokens and the throttle on failed logins.

A session is a random token in an HttpOnly, SameSite=Strict cookie, looked up in a table in
memory (a restart logs everyone out); each has its own CSRF token, which the pages read from
/api/session and send as the X-CSRF-Token header with every write. Failed logins are counted and
throttled per user name and per client address; a locked user name is refused even with the
right password until its minute is over.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from pathlib import Path

from edge.console.counters import ConsoleCounters
from edge.console.passwords import MAX_PASSWORD, Scrypt, UsersFileError, hash_password, parse_hash, read_users, verify_password

log = logging.getLogger("edge.console.auth")

SESSION_COOKIE = "edge_session"
CSRF_HEADER = "X-CSRF-Token"
MAX_SESSIONS = 256  # the oldest goes first past this: a login loop cannot grow memory
FAILURE_WINDOW_S = 60.0
FAILURES_PER_USER = 5  # in the window: then that user name is locked until the window has passed
FAILURES_PER_ADDRESS = 30  # from one client address, whatever the names it tries
MAX_THROTTLE_KEYS = 10_000

READ_ONLY = (
    "this console is read-only: write actions (recipe, teach-in, labels) need operator logins. "
    "Create one with `edge-console passwd NAME --users-file /etc/edge-console/users`, set `users_file: /etc/edge-console/users` "
    "in the console's config (or give the file as the systemd credential console_users) and restart the console"
)


@dataclass(frozen=True)
class Session:
    user: str
    csrf: str
    expires: float  # time.time()


@dataclass(frozen=True)
class LoginResult:
    status: int  # 200, or the HTTP status of the refusal
    message: str
    token: str | None = None
    session: Session | None = None
    retry_after_s: int | None = None


class Users:
    """The users file, read again whenever it changes (checked at each login and each write)."""

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._users: dict[str, Scrypt] = {}
        self.error: str | None = None
        self.reload()

    def reload(self) -> set[str]:
        """Reads the file again if it changed; the users whose login changed or went (their
        sessions end)."""
        try:
            stat = os.stat(self.path)
            stamp: tuple[int, int, int] | None = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        except OSError:
            stamp = None
        with self._lock:
            if stamp is not None and stamp == self._stamp:
                return set()
            try:
                users = read_users(self.path)
            except UsersFileError as error:
                # No logins from a file we cannot read whole: a half-edited file must not keep a
                # removed operator in. Sessions already open end too.
                gone = set(self._users)
                if str(error) != self.error:
                    log.error("users file: %s; no operator can log in until it is fixed", error)
                self._users, self.error, self._stamp = {}, str(error), stamp
                return gone
            changed = {name for name, stored in self._users.items() if users.get(name) != stored}
            if self._stamp is not None or self.error is not None:
                log.info("users file %s read again: %d operators", self.path, len(users))
            if not users:
                log.warning("users file %s has no users: nobody can log in (add one with edge-console passwd)", self.path)
            self._users, self.error, self._stamp = users, None, stamp
            return changed

    def get(self, name: str) -> Scrypt | None:
        with self._lock:
            return self._users.get(name)


class Sessions:
    """Token -> session, in memory. Tokens are kept as their SHA-256: a lookup's timing says
    nothing about the tokens held."""

    def __init__(self, lifetime_s: float, max_sessions: int = MAX_SESSIONS):
        self.lifetime_s = lifetime_s
        self.max_sessions = max_sessions
        self._lock = threading.Lock()
        self._sessions: OrderedDict[bytes, Session] = OrderedDict()

    @staticmethod
    def _key(token: str) -> bytes:
        return hashlib.sha256(token.encode("utf-8", "replace")).digest()

    def create(self, user: str) -> tuple[str, Session]:
        token = secrets.token_urlsafe(32)
        session = Session(user, secrets.token_urlsafe(32), time.time() + self.lifetime_s)
        with self._lock:
            self._expire()
            self._sessions[self._key(token)] = session
            while len(self._sessions) > self.max_sessions:
                self._sessions.popitem(last=False)
        return token, session

    def get(self, token: str | None) -> Session | None:
        if not token or len(token) > 256:
            return None
        with self._lock:
            key = self._key(token)
            session = self._sessions.get(key)
            if session is not None and session.expires <= time.time():
                del self._sessions[key]
                return None
            return session

    def end(self, token: str | None) -> Session | None:
        if not token:
            return None
        with self._lock:
            return self._sessions.pop(self._key(token), None)

    def end_users(self, users: set[str]) -> int:
        with self._lock:
            keys = [key for key, session in self._sessions.items() if session.user in users]
            for key in keys:
                del self._sessions[key]
            return len(keys)

    def count(self) -> int:
        with self._lock:
            self._expire()
            return len(self._sessions)

    def _expire(self) -> None:
        now = time.time()
        for key in [key for key, session in self._sessions.items() if session.expires <= now]:
            del self._sessions[key]


class Throttle:
    """At most `limit` failures per key in `window_s`; a key at its limit waits for the oldest
    failure to leave the window."""

    def __init__(self, limit: int, window_s: float = FAILURE_WINDOW_S, max_keys: int = MAX_THROTTLE_KEYS):
        self.limit = limit
        self.window_s = window_s
        self.max_keys = max_keys
        self._lock = threading.Lock()
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def wait_s(self, key: str) -> float:
        """Seconds until `key` may try again; 0 when it may now."""
        now = time.monotonic()
        with self._lock:
            failures = self._failures.get(key)
            if failures is None:
                return 0.0
            while failures and failures[0] <= now - self.window_s:
                failures.popleft()
            if len(failures) < self.limit:
                return 0.0
            return failures[0] + self.window_s - now

    def failed(self, key: str) -> int:
        """Count a failure; the failures of `key` in the window."""
        now = time.monotonic()
        with self._lock:
            failures = self._failures.pop(key, None) or deque()
            failures.append(now)
            while len(failures) > self.limit:
                failures.popleft()
            self._failures[key] = failures  # to the end: the least recently failing go first
            while len(self._failures) > self.max_keys:
                self._failures.popitem(last=False)
            return sum(1 for t in failures if t > now - self.window_s)

    def clear(self, key: str) -> None:
        with self._lock:
            self._failures.pop(key, None)


class Auth:
    def __init__(self, users_file: str | None, session_hours: float, counters: ConsoleCounters):
        self.users = Users(Path(users_file)) if users_file else None
        self.sessions = Sessions(session_hours * 3600.0)
        self.counters = counters
        self.by_user = Throttle(FAILURES_PER_USER)
        self.by_address = Throttle(FAILURES_PER_ADDRESS)
        self._dummy: Scrypt | None = None

    @property
    def enabled(self) -> bool:
        return self.users is not None

    def refresh(self) -> None:
        """Re-read a changed users file; end the sessions of users removed or given a new password."""
        if self.users is None:
            return
        changed = self.users.reload()
        if changed:
            ended = self.sessions.end_users(changed)
            if ended:
                log.info("users file changed: %d sessions of %s ended", ended, ", ".join(sorted(changed)))

    def session(self, token: str | None) -> Session | None:
        if self.users is None:
            return None
        self.refresh()
        return self.sessions.get(token)

    def login(self, username: str, password: str, address: str) -> LoginResult:
        """Check a login (blocking: scrypt takes about 0.1 s); a session when it is right."""
        assert self.users is not None
        self.refresh()
        shown = repr(username[:64])
        user_key = "user:" + username[:64]  # a throttle key of bounded size, whatever was posted
        if self.users.error is not None:
            self.counters.login_failures.add("users_file")
            return LoginResult(503, "logins are unavailable: the console cannot use its users file (its log says why)")
        wait = max(self.by_user.wait_s(user_key), self.by_address.wait_s("address:" + address))
        if wait > 0:
            self.counters.login_failures.add("throttled")
            log.warning("login for %s from %s refused: too many failed logins in the last minute", shown, address)
            retry = int(wait) + 1
            return LoginResult(429, f"too many failed logins; try again in {retry} s", retry_after_s=retry)
        stored = self.users.get(username)
        # An unknown user costs the same scrypt as a known one: the answer's time says nothing.
        checked = verify_password(password, stored if stored is not None else self._dummy_hash())
        if stored is None or not checked or len(password) > MAX_PASSWORD:
            self.counters.login_failures.add("bad_credentials")
            failures = self.by_user.failed(user_key)
            self.by_address.failed("address:" + address)
            log.warning("login for %s from %s refused: wrong user name or password (%d of %d in a minute before a lockout)", shown, address, failures, FAILURES_PER_USER)
            return LoginResult(401, "wrong user name or password")
        self.by_user.clear(user_key)
        token, session = self.sessions.create(username)
        self.counters.logins.add()
        log.info("operator %s logged in from %s", username, address)
        return LoginResult(200, f"logged in as {username}", token, session)

    def _dummy_hash(self) -> Scrypt:
        if self._dummy is None:
            self._dummy = parse_hash(hash_password(secrets.token_urlsafe(16)))
        return self._dummy


def csrf_matches(session: Session, sent: str | None) -> bool:
    return sent is not None and hmac.compare_digest(sent.encode("utf-8", "replace"), session.csrf.encode("ascii"))
