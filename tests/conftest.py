"""Shared test set-up: real data from ../shared/data, headless SDL, no network."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SCRATCHPILOT_DATA") or REPO.parent / "shared" / "data").resolve()
os.environ["SCRATCHPILOT_DATA"] = str(SHARED_DATA)
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
# the commands' default folders (prediction logs, converted backbones, ...) go to a fresh cache, not ~/.cache
os.environ.setdefault("SCRATCHPILOT_CACHE", __import__("tempfile").mkdtemp(prefix="scratchpilot-test-cache-"))
ARTIFACTS = REPO / "test-artifacts"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "mnist").is_dir():
        pytest.fail(f"test data not found at {SHARED_DATA} (set SCRATCHPILOT_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


#: Debian's Chromium (installed by `make test`), started as this machine allows: no sandbox as root, and no
#: background networking (there is no internet here)
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="session")
def browser():
    """One headless Chromium for the whole run, driven by Playwright."""
    playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the dev extra")
    if not CHROMIUM.exists() and not shutil.which("chromium"):
        pytest.fail("Debian's chromium is missing: `make system-deps` (part of `make test`) installs it")
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()
