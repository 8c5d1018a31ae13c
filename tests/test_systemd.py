"""The systemd units (verify, security score, sysusers) and the sd_notify client on real sockets.

The unit checks run `systemd-analyze` offline on copies of systemd/*.service; they need no
running systemd and are skipped where the tools are missing. The notify checks bind real
AF_UNIX datagram sockets (a path and an abstract name) and read what edge.sdnotify sends.
"""
from __future__ import annotations

import os
import re
import shutil
import socket
import struct
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

from edge.sdnotify import SystemdNotifier

UNITS = Path(__file__).resolve().parents[1] / "systemd"
SERVICE = UNITS / "edge-inspect.service"
TEMPLATE = UNITS / "edge-inspect@.service"
SYSUSERS = UNITS / "edge-inspect.sysusers.conf"

# `systemd-analyze security --offline=yes` gives 1.6 ("OK") for both units with systemd 252. The
# scale (src/analyze/analyze-security.c): 0 PERFECT, < 1.0 SAFE, < 5.0 OK, < 7.5 MEDIUM,
# < 9.0 EXPOSED, < 10 UNSAFE, 10 DANGEROUS. Raise this only on purpose, with a comment in the unit.
MAX_EXPOSURE = 1.6
GOOD_LEVELS = {"PERFECT", "SAFE", "OK"}


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not found on PATH (systemd not installed here)")
    return path


def _run(*args: str) -> subprocess.CompletedProcess:
    # No pager, no colours, no emoji: plain text to parse.
    env = dict(os.environ, SYSTEMD_PAGER="", SYSTEMD_COLORS="0", SYSTEMD_EMOJI="0", LC_ALL="C.UTF-8")
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=60)


_EXEC = re.compile(r"^(Exec[A-Za-z]+=)([-@:+!]*)(\S+)(.*)$")


def _checkable_copy(unit: Path, directory: Path, name: str | None = None) -> Path:
    """A copy of `unit` whose Exec*= binaries exist here (verify refuses missing executables).

    Only the executable is replaced (by `true`); arguments, specifiers and every other line are
    kept, so everything else is verified as written.
    """
    true = shutil.which("true") or "/bin/true"
    lines = []
    for line in unit.read_text().splitlines():
        m = _EXEC.match(line)
        if m and not os.access(m.group(3), os.X_OK):
            line = f"{m.group(1)}{m.group(2)}{true}{m.group(4)}"
        lines.append(line)
    out = directory / (name or unit.name)
    out.write_text("\n".join(lines) + "\n")
    return out


_PROBLEM = re.compile(r"unknown|ignoring|not valid|invalid|failed|not executable|warning", re.I)


def _verify_problems(path: Path) -> tuple[int, list[str]]:
    """Runs `systemd-analyze verify`; returns its exit status and the lines that flag a problem.

    systemd 252 exits 0 on an unknown key or section (it only logs "Unknown key ..., ignoring"),
    so the output has to be read, not just the exit status.
    """
    result = _run(_tool("systemd-analyze"), "verify", "--man=no", str(path))
    output = (result.stdout + result.stderr).splitlines()
    return result.returncode, [line for line in output if _PROBLEM.search(line) or f"{path.name}:" in line]


def _entries(unit: Path) -> list[tuple[str, str, str]]:
    """(section, key, value) for every assignment, in order; repeated keys are kept."""
    section, out = "", []
    for raw in unit.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, _, value = line.partition("=")
        out.append((section, key.strip(), value.strip()))
    return out


def _values(unit: Path, key: str, section: str = "Service") -> list[str]:
    return [v for s, k, v in _entries(unit) if s == section and k == key]


# --- systemd-analyze verify ----------------------------------------------------------------------


def test_verify_catches_unknown_keys(tmp_path):
    """The checker itself: an unknown key and section are reported even though verify exits 0."""
    bad = tmp_path / "bad.service"
    bad.write_text("[Service]\nExecStart=/bin/true\nNoSuchKey=1\n[NoSuchSection]\nX=1\n")
    _, problems = _verify_problems(bad)
    assert any("NoSuchKey" in line for line in problems), problems
    assert any("NoSuchSection" in line for line in problems), problems


