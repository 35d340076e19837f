"""A real browser for the status page's tests: Debian's chromium driven by Playwright (PyPI).

Playwright cannot download its own browsers on these machines, so the tests launch the system's chromium.
A missing piece fails the test with one line saying what to install (`.ci/run` and `scripts/test` install
both, so CI never gets here; nothing is skipped).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

CHROMIUM_PATHS = ("/usr/bin/chromium", "/usr/bin/chromium-browser")


def chromium_path() -> str:
    found = shutil.which("chromium") or next((p for p in CHROMIUM_PATHS if Path(p).exists()), None)
    if found is None:
        pytest.fail("chromium is not installed: install it with `apt-get install chromium` (as root)", pytrace=False)
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        pytest.fail("playwright is not installed: install the test extras (`pip install -e '.[test]'`)", pytrace=False)
    return found


LAUNCH_ARGS = ["--no-sandbox"]  # the tests run as root, where chromium's sandbox refuses to start
