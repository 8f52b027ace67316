"""Drive the app in a real browser: Debian's Chromium through chromium-driver, with Selenium.

Used by the browser test and by ``tools.app_tour`` (screenshots, click-to-gallery time). Nothing
is downloaded: the browser and its driver are the Debian packages `make` installs (README), and
Selenium is pointed at them, so its own driver manager never runs.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
# an offline machine refuses Chromium's background connections: keep them from being made
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                  "--window-size=1400,1000")


def missing_browser() -> str | None:
    """Why the browser cannot run here (and how to fix it), or None."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not Path(path).exists():
            return (f"{path} is missing: install Debian's chromium and chromium-driver as root "
                    "(`make browser`, which `make test` runs)")
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def app_server(model: Path, data: Path | None, port: int | None = None, timeout: float = 180):
    """``python app.py`` in a subprocess; yields (url, process) once the page answers."""
    port = port or free_port()
    cmd = [sys.executable, str(ROOT / "app.py"), "--model", str(model), "--port", str(port),
           "--device", "cpu"] + (["--data", str(data)] if data else [])
    log = tempfile.TemporaryFile(mode="w+")
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + timeout
        while True:
            if proc.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"app.py exited {proc.returncode}:\n{log.read()}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(url, timeout=5) as reply:
                    if reply.status == 200:
                        break
            if time.time() > deadline:
                raise TimeoutError(f"app.py did not answer on {url} in {timeout} s")
            time.sleep(0.5)
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@contextlib.contextmanager
def chromium():
    """A headless Chromium under Selenium, with its own empty profile, closed afterwards."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    problem = missing_browser()
    if problem:
        raise RuntimeError(problem)
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


# ----------------------------------------------------------------------------- page actions


def wait_for(page, condition, timeout: float = 120, what: str = "the page"):
    """Poll ``condition(page)`` until it returns something truthy; returns that."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        with contextlib.suppress(Exception):
            value = condition(page)
            if value:
                return value
        time.sleep(0.2)
    raise TimeoutError(f"waited {timeout} s for {what}")


def by_css(page, selector: str):
    from selenium.webdriver.common.by import By

    return page.find_element(By.CSS_SELECTOR, selector)


def click(page, element, timeout: float = 30) -> None:
    """Click as a person does: bring the element to the middle of the window first, and if
    something lies over it for a moment (a toast, a row still laying out) try again until it
    does not, rather than failing on the first "element click intercepted"."""
    page.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)

    def clicked(_):
        element.click()
        return True

    wait_for(page, clicked, timeout, "a clickable element")


def click_tab(page, name: str) -> None:
    from selenium.webdriver.common.by import By

    tab = wait_for(page, lambda p: [b for b in p.find_elements(By.CSS_SELECTOR, "[role=tab]")
                                    if b.text.strip() == name], what=f"the {name} tab")[0]
    click(page, tab)


def set_field(page, elem_id: str, value) -> None:
    """Type into a Gradio text or number field the way a person does (select all, type, tab)."""
    from selenium.webdriver.common.keys import Keys

    box = by_css(page, f"#{elem_id} input, #{elem_id} textarea")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(str(value), Keys.TAB)


def choose(page, elem_id: str, option: str) -> None:
    """Pick a radio option by its text."""
    from selenium.webdriver.common.by import By

    for label in page.find_elements(By.CSS_SELECTOR, f"#{elem_id} label"):
        if label.text.strip() == option:
            click(page, label)
            return
    raise ValueError(f"no option {option!r} in #{elem_id}")


def gallery_sizes(page) -> list[tuple[int, int]]:
    """(width, height) of every loaded image in the gallery's grid."""
    sizes = page.execute_script(
        "return [...document.querySelectorAll('#gallery .grid-container img')]"
        ".filter(i => i.complete && i.naturalWidth > 0)"
        ".map(i => [i.naturalWidth, i.naturalHeight]);")
    return [tuple(s) for s in sizes]


def generate_in_page(page, *, label: str, num_images: int, seed: int,
                     timeout: float = 300) -> tuple[list[tuple[int, int]], float]:
    """Fill in the Generate tab, click, wait for the gallery; (image sizes, click-to-gallery s)."""
    wait_for(page, lambda p: by_css(p, "#generate-btn"), what="the Generate button")
    choose(page, "label", label)
    set_field(page, "num-images", num_images)
    set_field(page, "seed", seed)
    count = num_images * (2 if label == "both" else 1)
    click(page, by_css(page, "#generate-btn"))
    t0 = time.time()
    # the settings line names the request's seed: a gallery left from an earlier one is not it
    wait_for(page, lambda p: re.search(rf"\bseed {seed}\b", by_css(p, "#settings").text)
             and len(gallery_sizes(p)) == count, timeout, "the gallery")
    return gallery_sizes(page), time.time() - t0


def upload(page, elem_id: str, path: Path) -> None:
    """Choose ``path`` in a file field, as the file dialog would (the driver needs it absolute);
    a file already there is cleared first with the field's x, as a person would."""
    for clear in page.find_elements("css selector", f"#{elem_id} button[aria-label=Clear]"):
        click(page, clear)
    field = wait_for(page, lambda p: by_css(p, f"#{elem_id} input[type=file]"),
                     what=f"the file field #{elem_id}")
    field.send_keys(str(Path(path).resolve()))


def edit_in_page(page, *, source_label: str, level: float | None = None,
                 timeout: float = 300) -> str:
    """On the Counterfactual tab, with a slice uploaded: give its label (and level, for a
    level-conditioned model), click Edit, wait for the counterfactual and its notes; returns
    the notes."""
    choose(page, "edit-source", source_label)
    if level is not None:
        set_field(page, "edit-level", f"{level:.3f}")
    click(page, by_css(page, "#edit-btn"))
    return wait_for(page, lambda p: p.find_elements("css selector", "#edit-image img")
                    and p.find_elements("css selector", "#edit-difference img")
                    and "->" in by_css(p, "#edit-notes").text
                    and by_css(p, "#edit-notes").text, timeout, "the counterfactual")


def toast_text(page, timeout: float = 60) -> str:
    """The text of the error message Gradio shows in the page."""
    return wait_for(page, lambda p: by_css(p, ".toast-message-text").text, timeout,
                    "an error message")
