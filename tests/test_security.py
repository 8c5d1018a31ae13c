"""MQTT security against a real Mosquitto with a TLS listener, client certificates, passwords and
an ACL that confines the daemon to its own topic prefix: the right credentials work, wrong ones
are refused and reported, retried with backoff (not in a tight loop), and never logged."""
from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.mqtt_helpers import Broker, Subscriber, find_mosquitto
from tests.test_daemon_e2e import finish, start_daemon
from tests.scenarios import parts_video

DAEMON_PASSWORD = "s3cret-line-pw"
PLC_PASSWORD = "plc-pw"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _certificate(directory: Path, name: str, ca: str, subject: str, extensions: str | None = None) -> None:
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject, cwd=directory)
    extra = []
    if extensions:
        (directory / f"{name}.ext").write_text(extensions)
        extra = ["-extfile", f"{name}.ext"]
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", *extra, cwd=directory)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    """A CA, the broker's certificate for 127.0.0.1, a client certificate from that CA, and one
    from a rogue CA the broker does not trust."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    directory = tmp_path_factory.mktemp("pki")
    for ca in ("ca", "rogue-ca"):
        _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", f"{ca}.key", "-out", f"{ca}.pem", "-days", "2", "-subj", f"/CN=edge test {ca}", cwd=directory)
    _certificate(directory, "server", "ca", "/CN=localhost", "subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _certificate(directory, "client", "ca", "/CN=edge-inspect-line")
    _certificate(directory, "rogue", "rogue-ca", "/CN=edge-inspect-line")
    return directory


@pytest.fixture
def secure_broker(pki, tmp_path):
    if find_mosquitto() is None or shutil.which("mosquitto_passwd") is None:
        pytest.skip("mosquitto not installed (apt-get install -y mosquitto; make test installs it)")
    passwords = tmp_path / "passwd"
    passwords.touch()
    for user, password in (("line", DAEMON_PASSWORD), ("plc", PLC_PASSWORD)):
        subprocess.run(["mosquitto_passwd", "-b", str(passwords), user, password], check=True, capture_output=True)
    acl = tmp_path / "acl"
    # The daemon of station "line" may only touch its own prefix; the PLC reads every station.
    acl.write_text("user line\ntopic readwrite edge/line/#\n\nuser plc\ntopic readwrite edge/#\n")
    listener = (
        f"allow_anonymous false\npassword_file {passwords}\nacl_file {acl}\n"
        f"cafile {pki / 'ca.pem'}\ncertfile {pki / 'server.pem'}\nkeyfile {pki / 'server.key'}\n"
        "require_certificate true\nlog_type all\nuser root\n"
    )
    broker = Broker(tmp_path, listener=listener).start()
    yield broker
    broker.stop()


def _plc(broker: Broker, pki: Path) -> Subscriber:
    return Subscriber(
        broker.port, username="plc", password=PLC_PASSWORD,
        tls={"ca_certs": str(pki / "ca.pem"), "certfile": str(pki / "client.pem"), "keyfile": str(pki / "client.key")},
    )


def _config(tmp_path: Path, bundle: Path, port: int, pki: Path, password: str, client_cert: str = "client", station: str = "line", camera: str | None = None) -> Path:
    password_file = tmp_path / "mqtt_password"
    password_file.write_text(password + "\n")
    password_file.chmod(0o600)
    camera = camera or f"  - station: {station}\n    source: {{type: folder, path: {tmp_path / 'inbox'}}}\n"
    (tmp_path / "inbox").mkdir(exist_ok=True)
    config = tmp_path / f"config-{station}.yaml"
    config.write_text(
        f"bundle: {bundle}\nstate_dir: {tmp_path / 'state'}\n"
        f"mqtt:\n  host: 127.0.0.1\n  port: {port}\n  username: line\n  password_file: {password_file}\n"
        f"  tls: {{ca_file: {pki / 'ca.pem'}, cert_file: {pki / (client_cert + '.pem')}, key_file: {pki / (client_cert + '.key')}}}\n"
        f"publish: {{results: true, heatmaps: none, stats_interval_s: 1}}\ncameras:\n{camera}"
    )
    return config


def _connection_attempts(broker: Broker) -> int:
    """Mosquitto logs a connection that gets past TLS as "New connection from", and one whose
    handshake fails (after the first) as "Client connection from ... failed: ... verify failed"."""
    text = broker.log.read_text(errors="replace")
    return len(re.findall(r"New connection from|Client connection from \S+ failed: .*certificate verify failed", text))


def test_tls_with_client_certificate_and_password_delivers_rejects(small_bundle, secure_broker, pki, tmp_path):
    bundle, _ = small_bundle
    video = tmp_path / "line.avi"
    parts_video(video, 40, bundle.manifest.input_size)
    plc = _plc(secure_broker, pki)
    camera = f"  - station: line\n    source: {{type: file, path: {video}}}\n"
    output = finish(start_daemon(_config(tmp_path, bundle.path, secure_broker.port, pki, DAEMON_PASSWORD, camera=camera)))
    results = plc.wait_for("result", 40, timeout=30)
    assert sorted(int(json.loads(m.payload)["part_id"]) for m in results) == list(range(40))
    assert plc.on("reject"), "the small bundle rejects some MPDD defects; none arrived over TLS"
    assert [m.payload for m in plc.on("status")][-1] == b"offline"
    plc.close()
    assert DAEMON_PASSWORD not in output and DAEMON_PASSWORD not in secure_broker.log.read_text(errors="replace")


def test_acl_confines_a_daemon_to_its_own_prefix(small_bundle, secure_broker, pki, tmp_path):
    """A daemon with the line's credentials but configured as another station publishes nothing
    that reaches the PLC: the broker's ACL, not the daemon's good manners, keeps stations apart."""
    bundle, _ = small_bundle
    video = tmp_path / "press.avi"
    parts_video(video, 10, bundle.manifest.input_size)
    plc = _plc(secure_broker, pki)
    camera = f"  - station: press\n    source: {{type: file, path: {video}}}\n"
    finish(start_daemon(_config(tmp_path, bundle.path, secure_broker.port, pki, DAEMON_PASSWORD, station="press", camera=camera)))
    time.sleep(1.0)
    assert not [m for m in plc.messages if m.topic.startswith("edge/press/")]
    assert "Denied PUBLISH" in secure_broker.log.read_text(errors="replace")
    plc.close()


@pytest.mark.parametrize("fault", ["wrong password", "certificate from an untrusted CA"])
def test_wrong_credentials_are_refused_reported_and_not_retried_in_a_tight_loop(fault, small_bundle, secure_broker, pki, tmp_path):
    bundle, _ = small_bundle
    if fault == "wrong password":
        config = _config(tmp_path, bundle.path, secure_broker.port, pki, "not-the-password")
        expected = "broker refused the connection"
    else:
        config = _config(tmp_path, bundle.path, secure_broker.port, pki, DAEMON_PASSWORD, client_cert="rogue")
        expected = "could not connect to the broker"
    process = start_daemon(config)
    started = time.monotonic()
    time.sleep(10)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=60)
    attempts = _connection_attempts(secure_broker)
    elapsed = time.monotonic() - started
    assert expected in output, output
    # Backoff from 1 s doubling to 2 s: about 6 attempts in 10 s. A tight loop would make
    # hundreds; the bound leaves room for a slow machine either way.
    assert 2 <= attempts <= 20, f"{attempts} connection attempts in {elapsed:.0f} s"
    assert "not-the-password" not in output and DAEMON_PASSWORD not in output
