"""SIGHUP: a re-calibrated bundle replaces the running one without dropping the MQTT session,
and a broken one is refused while inspection goes on with the old."""
from __future__ import annotations

import dataclasses
import json
import shutil
import signal
import time

from engines.bundle import write_bundle
from tests.mqtt_helpers import Subscriber
from tests.test_daemon_e2e import finish, start_daemon, write_config
from tests.scenarios import parts_video


def _recalibrated(bundle, destination, image_threshold: float):
    """The same flows with another image threshold, written the way edge-calibrate --force
    replaces a bundle in place (atomically, new manifest, new bundle id)."""
    thresholds = dataclasses.replace(bundle.manifest.thresholds, image=image_threshold)
    manifest = dataclasses.replace(bundle.manifest, thresholds=thresholds)

    def copy_payload(directory):
        for name in bundle.manifest.files:
            shutil.copy2(bundle.file(name), directory / name)

    return write_bundle(destination, manifest, copy_payload, force=True)


def _results(subscriber) -> list[dict]:
    return [json.loads(m.payload) for m in subscriber.on("result")]


def _wait(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _line(bundle, broker, tmp_path, fps: int):
    """A copy of the bundle where edge-calibrate --force would replace it, a looping video of
    parts at `fps`, a subscriber and the config; returns (live path, first bundle, subscriber, config)."""
    live = tmp_path / "bundles" / "line"
    first = _recalibrated(bundle, live, bundle.manifest.thresholds.image)
    video = tmp_path / "line.avi"
    parts_video(video, 40, bundle.manifest.input_size)
    subscriber = Subscriber(broker.port)
    camera = f"  - station: line\n    source: {{type: file, path: {video}, loop: true, fps: {fps}}}\n"
    config = write_config(tmp_path / "config.yaml", live, broker.port, camera, publish="{results: true, heatmaps: none, stats_interval_s: 1}")
    return live, first, subscriber, config


def test_sighup_swaps_in_a_recalibrated_bundle_without_reconnecting(small_bundle, broker, tmp_path):
    bundle, _ = small_bundle
    live, first, subscriber, config = _line(bundle, broker, tmp_path, fps=20)
    process = start_daemon(config)
    try:
        _wait(lambda: len(_results(subscriber)) >= 10, 60, "the first results")
        assert {r["bundle_id"] for r in _results(subscriber)} == {first.bundle_id}

        # Re-calibrated with a threshold below every score: after the swap every part is a reject.
        second = _recalibrated(bundle, live, -1e9)
        assert second.bundle_id != first.bundle_id
        process.send_signal(signal.SIGHUP)
        _wait(lambda: sum(r["bundle_id"] == second.bundle_id for r in _results(subscriber)) >= 10, 60, "results from the new bundle")

        # A broken re-calibration is refused; the running bundle stays.
        (live / "flows.onnx").write_bytes(b"truncated by a full disk")
        process.send_signal(signal.SIGHUP)
        seen = len(_results(subscriber))
        _wait(lambda: len(_results(subscriber)) >= seen + 10, 60, "results after the refused reload")
    finally:
        process.send_signal(signal.SIGTERM)
        output = finish(process)
    subscriber.close()

    results = _results(subscriber)
    ids = [r["bundle_id"] for r in results]
    switch = ids.index(second.bundle_id)
    assert set(ids[:switch]) == {first.bundle_id} and set(ids[switch:]) == {second.bundle_id}, "parts were inspected by the old bundle after the new one took over"
    assert all(r["verdict"] == "reject" for r in results[switch:]), "the new bundle's threshold is not the one deciding"
    assert any(r["verdict"] == "pass" for r in results[:switch]), "the first bundle should pass some good parts"
    part_ids = [int(r["part_id"]) for r in results]
    assert part_ids == sorted(part_ids) and len(set(part_ids)) == len(part_ids)
    # One MQTT session throughout: a reconnect would have published "online" again.
    statuses = [m.payload for m in subscriber.on("status")]
    assert statuses.count(b"online") == 1 and statuses[-1] == b"offline", statuses
    assert "reloaded bundles: " + second.bundle_id in output
    assert "reload failed, keeping the current bundles" in output and "flows.onnx" in output


SLOW_RELOAD_LAUNCHER = """
import sys, time
from edge import daemon
real = daemon.load_engines
calls = []
def slow_after_the_first(*args, **kwargs):
    calls.append(1)
    if len(calls) > 1:
        print("slowed this reload", flush=True)
        time.sleep(8)  # a TensorRT plan build for the new bundle takes minutes
    return real(*args, **kwargs)
daemon.load_engines = slow_after_the_first
from edge.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_slow_reload_keeps_the_watchdog_fed_and_parts_inspected(small_bundle, broker, tmp_path):
    """While a new bundle loads (8 s here; minutes for a TensorRT build) systemd's watchdog keeps
    being fed and the old bundle keeps inspecting; then the new one takes over."""
    from tests.scenarios import NotifyListener

    bundle, _ = small_bundle
    live, first, subscriber, config = _line(bundle, broker, tmp_path, fps=10)
    listener = NotifyListener()
    process = start_daemon(config, env=listener.env(2.0), launcher=SLOW_RELOAD_LAUNCHER)
    try:
        _wait(lambda: len(_results(subscriber)) >= 5, 60, "the first results")
        second = _recalibrated(bundle, live, -1e9)
        process.send_signal(signal.SIGHUP)
        _wait(lambda: any(m.startswith("RELOADING=1") for _, m in listener.messages), 10, "RELOADING=1")
        reloading_at = max(listener.times("RELOADING=1"))
        results_before = len(_results(subscriber))
        _wait(lambda: any(r["bundle_id"] == second.bundle_id for r in _results(subscriber)), 60, "results from the new bundle")
        ready_again = [t for t in listener.times("READY=1") if t > reloading_at]
    finally:
        process.send_signal(signal.SIGTERM)
        output = finish(process)
        listener.close()
    assert ready_again, "READY=1 was not sent after the reload"
    pings = [t for t in listener.times("WATCHDOG=1") if reloading_at < t < ready_again[0]]
    assert "slowed this reload" in output, "the reload was not slowed: the test proves nothing"
    assert len(pings) >= 3, f"{len(pings)} watchdog pings during an 8 s reload: systemd would have killed the daemon"
    monotonic = [m for _, m in listener.messages if m.startswith("MONOTONIC_USEC=")]
    assert monotonic and int(monotonic[0].split("=")[1]) > 0, "RELOADING=1 came without MONOTONIC_USEC"
    during = [r for r in _results(subscriber)[results_before:] if r["bundle_id"] == first.bundle_id]
    assert len(during) >= 20, f"only {len(during)} parts inspected by the old bundle during an 8 s reload"
    assert "Traceback" not in output


def test_sighup_reloads_the_bundle_of_every_recipe(small_bundle, broker, tmp_path):
    """A product not running at the reload gets its new bundle too: switching to it after the
    SIGHUP inspects with the re-calibrated one, never the one loaded at start."""
    bundle, _ = small_bundle
    threshold = bundle.manifest.thresholds.image
    a_live, b_live = tmp_path / "bundles" / "a", tmp_path / "bundles" / "b"
    a1, b1 = _recalibrated(bundle, a_live, threshold), _recalibrated(bundle, b_live, threshold * 1.01)
    video = tmp_path / "line.avi"
    parts_video(video, 40, bundle.manifest.input_size)
    subscriber = Subscriber(broker.port)
    camera = f"  - station: line\n    recipes: {{A: {a_live}, B: {b_live}}}\n    recipe: A\n    source: {{type: file, path: {video}, loop: true, fps: 20}}\n"
    config = write_config(tmp_path / "config.yaml", a_live, broker.port, camera, publish="{results: true, heatmaps: none, stats_interval_s: 1}")
    process = start_daemon(config)
    try:
        _wait(lambda: len(_results(subscriber)) >= 5, 60, "the first results")
        a2, b2 = _recalibrated(bundle, a_live, threshold * 0.99), _recalibrated(bundle, b_live, -1e9)
        process.send_signal(signal.SIGHUP)
        _wait(lambda: any(r["bundle_id"] == a2.bundle_id for r in _results(subscriber)), 60, "results from A's new bundle")
        subscriber.client.publish("edge/line/recipe", "B", qos=1, retain=True).wait_for_publish(5)
        _wait(lambda: sum(r["bundle_id"] == b2.bundle_id for r in _results(subscriber)) >= 5, 60, "results from B's new bundle")
    finally:
        process.send_signal(signal.SIGTERM)
        finish(process)
    subscriber.close()
    results = _results(subscriber)
    assert {r["bundle_id"] for r in results} == {a1.bundle_id, a2.bundle_id, b2.bundle_id}  # b1 was reloaded before it was ever used
    assert all(r["recipe"] == "B" and r["verdict"] == "reject" for r in results if r["bundle_id"] == b2.bundle_id)
    assert all(r["recipe"] == "A" for r in results if r["bundle_id"] != b2.bundle_id)
    assert len({a1.bundle_id, b1.bundle_id, a2.bundle_id, b2.bundle_id}) == 4
