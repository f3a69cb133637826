"""The web page in headless Chromium against a real `slava serve` on the tiny run:
key, upload, cropped preview, classification, measurements, chat. Saves a screenshot."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from test_serve import KEY, start_server, stop_server, synthetic_png

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SCREENSHOT = Path(__file__).resolve().parents[1] / "test-artifacts" / "web.png"

pytestmark = pytest.mark.skipif(
    not (Path(CHROMIUM).exists() and (Path(CHROMEDRIVER).exists() or shutil.which("chromedriver"))),
    reason="Chromium and chromedriver are not installed (`make browser`)",
)


@pytest.fixture(scope="module")
def server(tiny_run, tmp_path_factory):
    proc, base = start_server(tiny_run, KEY, log=tmp_path_factory.mktemp("web") / "server.log")
    yield base
    stop_server(proc)


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1360,940",
                "--force-device-scale-factor=1"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def test_upload_preview_classify_measure_and_chat(server, browser, tiny_run, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    image = tmp_path / "particles-sem.png"
    image.write_bytes(synthetic_png("particles", 11, size=384))
    wait = WebDriverWait(browser, 60)
    browser.get(server)

    # Without a key the page asks for one; with it, it loads the run's name and labels.
    wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "enter the API key"))
    browser.find_element(By.ID, "api-key").send_keys(KEY)
    browser.find_element(By.CSS_SELECTOR, "#key-form button").click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "ready"))
    assert browser.find_element(By.ID, "model").text == tiny_run.name
    labels = browser.find_element(By.ID, "labels").get_attribute("value")
    assert {s.strip() for s in labels.split(",")} == {"fibres", "particles", "porous_sponges"}

    browser.find_element(By.ID, "file").send_keys(str(image))
    wait.until(ec.visibility_of_element_located((By.ID, "preview-img")))
    wait.until(lambda d: d.execute_script("return document.getElementById('preview-img').naturalWidth") > 0)
    size = browser.execute_script(
        "const i = document.getElementById('preview-img'); return [i.naturalWidth, i.naturalHeight];")
    assert size[0] == 384 and size[1] < 384, "the preview shows the image with its data bar cropped"
    assert "cropped" in browser.find_element(By.ID, "preview-facts").text

    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#ranking li .pct")) == 3)
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#measurements tr")) >= 3)
    assert "particles" in browser.find_element(By.ID, "measurements").text
    # Choosing how particles are found measures and draws again, without an error.
    Select(browser.find_element(By.ID, "particle-method")).select_by_value("contrast")
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#measurements tr")) >= 3)
    assert browser.find_element(By.ID, "measure-empty").get_attribute("hidden") is not None

    question = browser.find_element(By.ID, "question")
    question.send_keys("Describe this micrograph.")
    browser.find_element(By.ID, "send").click()
    done = "#messages .msg.assistant:not(.pending)"
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, done)) == 1)
    first = browser.find_elements(By.CSS_SELECTOR, done)[0].text
    assert first.strip() and "error" not in browser.find_elements(By.CSS_SELECTOR, done)[0].get_attribute("class")

    # A follow-up in the same conversation: a counting question, answered by the measurement toolkit.
    question.send_keys("How many particles are there?")
    browser.find_element(By.ID, "send").click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, done)) == 2)
    second = browser.find_elements(By.CSS_SELECTOR, done)[1]
    assert "measured" in second.text and any(ch.isdigit() for ch in second.text)
    assert [m.text for m in browser.find_elements(By.CSS_SELECTOR, "#messages .msg.user")] == [
        "Describe this micrograph.", "How many particles are there?"]

    SCREENSHOT.parent.mkdir(exist_ok=True)
    # The whole page in one picture: a viewport as tall as the document (headless windows stop at the screen).
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                            {"width": 1360, "height": height, "deviceScaleFactor": 1, "mobile": False})
    browser.execute_script("window.scrollTo(0, 0)")
    browser.save_screenshot(str(SCREENSHOT))
    assert SCREENSHOT.stat().st_size > 10_000
