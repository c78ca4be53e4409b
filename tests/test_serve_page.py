"""The page at ``/`` in a real headless browser (Debian's chromium, driven by selenium through
chromedriver): pick a photo, see its class name and the probabilities; the screenshot shows them."""

from __future__ import annotations

import io
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.serve_load import server_process
from tests.test_serve import deploy

pytestmark = pytest.mark.slow

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
ACCENT = np.array([0xB5, 0x65, 0x1D])  # the page's colour of the class name and the bars
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=900,700",
)


@pytest.fixture(scope="module")
def page_url(tmp_path_factory: pytest.TempPathFactory, demo_model_dir: Path) -> Iterator[str]:
    state = tmp_path_factory.mktemp("page-state")
    deploy(state, demo_model_dir)
    command = [sys.executable, "-m", "pipeline.serve", "--port", "0", "--state-dir", str(state)]
    with server_process(command, state / "serve.log") as server:
        yield server.url + "/"


@pytest.fixture(scope="module")
def browser() -> Iterator:
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.skip(
            "Debian's chromium and chromium-driver are not installed (.ci/run installs them)"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def open_page(browser, page_url: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(page_url)
    WebDriverWait(browser, 60).until(
        lambda driver: driver.find_elements(By.CSS_SELECTOR, "#model option")
    )


def pick(browser, photo: Path) -> None:
    """Pick ``photo`` in the page's file input and wait for the answer (or an error)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.find_element(By.ID, "photo").send_keys(str(photo))
    WebDriverWait(browser, 120).until(
        lambda driver: "Classifying" not in driver.find_element(By.ID, "status").text
    )


def accent_pixels(browser, save_as: Path) -> int:
    """Pixels of the screenshot in the page's accent colour; fails on a blank screenshot."""
    screenshot = Image.open(io.BytesIO(browser.get_screenshot_as_png())).convert("RGB")
    screenshot.save(save_as)
    pixels = np.asarray(screenshot).reshape(-1, 3).astype(int)
    # A blank screenshot is one colour (std 0); the page before a photo is picked is about 20.
    assert pixels.std(axis=0).mean() > 5, f"the screenshot is blank: {save_as}"
    return int((np.abs(pixels - ACCENT).max(axis=1) < 24).sum())


def test_a_picked_photo_shows_its_class_and_probabilities(
    browser, page_url: str, demo_data_dir: Path, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    open_page(browser, page_url)
    before = accent_pixels(browser, tmp_path / "before.png")
    pick(browser, demo_data_dir / "eval/1cat/000.jpg")

    assert browser.find_element(By.ID, "class-name").text == "1cat"
    rows = browser.find_elements(By.CSS_SELECTOR, "#probabilities tr")
    names = [row.find_element(By.CLASS_NAME, "name").text for row in rows]
    assert sorted(names) == ["0astronaut", "1cat", "2coffee", "3rocket"] and names[0] == "1cat"
    shares = [float(row.find_element(By.CLASS_NAME, "value").text.rstrip("%")) for row in rows]
    assert shares == sorted(shares, reverse=True) and sum(shares) == pytest.approx(100, abs=0.5)
    bars = [row.find_element(By.CSS_SELECTOR, "div.bar").size["width"] for row in rows]
    assert bars[0] > 10 * bars[-1], f"bar widths {bars} do not follow the probabilities"
    assert browser.find_element(By.ID, "version").text == "version beer@1"
    assert browser.find_element(By.ID, "model").text == "beer-endpoint"
    # Titled by the served model's display name, not by a product name.
    assert browser.find_element(By.ID, "title").text == "beer" and browser.title == "beer"

    # The class name and the probability bars are drawn in the accent colour.
    added = accent_pixels(browser, tmp_path / "after.png") - before
    assert added > 2000, f"only {added} more accent pixels: no class name and bars on the page"


def test_a_file_that_is_no_image_shows_the_servers_error(
    browser, page_url: str, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    fake = tmp_path / "notes.jpg"
    fake.write_text("not a photo")
    open_page(browser, page_url)
    pick(browser, fake)

    status = browser.find_element(By.ID, "status")
    assert "Error 400" in status.text and "not decodable" in status.text
    assert status.get_attribute("class") == "error"
    assert browser.find_element(By.ID, "class-name").text == ""
