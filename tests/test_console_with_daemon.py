"""The console against a real edge-inspect: a real Mosquitto, the daemon on a small real bundle
inspecting a video, edge-console following it, and Debian's Chromium reading the pages."""

from __future__ import annotations

import json
import signal

import cv2
import numpy as np
import pytest

from tests.conftest import METAL_PLATE, require
from tests.console_helpers import ConsoleProcess
from tests.mqtt_helpers import Subscriber
from tests.test_console import _loaded, _wait, browser, screenshots  # noqa: F401 (fixtures)
from tests.test_daemon_e2e import finish, start_daemon, write_config


def parts_video(path, size: int = 128) -> None:
    """A line as a shift sees it: real MPDD plates, mostly good, some defective, and now and then
    something that is no plate at all (noise: a sure reject). Stored losslessly: MJPEG artefacts
    alone make good plates rejects (bench/compression.py)."""
    good = sorted((require(METAL_PLATE) / "train" / "good").glob("*.png"))[:12]
    defective = sorted(p for p in (METAL_PLATE / "test").glob("*/*.png") if p.parent.name != "good")[::12][:4]
    noise = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    frames = [cv2.resize(cv2.imread(str(p)), (size, size), interpolation=cv2.INTER_AREA) for p in good[:6] + defective[:2] + good[6:] + defective[2:]]
    frames.insert(9, noise)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"png "), 30, (size, size))
    for frame in frames:
        writer.write(frame)
    writer.release()


@pytest.fixture
def line(small_bundle, broker, tmp_path):
    """The daemon inspecting a looping video of real parts, with the live view on."""
    bundle, _ = small_bundle
    video = tmp_path / "cell.avi"
    parts_video(video)
    camera = f"  - station: cell-7\n    source: {{type: file, path: {video}, fps: 10, loop: true}}\n"
    config = write_config(tmp_path / "config.yaml", bundle.path, broker.port, camera, publish="{stats_interval_s: 1, preview_hz: 2, heatmaps: rejects}")
    console = ConsoleProcess(broker.port, tmp_path)
    subscriber = Subscriber(broker.port)
    daemon = start_daemon(config)
    yield bundle, console, subscriber
    daemon.send_signal(signal.SIGTERM)
    finish(daemon, timeout=60)
    subscriber.close()
    assert console.stop() == 0 and not any("Traceback" in line for line in console.log), "\n".join(console.log[-30:])


def test_the_console_shows_a_real_station(line, browser, screenshots):  # noqa: F811 (fixtures)
    from selenium.webdriver.common.by import By

    bundle, console, subscriber = line
    console.wait_for(lambda: subscriber.reached("reject", 2, timeout=0.1), timeout_s=60, what="the daemon's first rejects")

    browser.get(console.url + "/")
    row = 'tr[data-testid="station-row"][data-station="cell-7"]'
    _wait(browser, lambda d: "online" in d.find_element(By.CSS_SELECTOR, row).text, timeout_s=30, what="the station online on the overview")

    def shows_published_rate(d) -> bool:
        """The overview's parts/s and reject rate are those of the station's latest stats."""
        stats = json.loads(subscriber.on("stats")[-1].payload)
        cells = d.find_element(By.CSS_SELECTOR, row)
        fps = cells.find_element(By.CSS_SELECTOR, '[data-testid="station-fps"]').text
        rate = cells.find_element(By.CSS_SELECTOR, '[data-testid="station-reject-rate"]').text
        digits = 2 if stats["reject_rate"] < 0.1 else 1  # as the page writes a percentage
        return stats["fps"] > 0 and fps == f"{stats['fps']:.1f}" and rate == f"{100 * stats['reject_rate']:.{digits}f} %"

    _wait(browser, shows_published_rate, timeout_s=30, what="the station's published parts/s and reject rate on the overview")
    browser.save_screenshot(str(screenshots / "real-overview.png"))

    browser.get(console.url + "/station/cell-7")
    preview = _wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, 'img[data-testid="preview"]'), what="live view")
    _wait(browser, lambda d: _loaded(d, preview) > 0, timeout_s=30, what="the first live picture")
    first = preview.get_attribute("src")
    _wait(browser, lambda d: preview.get_attribute("src") != first and _loaded(d, preview) > 0, timeout_s=30, what="the live view to move on")
    threshold = _wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, '[data-testid="threshold-line"]').get_attribute("data-threshold"), timeout_s=30, what="the threshold line")
    assert abs(float(threshold) - bundle.manifest.thresholds.image) < 1e-4  # the bundle's, as calibrated
    _wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, '[data-testid="strip-item"]')) >= 10, timeout_s=30, what="the strip of recent parts")
    # The last part's verdict, large: the same part and verdict as the strip's last item.
    verdict = browser.find_element(By.CSS_SELECTOR, '[data-testid="last-verdict"]')
    last = browser.find_elements(By.CSS_SELECTOR, '[data-testid="strip-item"]')[-1]
    assert verdict.get_attribute("data-part-id") == last.get_attribute("data-part-id")
    assert verdict.get_attribute("data-verdict") == last.get_attribute("data-verdict") and verdict.text.startswith(last.get_attribute("data-verdict").upper())
    # The live view is throttled, the verdict follows every part: a picture of an earlier part
    # says so in its caption (read in one go, the page moves on twice a second).
    verdict_part, caption, earlier = browser.execute_script(
        "const c = document.getElementById('preview-caption');"
        "return [document.getElementById('verdict').dataset.partId, c.textContent, c.dataset.earlier];"
    )
    assert (earlier == "yes") == (f"part {verdict_part} ·" not in caption) and caption.startswith("picture of an earlier part: ") == (earlier == "yes"), caption
    browser.save_screenshot(str(screenshots / "real-station.png"))

    rejected = {json.loads(m.payload)["part_id"] for m in subscriber.on("reject")}
    browser.get(console.url + "/rejects")
    item = _wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, '[data-testid="gallery-item"]'), timeout_s=30, what="a reject in the gallery")
    assert item.get_attribute("data-part-id") in rejected | {json.loads(m.payload)["part_id"] for m in subscriber.on("reject")}
    image = item.find_element(By.CSS_SELECTOR, '[data-testid="gallery-heatmap"]')
    _wait(browser, lambda d: _loaded(d, image) > 0, timeout_s=30, what="the reject's heatmap")
    browser.save_screenshot(str(screenshots / "real-gallery.png"))
    severe = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert severe == [], severe
