"""The three explorers in a real browser: JupyterLab on 127.0.0.1 with a token, headless Chromium
driven by chromedriver (Debian's ``chromium`` and ``chromium-driver``; selenium from the dev
extra). A notebook builds the explorers on tiny inputs, runs top to bottom, and each explorer
must render as widgets (not as their text), react to a control, and leave no console error; the
same check on a notebook that prints the widgets' text instead must fail. Skipped with the reason
when no browser can be had; every process started is stopped.
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

pytestmark = pytest.mark.slow
TOKEN = "ptx-browser-test"
SETUP = """\
import numpy as np, pandas as pd, torch
from ptx_utils import search as S
from ptx_utils import widgets as W
from ptx_utils.data import load_dataset
from ptx_utils.data.episodes import sample_episodes
from ptx_utils.finetuning import FinetuneConfig, Scheme, last_k, linear_probe
from ptx_utils.models import create_backbone

torch.manual_seed(0)
torch.set_num_threads(1)
data = load_dataset("synthetic", "test", image_size=16, images_per_class=10)
model = create_backbone("conv4", in_channels=3, image_size=16).eval()
layers = model.layer_names()
references = {"linear probe": linear_probe(4), "last-1": last_k(4, 1)}
scheme = W.SchemeExplorer(
    backbone=model, dataset=data, episodes=sample_episodes(data, 3, 1, 2, 2, seed=0),
    cfg=FinetuneConfig(passes=1), references=references,
)
fit = lambda schemes, desc="": np.array([[0.5 + 0.1 * s.n_trainable_layers] * 2 for s in schemes])
history = W.SearchHistoryBrowser({"evolution": S.evolve(
    fit, layers, S.SearchConfig(population=3, generations=3, top_k=2, seed=0), progress=False)})
targets = ["shift 0", "shift 1"]
samples = {t: torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8) for t in targets}
summary = pd.DataFrame([{"target": t, "strategy": s, "mean": 0.4 + 0.2 * i, "ci95": 0.05}
                        for i, t in enumerate(targets) for s in ("searched", "linear probe")])
schemes = {t: Scheme((0, 0, 0.01 * i, 0.1)) for i, t in enumerate(targets)}
shift = W.DomainShiftExplorer(
    targets=targets, samples=samples, summary=summary, layer_names=layers, schemes=schemes
)
"""
LIVE = ["W.show(scheme);", "W.show(history);", "W.show(shift);"]
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
    wait.until(lambda d: _all_ran(d.find_elements(By.CSS_SELECTOR, ".jp-InputPrompt")))


def _all_ran(prompts: list) -> bool:
    """Every cell's prompt shows an execution count (not ``[ ]:`` nor ``[*]:``)."""
    texts = [p.text.strip() for p in prompts]
    return bool(texts) and all(t.startswith("[") and t[1:-2].isdigit() for t in texts)


def _kernel_status(driver) -> str:
    """The status bar's kernel state, lower case ("python 3 (ipykernel) | idle")."""
    from selenium.webdriver.common.by import By

    bar = driver.find_elements(By.CSS_SELECTOR, ".jp-StatusBar-Widget")
    return bar[0].text.lower() if bar else ""


def widget_problems(driver) -> list[str]:
    """What is wrong with the page's explorers: fewer than three rendered widget trees, an
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
    if len(tops) < 3:
        problems.append(f"{len(tops)} explorer widget(s) rendered, 3 expected")
    return problems


def test_the_explorers_render_and_respond_in_a_browser(lab, browser, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, root = lab
    _notebook(root / "explore.ipynb", [SETUP, *LIVE])
    run_all(browser, url, "explore.ipynb")
    assert widget_problems(browser) == []

    # the scheme explorer's button fine-tunes and says so
    def texts(d) -> list[str]:
        return [s.text for s in d.find_elements(By.CSS_SELECTOR, ".widget-html-content")]

    before = texts(browser)
    browser.find_element(By.XPATH, "//button[contains(., 'fine-tune')]").click()
    WebDriverWait(browser, 60).until(
        lambda d: texts(d) != before and any("%" in t for t in texts(d))
    )

    # the domain-shift explorer's slider redraws its figure
    def images() -> list[str]:
        found = browser.find_elements(By.CSS_SELECTOR, ".widget-output img")
        return [i.get_attribute("src") for i in found]

    first = images()
    handle = browser.find_elements(By.CSS_SELECTOR, ".widget-slider .noUi-handle")[-1]
    handle.click()
    handle.send_keys("\ue014")  # arrow right: the next target
    WebDriverWait(browser, 60).until(lambda d: images() != first)
    browser.save_screenshot(str(tmp_path / "lab.png"))
    assert (tmp_path / "lab.png").stat().st_size > 10_000
    severe = [e for e in browser.get_log("browser") if e.get("level") == "SEVERE"]
    assert not severe, json.dumps(severe, indent=1)[:2000]


def test_the_check_fails_on_widgets_shown_as_text(lab, browser) -> None:
    url, root = lab
    _notebook(root / "as_text.ipynb", AS_TEXT)
    run_all(browser, url, "as_text.ipynb")
    problems = widget_problems(browser)
    assert "a widget shown as its text repr" in problems and any("rendered" in p for p in problems)
