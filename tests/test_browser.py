"""The three explorers in a real browser, on a finished run: JupyterLab on 127.0.0.1 with a token,
headless Chromium driven by chromedriver (Debian's ``chromium`` and ``chromium-driver``; selenium
from the dev extra). A copy of the session's smoke run gets ``ptx lab``'s notebooks; 02 and 04 run
top to bottom in the browser, reload the run's results (nothing written but figures), and each
explorer must render as widgets (not as their text), react to a control and leave no console
error; the same check on a notebook that prints the widgets' text instead must fail. Skipped with
the reason when no browser can be had; every process started is stopped.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest
from conftest import copy_run

from ptx_utils.running.lab import LAB_DIR, prepare_lab

pytestmark = [pytest.mark.slow, pytest.mark.smoke_reader]
TOKEN = "ptx-browser-test"
# A notebook that shows widgets as text (a saved notebook's view of them): no torch, quick.
AS_TEXT = [
    "import ipywidgets as w",
    "for _ in range(3):\n    print(repr(w.VBox([w.IntSlider(), w.Button(description='go')])))",
]


def _notebook(path: Path, cells: list[str]) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
    nbformat.write(nb, path)
    return path


def _browser() -> tuple[str, str]:
    chrome = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not chrome or not driver:
        pytest.skip("no browser: install Debian's chromium and chromium-driver (make test tries)")
    pytest.importorskip("selenium", reason="selenium is missing: pip install -e '.[dev]'")
    return chrome, driver


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """JupyterLab on 127.0.0.1 with a token in a temporary folder; stopped after the module."""
    _browser()
    root = tmp_path_factory.mktemp("lab")
    port = _free_port()
    command = [
        sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root",
        f"--ServerApp.root_dir={root}", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
        f"--IdentityProvider.token={TOKEN}",
    ]  # fmt: skip
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{url}/api/status?token={TOKEN}", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("JupyterLab did not start within 60 s")
        yield url, root
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


@pytest.fixture(scope="module")
def browser(lab: tuple[str, Path]) -> Iterator[object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chrome, driver_path = _browser()
    options = webdriver.ChromeOptions()
    options.binary_location = chrome
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1400,1800",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def run_all(driver, url: str, name: str, timeout: float = 150) -> None:
    """Open ``name`` in JupyterLab and run all its cells (Run menu), waiting for the kernel."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(f"{url}/lab/tree/{name}?token={TOKEN}&reset")
    wait = WebDriverWait(driver, timeout)
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, ".jp-Notebook .jp-Cell")))
    wait.until(lambda d: "| idle" in _kernel_status(d))
    menu = wait.until(
        ec.element_to_be_clickable(
            (By.XPATH, "//div[contains(@class,'lm-MenuBar-itemLabel') and text()='Run']")
        )
    )
    menu.click()
    item = wait.until(
        ec.element_to_be_clickable((By.CSS_SELECTOR, "li[data-command='runmenu:run-all']"))
    )
    item.click()
    wait.until(lambda d: _all_ran(d.find_elements(By.CSS_SELECTOR, ".jp-CodeCell .jp-InputPrompt")))


def _all_ran(prompts: list) -> bool:
    """Every cell's prompt shows an execution count (not ``[ ]:`` nor ``[*]:``)."""
    texts = [p.text.strip() for p in prompts]
    return bool(texts) and all(t.startswith("[") and t[1:-2].isdigit() for t in texts)


def _kernel_status(driver) -> str:
    """The status bar's kernel state, lower case ("python 3 (ipykernel) | idle")."""
    from selenium.webdriver.common.by import By

    bar = driver.find_elements(By.CSS_SELECTOR, ".jp-StatusBar-Widget")
    return bar[0].text.lower() if bar else ""