def test_service_unit_verifies(tmp_path):
    rc, problems = _verify_problems(_checkable_copy(SERVICE, tmp_path))
    assert rc == 0 and problems == [], problems


def test_template_unit_verifies_as_an_instance(tmp_path):
    rc, problems = _verify_problems(_checkable_copy(TEMPLATE, tmp_path, "edge-inspect@test.service"))
    assert rc == 0 and problems == [], problems


def test_unverified_copy_fails_only_on_the_missing_binary(tmp_path):
    """Without the substitution verify fails here on ExecStart alone (the venv is not installed)."""
    if Path("/opt/edge-inspect/.venv/bin/edge-inspect").exists():
        pytest.skip("edge-inspect is installed here; nothing is missing")
    copy = tmp_path / SERVICE.name
    shutil.copy(SERVICE, copy)
    rc, problems = _verify_problems(copy)
    assert rc != 0
    assert problems and all("/opt/edge-inspect/.venv/bin/edge-inspect" in line for line in problems), problems


# --- the settings the daemon relies on --------------------------------------------------------


def test_service_settings():
    expect = {
        "Type": "notify",
        "NotifyAccess": "main",
        "ExecStart": "/opt/edge-inspect/.venv/bin/edge-inspect --config /etc/edge-inspect/config.yaml",
        "ExecReload": "/bin/kill -HUP $MAINPID",
        "Restart": "on-failure",
        "RestartSec": "2",
        "WatchdogSec": "10",
        "TimeoutStartSec": "120",
        "TimeoutStopSec": "45",
        "User": "edge-inspect",
        "Group": "edge-inspect",
        "SupplementaryGroups": "video",
        "StateDirectory": "edge-inspect",
        "StateDirectoryMode": "0750",
        "ConfigurationDirectory": "edge-inspect",
        "UMask": "0027",
        "PrivateDevices": "no",
        "DevicePolicy": "closed",
        "MemoryDenyWriteExecute": "no",
        "ProtectSystem": "strict",
        "CapabilityBoundingSet": "",
        "AmbientCapabilities": "",
    }
    got = {key: _values(SERVICE, key) for key in expect}
    assert got == {key: [value] for key, value in expect.items()}
    assert _values(SERVICE, "StartLimitBurst", "Unit") and _values(SERVICE, "StartLimitIntervalSec", "Unit")
    devices = _values(SERVICE, "DeviceAllow")
    assert "char-video4linux rw" in devices and "char-nvidia* rw" in devices
    # The credential source must not be an absolute path: an absolute one that is missing fails
    # the start (243/CREDENTIALS); a credstore name that is missing is skipped.
    (credential,) = _values(SERVICE, "LoadCredential")
    ident, _, source = credential.partition(":")
    assert ident == "mqtt_password" and source and not source.startswith("/")


# Lines that name the instance; everything else must match edge-inspect.service exactly.
_PER_INSTANCE = {"Description", "ExecStart", "StateDirectory", "CacheDirectory", "Environment", "LoadCredential"}


def test_template_has_the_same_hardening_as_the_service():
    def shared(unit):
        return [(s, k, v) for s, k, v in _entries(unit) if k not in _PER_INSTANCE]

    assert shared(TEMPLATE) == shared(SERVICE)
    assert _values(TEMPLATE, "ExecStart") == [
        "/opt/edge-inspect/.venv/bin/edge-inspect --config /etc/edge-inspect/%i.yaml"
    ]
    assert _values(TEMPLATE, "StateDirectory") == ["edge-inspect/%i"]
    for key in _PER_INSTANCE - {"Description"}:
        template, service = _values(TEMPLATE, key), _values(SERVICE, key)
        assert len(template) == len(service), key
        assert all("%i" in value for value in template if value not in service), key


# --- systemd-analyze security -----------------------------------------------------------------


