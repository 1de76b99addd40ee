"""The review page in a real browser: headless Chromium (Debian's package) driven by Selenium.

The browser and its driver come from `scripts/install_browser.sh` (which `.ci/run` runs); nothing
is downloaded here. Without them these tests fail and say what to run: they are never skipped.
"""

from __future__ import annotations

import os
import shutil
import time

import pytest

from detector.review_server import Workbench, running
from tests.conftest import HOSTILE_TITLE, copy_scan

TOKEN = "browser-token-456"


def _binary(env: str, *names: str) -> str | None:
    return os.environ.get(env) or next((found for name in names if (found := shutil.which(name))), None)


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium = _binary("COUNTERFEIT_CHROMIUM", "chromium", "chromium-browser")
    driver_path = _binary("COUNTERFEIT_CHROMEDRIVER", "chromedriver")
    if not chromium or not driver_path:
        pytest.fail("the browser tests need Debian's chromium and chromium-driver: run `sh scripts/install_browser.sh`"
                    " (or set COUNTERFEIT_CHROMIUM and COUNTERFEIT_CHROMEDRIVER)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(argument)
    started = []

    def start():
        driver = webdriver.Chrome(service=Service(driver_path), options=options)
        driver.set_page_load_timeout(60)
        started.append(driver)
        return driver

    yield start
    for driver in started:
        driver.quit()


@pytest.fixture
def server(review_scan, tmp_path):
    """The workbench on a private copy of the scan, served by uvicorn on a free port."""
    bench = Workbench(copy_scan(review_scan, tmp_path / "scan"), TOKEN)
    with running(bench) as url:
        yield url, bench
    bench.store.close()


def wait_for(driver, condition, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = condition(driver)
            if value:
                return value
        except Exception:  # noqa: BLE001 - the page is still building
            pass
        time.sleep(0.1)
    raise AssertionError(f"timed out; page shows: {driver.find_element('tag name', 'body').text[:500]}")


def text(driver, element_id):
    return driver.find_element("id", element_id).text


def press(driver, key):
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(driver).send_keys(key).perform()


def test_a_reviewer_labels_with_the_keyboard_and_the_labels_survive_a_reload(browser, server):
    url, bench = server
    driver = browser()
    driver.get(f"{url}/?token={TOKEN}")
    assert "token" not in driver.current_url  # the token leaves the address bar once the cookie is set
    total = len(bench.queue.items)
    wait_for(driver, lambda d: text(d, "progress-text") == f"0 of {total} labelled")
    first, second = bench.queue.items[0]["listing_id"], bench.queue.items[1]["listing_id"]
    assert text(driver, "position") == f"1 / {total}" and first in text(driver, "heading")
    assert driver.find_elements("css selector", "#photo-frame svg.region polygon")  # the matched region is drawn

    press(driver, "c")  # no reviewer name yet: nothing is saved, and the page says why
    wait_for(driver, lambda d: "type your name" in text(d, "status"))
    assert bench.store.latest() == {}
    driver.find_element("id", "reviewer").send_keys("ann\n")
    press(driver, "c")
    wait_for(driver, lambda d: text(d, "progress-text") == f"1 of {total} labelled")
    assert second in text(driver, "heading")  # labelling moves on
    press(driver, "g")
    wait_for(driver, lambda d: text(d, "progress-text") == f"2 of {total} labelled")
    press(driver, "k")
    assert second in text(driver, "heading") and text(driver, "current-label") == "genuine (ann)"
    press(driver, "u")  # a change of mind is a new label; the latest counts
    wait_for(driver, lambda d: f"saved: {second} unsure" in text(d, "status"))
    assert {k: v.label for k, v in bench.store.latest().items()} == {first: "counterfeit", second: "unsure"}

    driver.refresh()
    wait_for(driver, lambda d: text(d, "progress-text") == f"2 of {total} labelled")
    assert text(driver, "position") == f"3 / {total}"  # it opens on the first unlabelled listing
    press(driver, "k")
    press(driver, "k")
    assert first in text(driver, "heading") and text(driver, "current-label") == "counterfeit (ann)"
    assert driver.find_element("id", "photo").get_attribute("naturalWidth") != "0"  # the photo loaded
    errors = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
    assert errors == []  # no script error, no resource the policy blocked


def test_listing_text_is_shown_as_text_and_filters_narrow_the_queue(browser, server):
    url, bench = server
    driver = browser()
    driver.get(f"{url}/?token={TOKEN}")
    hostile = next(i for i in bench.queue.items if i["title"] == HOSTILE_TITLE)
    wait_for(driver, lambda d: "labelled" in text(d, "progress-text"))
    for _ in range(bench.queue.items.index(hostile)):
        press(driver, "j")
    wait_for(driver, lambda d: hostile["listing_id"] in text(d, "heading"))
    assert HOSTILE_TITLE in text(driver, "facts")
    assert driver.find_elements("id", "injected") == []

    from selenium.webdriver.support.ui import Select

    brand = bench.queue.items[0]["brand"]
    Select(driver.find_element("id", "brand")).select_by_value(brand)
    expected = sum(item["brand"] == brand for item in bench.queue.items)
    wait_for(driver, lambda d: text(d, "progress-text") == f"0 of {expected} labelled")
    Select(driver.find_element("id", "section")).select_by_value("sample")
    both = sum(item["brand"] == brand and item["review_id"] is not None for item in bench.queue.items)
    wait_for(driver, lambda d: text(d, "progress-text") == f"0 of {both} labelled")
    press(driver, "c")  # the filter handed the keys back to the page
    wait_for(driver, lambda d: "type your name" in text(d, "status"))


def test_a_page_opened_without_the_token_shows_nothing(browser, server):
    url, bench = server
    driver = browser()
    driver.get(url)
    body = driver.find_element("tag name", "body").text
    assert "Sign-in needed" in body
    assert not any(item["listing_id"] in body for item in bench.queue.items)
    assert driver.find_elements("id", "item") == []
    driver.get(f"{url}/api/queue")
    assert "missing or wrong token" in driver.find_element("tag name", "body").text