def widget_problems(driver, expected: int) -> list[str]:
    """What is wrong with the page's explorers: fewer than ``expected`` rendered widget trees, an
    'Error displaying widget', or a widget shown as its text repr."""
    from selenium.webdriver.common.by import By

    problems = []
    text = driver.find_element(By.CSS_SELECTOR, ".jp-Notebook").text
    if "Error displaying widget" in text:
        problems.append("an 'Error displaying widget' in the page")
    if "VBox(children=" in text:
        problems.append("a widget shown as its text repr")
    views = driver.find_elements(By.CSS_SELECTOR, ".jp-OutputArea-output .widget-vbox")
    tops = [
        v
        for v in views
        if not v.find_elements(By.XPATH, "ancestor::div[contains(@class,'widget-vbox')]")
    ]
    if len(tops) < expected:
        problems.append(f"{len(tops)} explorer widget(s) rendered, {expected} expected")
    return problems


def _console_errors(driver) -> list[dict]:
    return [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]


def _files(run: Path) -> dict[Path, tuple[bytes, int]]:
    """Every file of a run but its figures and lab notebooks: content and modification time."""
    skip = {run / "figures", run / LAB_DIR}
    return {
        p: (p.read_bytes(), p.stat().st_mtime_ns)
        for p in run.rglob("*")
        if p.is_file() and not any(parent in skip for parent in p.parents)
    }


@pytest.fixture(scope="module")
def explored_run(lab: tuple[str, Path], smoke_run: Path) -> Path:
    """A copy of the session's smoke run inside the lab's folder, with ``ptx lab``'s notebooks."""
    run = copy_run(smoke_run, lab[1] / "smoke-run")
    prepare_lab(run)
    return run


def test_a_finished_run_reopens_with_live_explorers(
    lab, browser, explored_run: Path, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, _ = lab
    before = _files(explored_run)

    # 02: the search-history browser and the scheme explorer
    run_all(browser, url, f"smoke-run/{LAB_DIR}/02_search.ipynb")
    assert widget_problems(browser, expected=2) == []

    def status() -> str:
        return browser.find_element(
            By.XPATH, "//button[contains(., 'fine-tune on')]/following-sibling::*"
        ).text

    def press() -> None:
        browser.find_element(By.XPATH, "//button[contains(., 'fine-tune on')]").click()

    # change a control (BN affine only), fine-tune: a new accuracy; again unchanged: cached
    browser.find_element(By.XPATH, "//button[contains(., 'BN affine only')]").click()
    press()
    WebDriverWait(browser, 90).until(lambda d: "%" in status() and "cached" not in status())
    first = status()
    press()
    WebDriverWait(browser, 30).until(lambda d: "cached" in status())
    assert status() != first
    browser.save_screenshot(str(tmp_path / "02_search.png"))
    assert not _console_errors(browser), json.dumps(_console_errors(browser), indent=1)[:2000]

    # 04: the domain-shift explorer; its slider moves to the next target and redraws
    run_all(browser, url, f"smoke-run/{LAB_DIR}/04_domain_shift.ipynb")
    assert widget_problems(browser, expected=1) == []

    def images() -> list[str]:
        found = browser.find_elements(By.CSS_SELECTOR, ".widget-output img")
        return [i.get_attribute("src") for i in found]

    shown = images()
    handle = browser.find_elements(By.CSS_SELECTOR, ".widget-slider .noUi-handle")[-1]
    handle.click()
    handle.send_keys("\ue014")  # arrow right: the next target
    WebDriverWait(browser, 60).until(lambda d: images() != shown)
    browser.save_screenshot(str(tmp_path / "04_domain_shift.png"))
    assert (tmp_path / "04_domain_shift.png").stat().st_size > 10_000
    assert not _console_errors(browser), json.dumps(_console_errors(browser), indent=1)[:2000]

    # the run's results were reloaded, not written again
    after = _files(explored_run)
    changed = sorted(str(p.relative_to(explored_run)) for p in after if after[p] != before.get(p))
    assert not changed and after.keys() == before.keys(), changed


def test_the_check_fails_on_widgets_shown_as_text(lab, browser) -> None:
    url, root = lab
    _notebook(root / "as_text.ipynb", AS_TEXT)
    run_all(browser, url, "as_text.ipynb")
    problems = widget_problems(browser, expected=3)
    assert "a widget shown as its text repr" in problems and any("rendered" in p for p in problems)
