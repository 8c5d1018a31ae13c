"""The console's write actions behind the login, against a real Mosquitto and, for the pages, a
real headless Chromium: what an operator sends must reach the broker exactly as the stations'
contract says (DESIGN.md), and nothing else may reach it: not without a login, not without the
CSRF token, not from a bad body, and never a success the broker did not confirm.

One broker and one console (with a users file) serve the module; the read-only, https and
broker-down cases start their own console.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import pytest

from edge.console import cli
from edge.console.passwords import hash_password, passwd_main, read_users, verify_password
from tests.console_helpers import CommandListener, ConsoleProcess, Operator, Publisher, image_tag, jpeg, part, self_signed, stats
from tests.test_console import _wait, browser, screenshots  # noqa: F401 (fixtures)

ROOT = Path(__file__).resolve().parents[1]
ALICE, ALICE_PASSWORD = "alice", "line-3 alice pass"
CAROL, CAROL_PASSWORD = "carol", "carol's password"
STATION = "press-1"
RECIPES = ["plate-a", "plate-b", "plate-c.v2"]


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def module_broker(tmp_path_factory):
    from tests.mqtt_helpers import Broker, find_mosquitto

    if find_mosquitto() is None:
        pytest.skip("mosquitto not installed (apt-get install -y mosquitto; make test installs it)")
    broker = Broker(tmp_path_factory.mktemp("actions-broker")).start()
    yield broker
    broker.stop()


def _users_file(folder: Path) -> Path:
    users = folder / "users"
    users.write_text(f"# operators of line 3\n{ALICE}:{hash_password(ALICE_PASSWORD)}\n\n{CAROL}:{hash_password(CAROL_PASSWORD)}\n")
    users.chmod(0o600)
    return users


def _config(folder: Path, text: str) -> Path:
    config = folder / "console.yaml"
    config.write_text(text)
    return config


@pytest.fixture(scope="module")
def console(module_broker, tmp_path_factory):
    work = tmp_path_factory.mktemp("actions-console")
    _users_file(work)
    process = ConsoleProcess(module_broker.port, work, "--config", str(_config(work, "users_file: users\nsession_hours: 1\n")))
    yield process
    code = process.stop()
    assert code == 0, "edge-console did not stop cleanly on SIGTERM:\n" + "\n".join(process.log[-30:])
    assert not any("Traceback" in line for line in process.log), "\n".join(process.log)


@pytest.fixture(scope="module")
def station(module_broker, console):
    """press-1, as the daemon shows it: retained status and stats (with its recipes, teach-in and
    label counts) and a few parts, one of them a reject with its heatmap."""
    publisher = Publisher(module_broker.port, client_id="actions-station")
    publisher.send(STATION, "status", "online", retain=True)
    publisher.send(STATION, "stats", _stats(), retain=True)
    for i in range(5):
        message = part(STATION, f"P-{i}", i, 1.6 if i == 3 else 0.3, recipe="plate-a")
        if i == 3:
            publisher.send(STATION, "heatmap", jpeg(image_tag(STATION, message), seed=i), qos=0)
        publisher.send(STATION, "result", message)
    console.wait_for(lambda: (s := _state(console, STATION)) and s["parts_seen"] == 5 and s["stats"], what="press-1's parts and stats")
    yield publisher
    publisher.close()


def _stats(teach: dict | None = None, recipe: str = "plate-a") -> dict:
    return stats(
        STATION,
        recipe=recipe,
        recipes=RECIPES,
        teach=teach,
        labels={"false_rejects": 2, "misses": 1, "confirmed_rejects": 7, "confirmed_good": 30},
    )


@pytest.fixture(scope="module")
def listener(module_broker):
    heard = CommandListener(module_broker.port)
    yield heard
    heard.close()


@pytest.fixture
def alice(console) -> Operator:
    operator = Operator(console)
    status, answer, _ = operator.login(ALICE, ALICE_PASSWORD)
    assert status == 200 and answer["user"] == ALICE, (status, answer)
    return operator


def _state(console: ConsoleProcess, name: str) -> dict | None:
    status, _, body = console.get(f"/api/stations/{name}")
    return json.loads(body) if status == 200 else None


def _metric(console: ConsoleProcess, name: str, labels: dict[str, str] | None = None) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(console.metrics()):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in (labels or {}).items()):
                return sample.value
    return 0.0


def _retained(port: int, topic: str, wait_s: float = 1.0) -> list:
    """What a client subscribing now gets on `topic` (the retained messages only)."""
    late = CommandListener(port, station=topic)
    try:
        time.sleep(wait_s)
        return late.heard()
    finally:
        late.close()


def _sent_one(listener: CommandListener, before: int, post) -> tuple[object, object]:
    """Runs `post` (a command that must succeed) and returns (its answer, the one message it caused)."""
    status, answer = post()
    assert status == 200 and answer["sent"] is True, (status, answer)
    heard = listener.wait_for(before + 1)
    assert len(heard) == before + 1, heard[before:]
    time.sleep(0.2)
    assert len(listener.heard()) == before + 1, "one command, one message"
    return answer, heard[before]


# --- edge-console passwd and the users file -----------------------------------------------------


def _passwd(monkeypatch, capsys, argv: list[str], stdin: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = passwd_main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_passwd_writes_scrypt_lines(tmp_path, monkeypatch, capsys):
    users = tmp_path / "users"
    # The real command line, password on stdin (not a terminal).
    done = subprocess.run([sys.executable, "-m", "edge.console", "passwd", "alice", "--users-file", str(users)], input="first password\n", cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "alice: added to" in done.stdout, done.stdout + done.stderr
    line = users.read_text().splitlines()
    assert len(line) == 1 and re.fullmatch(r"alice:scrypt\$32768\$8\$1\$[A-Za-z0-9+/]+=*\$[A-Za-z0-9+/]+=*", line[0]), line
    assert users.stat().st_mode & 0o777 == 0o600
    stored = read_users(users)["alice"]
    assert len(stored.salt) == 16 and len(stored.digest) == 32
    assert verify_password("first password", stored) and not verify_password("first passwor", stored) and not verify_password("First password", stored)

    # A second user, then alice's new password: one line each, her old password no longer works.
    assert _passwd(monkeypatch, capsys, ["bob", "--users-file", str(users)], "bob's password\n")[0] == 0
    code, out, _ = _passwd(monkeypatch, capsys, ["alice", "--users-file", str(users)], "second password\r\n")
    assert code == 0 and "password changed" in out
    both = read_users(users)
    assert sorted(both) == ["alice", "bob"] and len(users.read_text().splitlines()) == 2
    assert verify_password("second password", both["alice"]) and not verify_password("first password", both["alice"])
    assert both["alice"].salt != stored.salt != both["bob"].salt  # a fresh salt every time

    # Refusals change nothing: a short password, a bad name, a user not there.
    text = users.read_text()
    code, _, err = _passwd(monkeypatch, capsys, ["alice", "--users-file", str(users)], "short\n")
    assert code == 2 and "8 to 1024 characters" in err
    code, _, err = _passwd(monkeypatch, capsys, ["al:ice", "--users-file", str(users)], "long enough pass\n")
    assert code == 2 and "is not 1-64 letters" in err
    code, _, err = _passwd(monkeypatch, capsys, ["nobody", "--users-file", str(users), "--delete"], "")
    assert code == 2 and "no user nobody" in err
    assert users.read_text() == text
    code, out, _ = _passwd(monkeypatch, capsys, ["bob", "--users-file", str(users), "--delete"], "")
    assert code == 0 and sorted(read_users(users)) == ["alice"]


BAD_USERS = [
    ("alice:plain-text-password\n", "line 1: user alice: the hash is not scrypt$n$r$p$salt$hash"),
    ("# ok\nalice:scrypt$3$8$1$c2FsdHNhbHQ=$aGFzaGhhc2hoYXNoaGFzaA==\n", "line 2: user alice: scrypt cost n=3 r=8 p=1 is out of bounds"),
    ("alice:scrypt$1073741824$8$1$c2FsdHNhbHQ=$aGFzaGhhc2hoYXNoaGFzaA==\n", "line 1: user alice: scrypt cost n=1073741824 r=8 p=1 is out of bounds"),
    ("@LINE@\n@LINE@\n", "line 2: user alice is given twice"),
    ("al ice:@HASH@\n", "line 1: user name 'al ice' is not"),
]


@pytest.mark.parametrize("text,expected", BAD_USERS, ids=[f"users-{i}" for i in range(len(BAD_USERS))])
def test_a_bad_users_file_is_refused_naming_key_and_line(tmp_path, capsys, text, expected):
    hashed = hash_password("whatever password", n=2**10)
    (tmp_path / "users").write_text(text.replace("@LINE@", f"alice:{hashed}").replace("@HASH@", hashed))
    config = _config(tmp_path, "listen: 127.0.0.1:0\nusers_file: users\n")
    assert cli.main(["--config", str(config), "--validate-config"]) == cli.EXIT_BAD_CONFIG
    err = capsys.readouterr().err
    assert f"edge-console: {config}: users_file (line 2): {tmp_path / 'users'} {expected}" in err, err


def test_bad_https_and_session_settings_are_refused(tmp_path, capsys):
    cert, key = self_signed(tmp_path)
    for text, expected in (
        ("https: {cert_file: @CERT@}\n", "https.key_file (line 1): required key missing"),
        ("https: {cert_file: @CERT@, key_file: @CERT@}\n", "https (line 1): cert_file"),
        ("https: {cert_file: @CERT@, key_file: @KEY@, ca: x}\n", "https.ca (line 1): unknown key; allowed: cert_file, key_file"),
        ("session_hours: 0\n", "session_hours (line 1)"),
        ("users_file: /nonexistent/users\n", "users_file (line 1): cannot read /nonexistent/users"),
    ):
        config = _config(tmp_path, text.replace("@CERT@", str(cert)).replace("@KEY@", str(key)))
        assert cli.main(["--config", str(config), "--validate-config"]) == cli.EXIT_BAD_CONFIG
        err = capsys.readouterr().err
        assert expected in err and "Traceback" not in err, (text, err)


# --- the login --------------------------------------------------------------------------------------


def test_writes_need_a_login_and_the_csrf_token(console, station, listener):
    before = len(listener.heard())
    recipe = f"/api/stations/{STATION}/recipe"
    anonymous = Operator(console)
    assert anonymous.session() == {"write_enabled": True, "user": None, "csrf": None, "expires": None, "read_only": None}
    status, answer = anonymous.post(recipe, {"recipe": "plate-b"}, csrf="made-up")
    assert status == 403 and "log in first" in answer["detail"], answer

    # A wrong password, an unknown user: the same refusal, counted.
    failures = _metric(console, "edge_console_login_failures_total", {"reason": "bad_credentials"})
    wrong = Operator(console)
    for name, password in ((ALICE, "not her password"), ("mallory", ALICE_PASSWORD), (ALICE, ALICE_PASSWORD.upper())):
        status, answer, _ = wrong.login(name, password)
        assert status == 401 and answer == {"detail": "wrong user name or password"} and wrong.cookie is None, (name, status, answer)
    assert _metric(console, "edge_console_login_failures_total", {"reason": "bad_credentials"}) == failures + 3

    operator = Operator(console)
    status, answer, _ = operator.login(ALICE, ALICE_PASSWORD)
    assert status == 200 and answer["user"] == ALICE and len(answer["csrf"]) >= 32
    attributes = [item.strip().lower() for item in operator.set_cookie.split(";")]
    assert "httponly" in attributes and "samesite=strict" in attributes and "path=/" in attributes and "max-age=3600" in attributes, operator.set_cookie
    assert "secure" not in attributes  # plain http here (see the https test)
    assert len(operator.cookie or "") >= 40 and operator.cookie != answer["csrf"]
    assert operator.session()["user"] == ALICE and operator.session()["csrf"] == answer["csrf"]

    # Logged in, but without the header, with another session's token, or from another site.
    other = Operator(console)
    other.login(CAROL, CAROL_PASSWORD)
    for csrf, headers in ((False, None), ("", None), (other.csrf, None), (operator.csrf + "x", None), (True, {"Origin": "http://evil.example"}), (True, {"Sec-Fetch-Site": "cross-site"})):
        status, answer = operator.post(recipe, {"recipe": "plate-b"}, csrf=csrf, headers=headers)
        assert status == 403, (csrf, headers, status, answer)
        assert ("X-CSRF-Token" in answer["detail"]) or ("another site" in answer["detail"]), answer
    # A form post (what a foreign page can send without a preflight) is refused before anything.
    status, _ = operator.post(recipe, b"recipe=plate-b", content_type="application/x-www-form-urlencoded")
    assert status == 415

    # Logged out: the session is gone on the server, not only in the browser.
    status, answer = operator.post("/logout", {}, csrf=False)
    assert status == 403  # logout is a write too
    status, answer = operator.post("/logout", {})
    assert status == 200 and answer["user"] is None
    status, answer = operator.post(recipe, {"recipe": "plate-b"})
    assert status == 403 and "log in first" in answer["detail"]

    time.sleep(0.5)
    assert listener.heard()[before:] == [], "a refused write published something"
    assert any("recipe for 'press-1' from 127.0.0.1 refused: no login" in line for line in console.log), console.log[-20:]
    assert any(f"operator {ALICE}: recipe for 'press-1' refused: no or wrong X-CSRF-Token header" in line for line in console.log), console.log[-20:]


def test_failed_logins_are_throttled(console):
    throttled = _metric(console, "edge_console_login_failures_total", {"reason": "throttled"})
    operator = Operator(console)
    for _ in range(5):
        assert operator.login(CAROL, "guessing")[0] == 401
    # Locked for the rest of the minute, even with the right password.
    status, answer, headers = operator.login(CAROL, CAROL_PASSWORD)
    assert status == 429 and "too many failed logins" in answer["detail"] and 1 <= int(headers["Retry-After"]) <= 61, (status, answer)
    assert operator.cookie is None
    assert _metric(console, "edge_console_login_failures_total", {"reason": "throttled"}) == throttled + 1
    # Another user is not locked by carol's failures.
    assert Operator(console).login(ALICE, ALICE_PASSWORD)[0] == 200
    assert any("login for 'carol' from 127.0.0.1 refused: too many failed logins" in line for line in console.log)


# --- the commands on the broker ----------------------------------------------------------------------


def test_a_recipe_arrives_retained_with_the_exact_payload(console, station, listener, alice, module_broker):
    before = len(listener.heard())
    answer, heard = _sent_one(listener, before, lambda: alice.post(f"/api/stations/{STATION}/recipe", {"recipe": "plate-c.v2"}))
    assert heard.topic == f"edge/{STATION}/recipe" and heard.payload == b"plate-c.v2" and heard.qos == 1, heard
    assert answer["retained"] is True and answer["by"] == ALICE and answer["topic"] == f"edge/{STATION}/recipe"
    # Retained: a station that connects later gets it.
    retained = [m for m in _retained(module_broker.port, STATION) if m.topic.endswith("/recipe")]
    assert [(m.payload, m.retain) for m in retained] == [(b"plate-c.v2", True)]
    assert any(f"operator {ALICE}: recipe 'plate-c.v2' sent to edge/{STATION}/recipe (retained)" in line for line in console.log)
    assert _metric(console, "edge_console_commands_total", {"command": "recipe", "result": "sent"}) >= 1
    # A recipe the station does not list is refused: the station would reject every part under it.
    status, answer = alice.post(f"/api/stations/{STATION}/recipe", {"recipe": "plate-z"})
    assert status == 409 and "has no recipe 'plate-z'; it has plate-a, plate-b, plate-c.v2" in answer["detail"], answer
    time.sleep(0.3)
    assert len(listener.heard()) == before + 1


def test_teach_and_feedback_arrive_as_the_exact_json(console, station, listener, alice, module_broker):
    cases = [
        ("teach", {"action": "start", "name": "plate-a_2026-12.lot7", "count": 250}, {"action": "start", "name": "plate-a_2026-12.lot7", "count": 250}),
        ("teach", {"action": "start"}, {"action": "start"}),
        ("teach", {"action": "start", "count": 10000}, {"action": "start", "count": 10000}),
        ("teach", {"action": "stop"}, {"action": "stop"}),
        ("feedback", {"part_id": "P-3", "label": "good"}, {"part_id": "P-3", "label": "good"}),
        ("feedback", {"part_id": "P-1", "label": "defect", "defect_type": "scratch_deep-2"}, {"part_id": "P-1", "label": "defect", "defect_type": "scratch_deep-2"}),
        ("feedback", {"part_id": "P-2", "label": "defect"}, {"part_id": "P-2", "label": "defect", "defect_type": "unspecified"}),
    ]
    for kind, body, expected in cases:
        before = len(listener.heard())
        answer, heard = _sent_one(listener, before, lambda kind=kind, body=body: alice.post(f"/api/stations/{STATION}/{kind}", body))
        assert heard.topic == f"edge/{STATION}/{kind}" and heard.qos == 1 and not heard.retain, heard
        assert json.loads(heard.payload) == expected, (body, heard.payload)
        assert answer["payload"] == heard.payload.decode() and answer["retained"] is False
    # Neither is retained: a station that connects later gets no old command.
    assert [m.topic for m in _retained(module_broker.port, STATION) if not m.topic.endswith("/recipe")] == []
    assert any(f"operator {ALICE}: label defect (unspecified) for part 'P-2' sent to edge/{STATION}/feedback" in line for line in console.log)

    # The labels are the console's history too: the gallery shows them after a reload.
    def labelled():
        rejects = console.json("/api/rejects?part_id=P-3")["rejects"]
        return rejects and rejects[0]["label"]

    label = console.wait_for(labelled, what="the label in the history")
    assert label["label"] == "good" and label["defect_type"] is None and label["by"] == ALICE
    parts = {p["part_id"]: p for p in console.json(f"/api/stations/{STATION}/parts")["parts"]}
    assert parts["P-1"]["label"]["defect_type"] == "scratch_deep-2" and parts["P-2"]["label"]["defect_type"] == "unspecified" and parts["P-0"]["label"] is None
    assert parts["P-3"]["recipe"] == "plate-a"
    live = _state(console, STATION)["labels"]
    assert live["P-3"]["label"] == "good" and live["P-1"]["label"] == "defect" and "P-0" not in live


BAD_BODIES = [
    ("recipe", b"plate-b", "application/json", 422, "not JSON"),
    ("recipe", b'"plate-b"', "application/json", 422, "not a JSON object"),
    ("recipe", b"[" * 2000 + b"]" * 2000, "application/json", 422, "not JSON"),  # past the JSON recursion limit
    ("recipe", {}, None, 422, "recipe: Field required"),
    ("recipe", {"recipe": ""}, None, 422, "a recipe name is 1-64 letters"),
    ("recipe", {"recipe": "../etc"}, None, 422, "a recipe name is"),
    ("recipe", {"recipe": "plate-b\n"}, None, 422, "a recipe name is"),
    ("recipe", {"recipe": 7}, None, 422, "recipe: Input should be a valid string"),
    ("recipe", {"recipe": "plate-b", "retain": False}, None, 422, "retain: Extra inputs are not permitted"),
    ("teach", {}, None, 422, "action: required"),
    ("teach", {"action": "begin"}, None, 422, "action: expected 'start' or 'stop'"),
    ("teach", {"action": "start", "count": 0}, None, 422, "count: Input should be greater than or equal to 1"),
    ("teach", {"action": "start", "count": 10001}, None, 422, "count: Input should be less than or equal to 10000"),
    ("teach", {"action": "start", "count": "20"}, None, 422, "count: Input should be a valid integer"),
    ("teach", {"action": "start", "count": 2.5}, None, 422, "count: Input should be a valid integer"),
    ("teach", {"action": "start", "count": True}, None, 422, "count: Input should be a valid integer"),
    ("teach", {"action": "start", "name": ".."}, None, 422, "a folder name is"),
    ("teach", {"action": "start", "name": "a/b"}, None, 422, "a folder name is"),
    ("teach", {"action": "start", "name": "x" * 65}, None, 422, "a folder name is"),
    ("teach", {"action": "stop", "count": 3}, None, 422, "count: Extra inputs are not permitted"),
    ("feedback", {"part_id": "P-1"}, None, 422, "label: Field required"),
    ("feedback", {"part_id": "P-1", "label": "bad"}, None, 422, "label: Input should be 'good' or 'defect'"),
    ("feedback", {"part_id": "P-1", "label": "good", "defect_type": "scratch"}, None, 422, "defect_type goes with label 'defect' only"),
    ("feedback", {"part_id": "P-1", "label": "defect", "defect_type": "scratch deep"}, None, 422, "a defect type is"),
    ("feedback", {"part_id": "P-1", "label": "defect", "defect_type": "x" * 41}, None, 422, "a defect type is"),
    ("feedback", {"part_id": "P-1", "label": "defect", "defect_type": ""}, None, 422, "a defect type is"),
    ("feedback", {"part_id": "", "label": "good"}, None, 422, "part_id: String should have at least 1 character"),
    ("feedback", {"part_id": "P-1\u202e", "label": "good"}, None, 422, "no control characters"),
    ("feedback", {"part_id": "never-seen", "label": "good"}, None, 404, "no part 'never-seen' from station press-1"),
    ("feedback", b'{"part_id": "P-1", "label": "good", "pad": "' + b"x" * 5000 + b'"}', "application/json", 413, "over 4096 bytes"),
    ("teach", {"action": "stop"}, "text/plain", 415, "as JSON"),
]


def test_bad_bodies_are_refused_and_nothing_is_published(console, station, listener, alice):
    before = len(listener.heard())
    for kind, body, content_type, status, expected in BAD_BODIES:
        got, answer = alice.post(f"/api/stations/{STATION}/{kind}", body, content_type=content_type or "application/json")
        assert got == status and expected in answer.get("detail", ""), (kind, body, got, answer)
    # Unknown stations, and names that cannot be one.
    for name in ("press-9", "%2B", "a%2Fb"):
        got, answer = alice.post(f"/api/stations/{name}/teach", {"action": "stop"})
        assert got == 404, (name, got, answer)
    assert _metric(console, "edge_console_commands_total", {"command": "teach", "result": "refused"}) >= 12
    # A good command after the bad ones is the first message on the broker since.
    _, heard = _sent_one(listener, before, lambda: alice.post(f"/api/stations/{STATION}/teach", {"action": "stop"}))
    assert json.loads(heard.payload) == {"action": "stop"}
    assert any(f"operator {ALICE}: teach for station {STATION} refused: count: Input should be greater than or equal to 1" in line for line in console.log)


def test_a_read_only_console_refuses_every_write(module_broker, tmp_path, listener):
    console = ConsoleProcess(module_broker.port, tmp_path)
    try:
        publisher = Publisher(module_broker.port, client_id="read-only-station")
        publisher.send("ro-1", "status", "online", retain=True)
        publisher.close()
        console.wait_for(lambda: _state(console, "ro-1"), what="ro-1")
        before = len(listener.heard())
        operator = Operator(console)
        session = operator.session()
        assert session["write_enabled"] is False and session["user"] is None and "edge-console passwd" in session["read_only"]
        status, answer, _ = operator.login(ALICE, ALICE_PASSWORD)
        assert status == 403 and "read-only" in answer["detail"]
        for kind, body in (("recipe", {"recipe": "plate-a"}), ("teach", {"action": "stop"}), ("feedback", {"part_id": "x", "label": "good"})):
            status, answer = operator.post(f"/api/stations/ro-1/{kind}", body, csrf="anything")
            assert status == 403 and "edge-console passwd NAME --users-file" in answer["detail"] and "users_file" in answer["detail"], answer
        status, _, body = console.get("/login")
        assert status == 200 and b"read-only" in body and b'name="password"' not in body
        time.sleep(0.3)
        assert listener.heard()[before:] == []
        assert any("read-only: no users file" in line for line in console.log)
    finally:
        assert console.stop() == 0


def test_the_session_cookie_is_secure_over_https(module_broker, tmp_path):
    cert, key = self_signed(tmp_path)
    _users_file(tmp_path)
    config = _config(tmp_path, f"users_file: users\nhttps: {{cert_file: {cert}, key_file: {key}}}\n")
    console = ConsoleProcess(module_broker.port, tmp_path, "--config", str(config))
    try:
        assert console.url.startswith("https://")
        operator = Operator(console)
        status, answer, _ = operator.login(ALICE, ALICE_PASSWORD)
        assert status == 200 and answer["user"] == ALICE
        attributes = [item.strip().lower() for item in operator.set_cookie.split(";")]
        assert "secure" in attributes and "httponly" in attributes and "samesite=strict" in attributes, operator.set_cookie
    finally:
        assert console.stop() == 0


def test_the_broker_away_is_an_error_never_a_success(tmp_path):
    """Connected but no PUBACK (a hung broker): 503 after the wait. Not connected: 503 at once.
    Neither command reaches the station later, when a broker is back."""
    from tests.mqtt_helpers import Broker, find_mosquitto

    if find_mosquitto() is None:
        pytest.skip("mosquitto not installed")
    (tmp_path / "broker").mkdir()
    broker = Broker(tmp_path / "broker").start()
    _users_file(tmp_path)
    console = ConsoleProcess(broker.port, tmp_path, "--config", str(_config(tmp_path, "users_file: users\n")))
    try:
        publisher = Publisher(broker.port, client_id="away-station")
        publisher.send("away-1", "status", "online", retain=True)
        publisher.close()
        console.wait_for(lambda: _state(console, "away-1"), what="away-1")
        operator = Operator(console)
        assert operator.login(ALICE, ALICE_PASSWORD)[0] == 200

        assert broker.process is not None
        os.kill(broker.process.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            status, answer = operator.post("/api/stations/away-1/teach", {"action": "start", "name": "hung"})
            assert status == 503 and "did not confirm the message within 5 s" in answer["detail"], answer
            assert 4.5 < time.monotonic() - started < 15
        finally:
            # Killed while stopped: the broker never reads that publish, so the console's MQTT
            # client still holds it unacknowledged. It must not resend it on reconnecting.
            broker.process.kill()
            broker.process.wait(5)
        console.wait_for(lambda: not console.json("/api/stations")["console"]["broker_connected"], what="the console to see the broker gone")
        started = time.monotonic()
        status, answer = operator.post("/api/stations/away-1/teach", {"action": "start", "name": "while-away"})
        assert status == 503 and "not connected to the broker" in answer["detail"] and "nothing was sent" in answer["detail"], answer
        assert time.monotonic() - started < 2
        assert any(f"operator {ALICE}: teach-in start into 'while-away' for station away-1 NOT sent" in line for line in console.log)

        broker = Broker(tmp_path / "broker", port=broker.port).start()
        listener = CommandListener(broker.port)
        try:
            console.wait_for(lambda: console.json("/api/stations")["console"]["broker_connected"], timeout_s=30, what="reconnect")
            time.sleep(1.5)
            assert [m.payload for m in listener.heard()] == [], "a command reported as failed reached the station later"
            assert _metric(console, "edge_console_commands_total", {"command": "teach", "result": "not_sent"}) == 2
        finally:
            listener.close()
    finally:
        assert console.stop() == 0
        broker.stop()


# --- the pages in a real browser -------------------------------------------------------------------


def test_an_operator_logs_in_and_labels_in_the_browser(console, station, listener, browser, screenshots):  # noqa: F811 (fixtures)
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    reject = part(STATION, "S-REJ-1", 901, 1.9, recipe="plate-a")
    station.send(STATION, "heatmap", jpeg(image_tag(STATION, reject), seed=9), qos=0)
    station.send(STATION, "result", reject)
    console.wait_for(lambda: console.json("/api/rejects?part_id=S-REJ-1")["rejects"], what="the reject in the gallery")

    # Not logged in: the gallery shows no label buttons, the header offers the login.
    browser.get(console.url + "/rejects?part_id=S-REJ")
    item = '[data-testid="gallery-item"][data-part-id="S-REJ-1"]'
    _wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, item + ' [data-testid="label-state"]'), what="the gallery item")
    assert browser.find_elements(By.CSS_SELECTOR, item + ' [data-testid="label-defect"]') == []
    _wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, '[data-testid="login-link"]'), what="the login link").click()

    # The login form brings her back to the gallery.
    _wait(browser, lambda d: d.find_element(By.ID, "username"), what="the login form").send_keys(ALICE)
    browser.save_screenshot(str(screenshots / "login.png"))
    browser.find_element(By.ID, "password").send_keys(ALICE_PASSWORD)
    browser.find_element(By.CSS_SELECTOR, '[data-testid="login-submit"]').click()
    _wait(browser, lambda d: "/rejects?part_id=S-REJ" in d.current_url and d.find_element(By.CSS_SELECTOR, '[data-testid="operator"]').text == ALICE, what="back on the gallery")

    before = len(listener.heard())
    figure = _wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, item), what="the gallery item")
    figure.find_element(By.CSS_SELECTOR, '[data-testid="defect-type"]').send_keys("scratch")
    figure.find_element(By.CSS_SELECTOR, '[data-testid="label-defect"]').click()
    heard = listener.wait_for(before + 1)
    assert len(heard) == before + 1 and heard[-1].topic == f"edge/{STATION}/feedback", heard[before:]
    assert json.loads(heard[-1].payload) == {"part_id": "S-REJ-1", "label": "defect", "defect_type": "scratch"}
    _wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, item + ' [data-testid="label-state"]').text == f"labelled defect (scratch) by {ALICE}", what="the label shown")
    # After a reload the label comes from the history.
    console.wait_for(lambda: console.json("/api/rejects?part_id=S-REJ-1")["rejects"][0]["label"], what="the label in the history")
    browser.refresh()
    _wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, item + ' [data-testid="label-state"]').text == f"labelled defect (scratch) by {ALICE}", what="the label after a reload")
    browser.save_screenshot(str(screenshots / "gallery-labels.png"))

    # The station page: recipe, teach-in and a label from the live strip.
    browser.get(console.url + "/station/" + quote(STATION))
    _wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, '[data-testid="active-recipe"]').text == "plate-a", what="the active recipe")
    _wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, '[data-testid="recipe-form"]').is_displayed(), what="the recipe selector")
    labels = browser.find_element(By.CSS_SELECTOR, '[data-testid="label-counts"]').text
    assert "false rejects (rejected, labelled good)\n2" in labels and "confirmed good\n30" in labels, labels
    options = [o.get_attribute("value") for o in Select(browser.find_element(By.ID, "recipe-select")).options]
    assert options == RECIPES
    Select(browser.find_element(By.ID, "recipe-select")).select_by_value("plate-b")
    browser.find_element(By.CSS_SELECTOR, '[data-testid="recipe-apply"]').click()
    heard = listener.wait_for(before + 2)
    assert (heard[-1].topic, heard[-1].payload) == (f"edge/{STATION}/recipe", b"plate-b"), heard[before:]
    _wait(browser, lambda d: "sent" in d.find_element(By.CSS_SELECTOR, '[data-testid="recipe-result"]').text, what="the recipe confirmed")

    browser.find_element(By.ID, "teach-count").send_keys("20")
    browser.find_element(By.CSS_SELECTOR, '[data-testid="teach-start"]').click()
    heard = listener.wait_for(before + 3)
    assert heard[-1].topic == f"edge/{STATION}/teach" and json.loads(heard[-1].payload) == {"action": "start", "count": 20}, heard[before:]
    station.send(STATION, "stats", _stats(teach={"active": True, "folder": "/var/lib/edge-inspect/teach/press-1/20261207-0830", "saved": 7, "count": 20}, recipe="plate-b"), retain=True)
    _wait(browser, lambda d: "7 of 20 saved" in d.find_element(By.CSS_SELECTOR, '[data-testid="teach-state"]').text, what="the live teach-in count")
    _wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, '[data-testid="active-recipe"]').text == "plate-b", what="the new recipe")

    cell = _wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, '[data-testid="strip-item"][data-part-id="P-4"]'), what="the strip")
    cell.click()
    panel = _wait(browser, lambda d: (p := d.find_element(By.CSS_SELECTOR, '[data-testid="part-detail"]')).is_displayed() and p, what="the picked part")
    assert "P-4" in panel.text and "not labelled" in panel.text
    panel.find_element(By.CSS_SELECTOR, '[data-testid="label-good"]').click()
    heard = listener.wait_for(before + 4)
    assert heard[-1].topic == f"edge/{STATION}/feedback" and json.loads(heard[-1].payload) == {"part_id": "P-4", "label": "good"}, heard[before:]
    _wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, '[data-testid="strip-item"][data-part-id="P-4"]').get_attribute("data-label") == "good", what="the strip marks it")
    browser.set_window_size(1400, 1500)
    browser.save_screenshot(str(screenshots / "station-operator.png"))
    browser.set_window_size(1400, 1100)

    # Logged out: the controls go, the server forgot the session.
    browser.find_element(By.CSS_SELECTOR, '[data-testid="logout"]').click()
    _wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, '[data-testid="login-link"]'), what="logged out")
    assert not browser.find_element(By.CSS_SELECTOR, '[data-testid="recipe-form"]').is_displayed()
    assert not browser.find_element(By.CSS_SELECTOR, '[data-testid="teach-form"]').is_displayed()
    time.sleep(0.3)
    assert len(listener.heard()) == before + 4
    severe = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert severe == [], severe
