"""Drive the real dashboard: ``streamlit run`` on 127.0.0.1 and Debian's headless chromium via Playwright.

Shared by the end-to-end test and the screenshot tool (``python -m tests.e2e.screenshot``). The
browser is the system ``chromium`` found with ``shutil.which`` (never ``playwright install``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
UPLOAD_INPUT = "[data-testid=stFileUploaderDropzone] input[type=file]"
CARD = "div[class*='st-key-card_']"
OVERLAY = "img[alt='Grad-CAM overlay']"
PLOTLY = "[data-testid=stPlotlyChart] .main-svg"


def chromium_path() -> str | None:
    """Debian's chromium, or None when it is not installed."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


@contextlib.contextmanager
def streamlit_server(env: dict[str, str], log_path: Path, timeout: float = 120.0) -> Iterator[str]:
    """Run ``streamlit run app/main.py`` on a free local port until the block ends; yields its URL.

    The server is always terminated (then killed if it lingers), whatever happens in the block.

    Raises:
        RuntimeError: The server exited or did not answer ``/_stcore/health`` within ``timeout`` s
            (the message ends with its log).
    """
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "streamlit", "run", "app/main.py", "--server.address", "127.0.0.1",
           "--server.port", str(port), "--server.headless", "true", "--browser.gatherUsageStats", "false",
           "--server.fileWatcherType", "none"]
    full_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + timeout
            while not _healthy(url):
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.flush()
                    tail = Path(log_path).read_text(errors="replace")[-3000:]
                    exited = proc.poll() is not None
                    state = f"exited with {proc.returncode}" if exited else f"not healthy in {timeout} s"
                    raise RuntimeError(f"streamlit server {state}; log:\n{tail}")
                time.sleep(0.5)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)


@contextlib.contextmanager
def browser_page(width: int = 1600, height: int = 1100) -> Iterator[Any]:
    """A Playwright page in headless Debian chromium (closed at the end of the block)."""
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    if executable is None:
        raise RuntimeError("chromium is not installed (apt-get install -y chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True,
                                             args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            yield page
        finally:
            browser.close()


def open_app(page: Any, url: str, timeout_ms: float = 120_000) -> None:
    """Load the dashboard and wait until the uploader is there and the model is loaded."""
    page.goto(url, wait_until="domcontentloaded", timeout=timeout_ms)
    page.wait_for_selector(UPLOAD_INPUT, state="attached", timeout=timeout_ms)
    # In the sidebar, which starts collapsed on phones: attached, not necessarily visible.
    page.get_by_text("Full model card").wait_for(state="attached", timeout=timeout_ms)


def upload(page: Any, files: Sequence[str | Path], timeout_ms: float = 120_000) -> None:
    """Upload files through the dropzone's file input and wait for one gallery card per file."""
    page.set_input_files(UPLOAD_INPUT, [str(f) for f in files])
    page.wait_for_function(f"document.querySelectorAll(\"{CARD}\").length >= {len(files)}", timeout=timeout_ms)


def show_grad_cam(page: Any, timeout_ms: float = 120_000) -> None:
    """Switch Grad-CAM on in the sidebar and wait for the overlay image to be decoded."""
    page.get_by_text("Show Grad-CAM").click()
    page.wait_for_selector(OVERLAY, state="visible", timeout=timeout_ms)
    page.wait_for_function(f"(() => {{ const i = document.querySelector(\"{OVERLAY}\"); "
                           "return i && i.complete && i.naturalWidth > 0; })()", timeout=timeout_ms)


IDLE = "[data-testid=stApp][data-test-script-state=notRunning]"


def wait_idle(page: Any, timeout_ms: float = 120_000) -> None:
    """Wait until the script run in progress has finished (the app root's script state is ``notRunning``).

    Call it after something that shows the run has started (e.g. an element it renders), so the
    wait cannot end before the run begins. Download buttons of a run still in progress may point to
    files the finished run replaces.
    """
    page.wait_for_selector(IDLE, state="attached", timeout=timeout_ms)


def pick_option(page: Any, widget: str, option: str, attempts: int = 3) -> None:
    """Choose ``option`` in the multiselect under the CSS selector ``widget``: type it, click it alone.

    The dropdown first opens with every option visible and filters as the text arrives, so the
    option is clicked only once the list shows it alone (else a stale one could be picked). A script
    run still in flight can re-render the widget and drop the choice, so when its tag does not
    appear in the widget (the list itself lives outside, in a popover) the choice is made again.
    """
    from playwright.sync_api import expect

    chosen = page.locator(widget)
    for attempt in range(attempts):
        wait_idle(page)
        page.locator(f"{widget} input").click()
        page.keyboard.type(option)
        listed = page.get_by_role("option")
        expect(listed).to_have_count(1)
        expect(listed).to_have_text(option)
        listed.click()
        try:
            expect(chosen).to_contain_text(option, timeout=15_000)
            break
        except AssertionError:
            if attempt == attempts - 1:
                raise
            page.keyboard.press("Escape")
    wait_idle(page)
