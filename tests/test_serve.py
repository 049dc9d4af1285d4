"""`visiontales serve`: both flows driven in a real headless Chromium (selenium, Debian's chromium and
chromium-driver), asserting on what the page shows."""

import os
import shutil
import socket

import numpy as np
import pytest
import torch
from PIL import Image
from test_storyteller import STORY, _batch

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
DRIVER = shutil.which("chromedriver")
# CI sets VISIONTALES_REQUIRE_BROWSER=1 (and installs both): there these tests run, never skip
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER) and not os.environ.get("VISIONTALES_REQUIRE_BROWSER"),
                                reason="needs chromium and chromium-driver (apt-get install chromium chromium-driver)")
FIRST = "Fred and Barney are talking in the quarry."
WAIT = 120  # seconds: CPU drawing on a busy 2-core machine


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    """The app on a free localhost port over a storyteller that tells STORY, a tiny captioner and
    a tiny LoRA visualizer."""
    from visiontales.models.captioner import SAGANetsCaptioner
    from visiontales.models.lora_diffusion import LoRADiffusionVisualizer
    from visiontales.models.storyteller import CLIPStoryteller
    from visiontales.serve import StoryApp, launch

    torch.manual_seed(0)
    storyteller = CLIPStoryteller(gpt2="tiny", conditioning="prompt", lr=3e-3, max_new_tokens=40)
    optimizer = storyteller.configure_optimizers()
    for _ in range(60):
        loss = storyteller.loss(_batch([STORY]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    app = StoryApp(storyteller.eval(), SAGANetsCaptioner(gpt2="tiny", max_new_tokens=12).eval(),
                   LoRADiffusionVisualizer(sd="tiny", resolution=32, num_inference_steps=3, guidance_scale=1.0).eval())
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    port = _free_port()
    blocks = launch(app, "127.0.0.1", port, block=False)
    yield f"http://127.0.0.1:{port}"
    blocks.close()


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1600"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


def _wait(browser, condition, timeout=WAIT):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, timeout, poll_frequency=0.25).until(lambda _: condition())


def _text(browser, elem_id: str) -> str:
    from selenium.webdriver.common.by import By

    return browser.find_element(By.ID, elem_id).text


def _tab(browser, name: str) -> None:
    """Open the page's tab `name` once the page has rendered."""
    from selenium.webdriver.common.by import By

    _wait(browser, lambda: [b for b in browser.find_elements(By.CSS_SELECTOR, "button[role=tab]")
                            if b.text.strip() == name], timeout=60)[0].click()


def test_photos_to_story_in_the_browser(server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    photos = []
    for i in range(3):
        photos.append(tmp_path / f"photo{i}.{('jpg', 'png', 'webp')[i]}")
        Image.fromarray(np.full((48, 64, 3), 60 * i, dtype=np.uint8)).save(photos[-1])
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    browser.get(server)
    _tab(browser, "Photos to story")
    upload = browser.find_element(By.CSS_SELECTOR, "#photos input[type=file]")

    browser.find_element(By.ID, "tell").click()  # nothing uploaded
    _wait(browser, lambda: "error: three photos are needed" in _text(browser, "tell-status"))

    upload.send_keys("\n".join(str(p) for p in [*photos[:2], tmp_path / "broken.jpg"]))
    _wait(browser, lambda: len(browser.find_elements(By.CSS_SELECTOR, "#photos tbody tr")) == 3)
    browser.find_element(By.ID, "tell").click()
    _wait(browser, lambda: "broken.jpg" in _text(browser, "tell-status") and "error:" in _text(browser, "tell-status"))

    browser.find_element(By.CSS_SELECTOR, "#photos button[aria-label='Clear']").click()
    upload = browser.find_element(By.CSS_SELECTOR, "#photos input[type=file]")
    upload.send_keys("\n".join(str(p) for p in photos))
    _wait(browser, lambda: len(browser.find_elements(By.CSS_SELECTOR, "#photos tbody tr")) == 3)
    browser.find_element(By.ID, "tell").click()
    story = browser.find_element(By.CSS_SELECTOR, "#story textarea")
    _wait(browser, lambda: story.get_attribute("value"))
    assert story.get_attribute("value") == " ".join(STORY)  # three sentences
    assert len(browser.find_elements(By.CSS_SELECTOR, "#tell-photos img")) == 3  # shown beside it
    browser.save_screenshot(str(tmp_path / "tell.png"))


def test_story_to_pictures_in_the_browser(server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    browser.get(server)
    _tab(browser, "Story to pictures")
    from selenium.webdriver.common.keys import Keys

    captions = browser.find_element(By.CSS_SELECTOR, "#captions textarea")
    captions.send_keys(Keys.CONTROL, "a")
    captions.send_keys(Keys.DELETE)  # typed, so that the page sees the caption go
    browser.find_element(By.ID, "draw").click()  # an empty caption
    _wait(browser, lambda: "error: type a first caption" in _text(browser, "draw-status"))

    captions.send_keys(FIRST)
    frames = browser.find_element(By.CSS_SELECTOR, "#frames input[type=number]")
    frames.clear()
    frames.send_keys("3")
    browser.find_element(By.ID, "draw").click()
    _wait(browser, lambda: "done: 3 frames" in _text(browser, "draw-status"))
    assert len(browser.find_elements(By.CSS_SELECTOR, "#board .thumbnail-item img")) == 3
    shown = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#board .caption-label")]
    assert len(shown) == 3 and shown[0] == FIRST and all(shown)  # N frames with N captions, the given one first
    files = [e.get_attribute("aria-label") for e in browser.find_elements(By.CSS_SELECTOR, "#downloads td.filename")]
    assert files == ["storyboard.png", "story.json"]
    browser.save_screenshot(str(tmp_path / "draw.png"))
