"""Shared fixtures: real images from ../shared/datasets and one small real calibration."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

DATASETS = Path(os.environ.get("EDGE_DATASETS", Path(__file__).resolve().parents[2] / "shared" / "datasets"))
METAL_PLATE = DATASETS / "mpdd" / "metal_plate"
TIRE = DATASETS / "mvtec3d" / "tire"
SMALL_SIZE = (64, 64)


def require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"dataset not found at {path} (set EDGE_DATASETS to the shared datasets folder)")
    return path


@pytest.fixture(scope="session", autouse=True)
def _few_threads():
    import torch

    # CI has two cores; more threads than cores only adds contention.
    torch.set_num_threads(2)


@pytest.fixture
def good_folder(tmp_path):
    """20 of MPDD metal_plate's good parts in a folder of the test's own."""
    import shutil

    source = require(METAL_PLATE) / "train" / "good"
    folder = tmp_path / "good"
    folder.mkdir()
    for path in sorted(source.iterdir())[:20]:
        shutil.copy(path, folder / path.name)
    return folder


@pytest.fixture(scope="session")
def small_bundle(tmp_path_factory):
    """A real calibration on MPDD metal_plate's good parts at 64x64 with a short training."""
    from calibration.calibrate import CalibrationSettings, calibrate
    from calibration.train import TrainConfig

    good = require(METAL_PLATE) / "train" / "good"
    out = tmp_path_factory.mktemp("bundle") / "metal_plate"
    settings = CalibrationSettings(
        input_size=SMALL_SIZE,
        train=TrainConfig(epochs=2.0, min_steps_per_scale=60, max_steps_per_scale=60, fiber_batch=512),
    )
    bundle, report = calibrate(good, out, settings, log=lambda message: None)
    return bundle, report


@pytest.fixture
def broker(tmp_path):
    from tests.mqtt_helpers import Broker, find_mosquitto

    if find_mosquitto() is None:
        pytest.skip("mosquitto not installed (apt-get install -y mosquitto; make test installs it)")
    running = Broker(tmp_path).start()
    yield running
    running.stop()


def run_scenario(scenario, *args, **kwargs):
    """A fault scenario from tests/scenarios.py, skipped (with what is missing) where it cannot run."""
    from tests.scenarios import ScenarioUnavailable

    try:
        report = scenario(*args, **kwargs)
    except ScenarioUnavailable as missing:
        pytest.skip(str(missing))
    print(report.to_json())
    return report


@pytest.fixture(autouse=True)
def no_daemon_left_behind():
    """A test that fails before stopping its daemon must not leave it running for the rest of the
    suite (two such daemons kept polling for hours on the bench VM)."""
    yield
    from tests.test_daemon_e2e import STARTED_DAEMONS

    while STARTED_DAEMONS:
        process = STARTED_DAEMONS.pop()
        if process.poll() is None:
            process.kill()
            process.wait(10)