def _exposure(unit: Path) -> tuple[float, str]:
    result = _run(_tool("systemd-analyze"), "security", "--offline=yes", "--no-pager", str(unit))
    text = result.stdout + result.stderr
    if result.returncode != 0 and re.search(r"unrecognized option|unknown option", text, re.I):
        pytest.skip(f"this systemd-analyze has no --offline (needs systemd >= 250): {text.strip()}")
    m = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?) (\w+)", text)
    assert m, f"no overall exposure in the output (rc {result.returncode}):\n{text}"
    return float(m.group(1)), m.group(2)


@pytest.mark.parametrize("unit,name", [(SERVICE, None), (TEMPLATE, "edge-inspect@line3.service")])
def test_security_exposure(tmp_path, unit, name):
    score, level = _exposure(_checkable_copy(unit, tmp_path, name))
    assert level in GOOD_LEVELS, (score, level)
    assert score <= MAX_EXPOSURE, f"exposure {score} {level} > {MAX_EXPOSURE}: hardening regressed"


# --- sysusers.d -------------------------------------------------------------------------------


def test_sysusers_creates_the_user_in_video(tmp_path):
    sysusers = _tool("systemd-sysusers")
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (etc / "group").write_text("root:x:0:\nvideo:x:44:\n")
    result = _run(sysusers, f"--root={tmp_path}", str(SYSUSERS))
    assert result.returncode == 0, result.stderr
    passwd = {line.split(":")[0]: line.split(":") for line in (etc / "passwd").read_text().splitlines()}
    group = {line.split(":")[0]: line.split(":") for line in (etc / "group").read_text().splitlines()}
    user = passwd["edge-inspect"]
    assert int(user[2]) < 1000 and user[6].endswith("nologin")  # a system user without a shell
    assert user[3] == group["edge-inspect"][2]  # primary group edge-inspect
    assert "edge-inspect" in group["video"][3].split(",")
    assert group["video"][2] == "44"  # the existing group is reused, not recreated


# --- sd_notify over real datagram sockets -----------------------------------------------------

_CREDS = struct.Struct("3i")  # struct ucred: pid, uid, gid


def _receiver(address: str) -> socket.socket:
    if not hasattr(socket, "SO_PASSCRED"):
        pytest.skip("sd_notify over AF_UNIX with SO_PASSCRED is Linux-only")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    # systemd reads the sender's credentials to apply NotifyAccess=main; ask for them as well.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    sock.bind(address)
    sock.settimeout(5)
    return sock


def _receive(sock: socket.socket) -> tuple[bytes, int | None]:
    data, ancillary, _, _ = sock.recvmsg(4096, socket.CMSG_SPACE(_CREDS.size))
    pid = None
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            pid = _CREDS.unpack(payload[: _CREDS.size])[0]
    return data, pid


def _assert_nothing_more(sock: socket.socket) -> None:
    sock.setblocking(False)
    with pytest.raises(BlockingIOError):
        sock.recv(4096)


def _exchange(notifier: SystemdNotifier, sock: socket.socket) -> None:
    calls = [
        (lambda: notifier.extend_timeout(90), b"EXTEND_TIMEOUT_USEC=90000000"),
        (lambda: notifier.extend_timeout(0.25), b"EXTEND_TIMEOUT_USEC=250000"),
        (lambda: notifier.status("building TensorRT engine"), b"STATUS=building TensorRT engine"),
        (lambda: notifier.ready("inspecting line3"), b"READY=1\nSTATUS=inspecting line3"),
        (lambda: notifier.ready(), b"READY=1"),
        (notifier.watchdog, b"WATCHDOG=1"),
        (notifier.reloading, re.compile(rb"RELOADING=1\nMONOTONIC_USEC=[1-9][0-9]*")),
        (notifier.stopping, b"STOPPING=1"),
    ]
    for call, expected in calls:
        call()
        data, pid = _receive(sock)
        assert expected.fullmatch(data) if isinstance(expected, re.Pattern) else data == expected, data
        assert pid == os.getpid()  # sent by the main process, as NotifyAccess=main requires
    _assert_nothing_more(sock)  # one datagram per call, nothing extra


