"""Test helper: open a page in a fresh headless Chromium (Debian `chromium` + `chromium-driver`, see `make browser`),
wait until given texts show, optionally expand MLflow's nested runs and save a screenshot; the browser always quits.

A fresh profile (its own --user-data-dir) means no localStorage: the page shows what a new user sees.
"""
from __future__ import annotations

import shutil
import tempfile
import time

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-dev-shm-usage"]
# MLflow's runs table: a parent run's name cell holds a button that shows (or hides) its child runs.
NESTED_EXPANDER = "div[role=row] button[data-component-id*=runnamecellrenderer]"


def available() -> bool:
    return bool(shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER))


def open_page(url: str, expect: list[str], screenshot: str | None = None, expand_nested: bool = False,
              timeout: float = 60, size: tuple[int, int] = (1600, 1000)) -> str:
    """The page's visible text once every string in `expect` is in it (AssertionError naming the missing ones after
    `timeout` s). expand_nested clicks each parent run's expander once, as rows appear. The screenshot (PNG) is
    saved on success and on failure."""
    from selenium import webdriver
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="sslscale-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in FLAGS + [f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}"]:
        opts.add_argument(flag)
    driver = webdriver.Chrome(options=opts, service=Service(CHROMEDRIVER))
    try:
        driver.set_page_load_timeout(timeout)
        driver.set_script_timeout(10)
        deadline = time.time() + timeout
        driver.get(url)
        expanded: set[str] = set()
        text, missing = "", list(expect)
        while time.time() < deadline:
            try:
                if expand_nested:
                    _expand_new(driver, expanded)
                text = driver.execute_script("return document.body ? document.body.innerText : ''") or ""
            except WebDriverException:  # the page re-rendered under us: look again
                pass
            missing = [s for s in expect if s not in text]
            if not missing:
                time.sleep(0.5)  # let the last rows paint before the picture
                break
            time.sleep(0.5)
        if screenshot:
            driver.save_screenshot(screenshot)
        assert not missing, (f"{url}: after {timeout:.0f} s the page lacks {missing}; it shows:\n{text[:2000]}")
        return text
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _expand_new(driver, expanded: set[str]) -> None:
    """Click the expander of each run row not clicked yet (a second click would collapse it again)."""
    from selenium.webdriver.common.by import By

    for button in driver.find_elements(By.CSS_SELECTOR, NESTED_EXPANDER):
        row = button.find_element(By.XPATH, "ancestor::div[@role='row'][1]").get_attribute("row-id")
        if row and row not in expanded:
            button.click()
            expanded.add(row)
