"""The web page in a real browser: headless Chromium (the distribution's ``chromium`` and ``chromium-driver``,
driven by Selenium) opens ``GET /`` of a uvicorn server on 127.0.0.1, uploads a recording and must show the
top-k bars, the waveform, the log-mel spectrogram, the timeline and the feature maps; an upload that is not audio
must show the server's reason. A screenshot is kept under the test's tmp folder (and copied to
``$AUDIO_SSL_SERVE_SCREENSHOT`` when that is set, how ``docs/serve_screenshot.png`` is made).

Skipped, with the reason, only when no Chromium/chromedriver is installed; CI installs them (``.ci/run``)."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
import soundfile as sf
from serve_helpers import tone

from audio_ssl.serve.app import ServeSettings, create_app
from audio_ssl.serve.model import ServedModel

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
DRIVERS = ("chromedriver",)
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                  "--disable-extensions", "--window-size=1280,1700", "--hide-scrollbars")


def _find(names) -> str | None:
    return next((path for path in map(shutil.which, names) if path), None)


@pytest.fixture(scope="module")
def server(resnet_checkpoint):
    """uvicorn serving the tiny ResNet on 127.0.0.1 (a free port), in a thread of this process."""
    import uvicorn

    app = create_app(ServedModel(resnet_checkpoint), ServeSettings())
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, log_level="warning", timeout_keep_alive=5)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    yield base
    server.should_exit = True
    thread.join(10)
    sock.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    binary, driver_path = _find(BROWSERS), _find(DRIVERS)
    if binary is None or driver_path is None:
        pytest.skip("no Chromium and chromedriver installed (apt-get install chromium chromium-driver; CI does)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def _wait(driver, condition, what: str, timeout: float = 30.0):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(condition, message=f"page never showed {what}")


DISTINCT_COLOURS = """
const c = document.querySelector(arguments[0]);
const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
const seen = new Set();
for (let i = 0; i < d.length; i += 4 * 7) seen.add(d[i] + ',' + d[i + 1] + ',' + d[i + 2]);
return seen.size;
"""


def test_page_uploads_a_clip_and_draws_what_the_model_hears(server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    clip = tmp_path / "street.wav"
    sf.write(clip, tone(3.0, 44100, channels=2, seed=1), 44100)
    expected = httpx.post(f"{server}/v1/classify", files={"file": ("street.wav", clip.read_bytes())}).json()

    browser.get(server + "/")
    _wait(browser, lambda d: "classes" in d.find_element(By.ID, "model-line").text, "the model line")
    browser.find_element(By.ID, "file-input").send_keys(str(clip))
    _wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#topk .bar")) == 5, "five top-k bars")
    _wait(browser, lambda d: d.find_element(By.ID, "spectrogram").get_attribute("data-drawn") == "true",
          "the spectrogram")
    _wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#maps canvas")) == 3, "three feature maps")
    _wait(browser, lambda d: "answered" in d.find_element(By.ID, "status").text, "the status line")

    bars = browser.find_elements(By.CSS_SELECTOR, "#topk .bar")
    names = [bar.find_element(By.CSS_SELECTOR, ".label span").text for bar in bars]
    assert names == [c["class"] for c in expected["top_k"]]
    widths = [float(bar.find_element(By.CSS_SELECTOR, ".fill").get_attribute("style").split("width:")[1].split("%")[0])
              for bar in bars]
    assert widths == pytest.approx([100 * c["confidence"] for c in expected["top_k"]], abs=0.06)
    assert widths == sorted(widths, reverse=True) and widths[0] > 0
    assert browser.find_element(By.ID, "waveform").get_attribute("data-drawn") == "true"
    assert browser.execute_script(DISTINCT_COLOURS, "#spectrogram") > 20  # a picture, not a blank canvas
    assert browser.execute_script(DISTINCT_COLOURS, "#waveform") >= 2
    assert len(browser.find_elements(By.CSS_SELECTOR, "#timeline canvas")) == 5  # 3 s: 5 windows, 5 classes
    assert "stage2" in browser.find_element(By.ID, "maps").text
    assert "street.wav" in browser.find_element(By.ID, "status").text

    shot = tmp_path / "serve_page.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
    if os.environ.get("AUDIO_SSL_SERVE_SCREENSHOT"):
        target = Path(os.environ["AUDIO_SSL_SERVE_SCREENSHOT"])
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, target)

    bad = tmp_path / "notes.wav"
    bad.write_bytes(b"not audio at all " * 50)
    browser.find_element(By.ID, "file-input").send_keys(str(bad))
    _wait(browser, lambda d: "error" in d.find_element(By.ID, "status").get_attribute("class"), "the error")
    assert "notes.wav" in browser.find_element(By.ID, "status").text
    assert "format" in browser.find_element(By.ID, "status").text


def test_api_docs_render_offline(server, browser):
    """Swagger UI comes from the server itself (fastapi-offline's bundle) and renders the three endpoints."""
    from selenium.webdriver.common.by import By

    browser.get(server + "/docs")
    _wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".opblock")) >= 3, "the API operations")
    text = browser.find_element(By.TAG_NAME, "body").text
    assert "/v1/classify" in text and "/v1/model" in text and "/healthz" in text
    scripts = browser.execute_script("return [...document.scripts].map(s => s.src).filter(Boolean)")
    assert scripts and all(src.startswith(server) for src in scripts)