def _socket_dir(tmp_path: Path) -> Path:
    # sun_path holds 107 bytes; pytest's tmp_path can be longer than that on some machines.
    if len(str(tmp_path / "notify.sock")) < 100:
        return tmp_path
    return Path(tempfile.mkdtemp(prefix="sdn"))


def test_notify_over_a_filesystem_socket(tmp_path):
    path = _socket_dir(tmp_path) / "notify.sock"
    sock = _receiver(str(path))
    notifier = SystemdNotifier(str(path))
    try:
        assert notifier.enabled
        _exchange(notifier, sock)
    finally:
        notifier.close()
        sock.close()


def test_notify_over_an_abstract_socket():
    name = f"edge-inspect-test-{os.getpid()}-{uuid.uuid4().hex}"
    sock = _receiver("\0" + name)
    notifier = SystemdNotifier("@" + name)
    try:
        _exchange(notifier, sock)
    finally:
        notifier.close()
        sock.close()


def test_notify_socket_from_the_environment(tmp_path, monkeypatch):
    path = _socket_dir(tmp_path) / "env.sock"
    sock = _receiver(str(path))
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    notifier = SystemdNotifier()
    try:
        notifier.ready("up")
        assert _receive(sock)[0] == b"READY=1\nSTATUS=up"
    finally:
        notifier.close()
        sock.close()


def test_without_notify_socket_every_call_is_a_no_op(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    for notifier in (SystemdNotifier(), SystemdNotifier("")):
        assert not notifier.enabled
        assert notifier.socket is None
        notifier.ready("x")
        notifier.status("x")
        notifier.watchdog()
        notifier.reloading()
        notifier.stopping()
        notifier.extend_timeout(5)
        notifier.notify("READY=1")
        notifier.close()
        notifier.close()


def test_notify_survives_systemd_going_away(tmp_path):
    """At shutdown the socket may vanish: sending must not raise."""
    path = _socket_dir(tmp_path) / "gone.sock"
    sock = _receiver(str(path))
    notifier = SystemdNotifier(str(path))
    sock.close()
    path.unlink()
    notifier.stopping()  # ENOENT, swallowed
    notifier.watchdog()
    notifier.close()
    notifier.watchdog()  # after close(): disabled, no-op


def test_watchdog_interval(monkeypatch):
    notifier = SystemdNotifier("")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    assert notifier.watchdog_interval_s() is None  # watchdog off

    monkeypatch.setenv("WATCHDOG_USEC", "10000000")  # WatchdogSec=10
    assert notifier.watchdog_interval_s() == 5.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert notifier.watchdog_interval_s() == 5.0
    # Inherited from a parent that had the watchdog: not ours to feed.
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert notifier.watchdog_interval_s() is None

    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    monkeypatch.setenv("WATCHDOG_USEC", "3000000")
    assert notifier.watchdog_interval_s() == 1.5


@pytest.mark.parametrize("unit", [SERVICE, TEMPLATE], ids=lambda p: p.name)
def test_the_stop_budget_fits_the_units_stop_timeout(unit):
    """Everything a stop may wait for (edge/stop_budget.py) ends before systemd's SIGKILL, with
    room for the process to exit: a budget raised without the unit, or a unit whose timeout was
    lowered, fails here instead of killing a drain on the line."""
    from edge.stop_budget import STOP_BUDGET

    found = re.findall(r"^TimeoutStopSec=(\d+)s?$", unit.read_text(), flags=re.MULTILINE)
    assert len(found) == 1, f"{unit.name}: expected one TimeoutStopSec= line, found {found}"
    timeout_s = float(found[0])
    assert STOP_BUDGET.total_s + 2.0 <= timeout_s, f"{unit.name}: the stop may take {STOP_BUDGET.total_s:g} s, TimeoutStopSec={timeout_s:g}"
