"""Headless Chromium for the HTML report tests: screenshot, DOM after the page's script ran, and the
network requests the page made (Chromium's own NetLog).

Chromium is the Debian package ``chromium`` (``scripts/setup.sh`` installs it when run as root and
it is missing). Without it the tests that need it skip, saying so.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import List

import pytest

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# No first-run work, no background traffic of the browser itself, a throwaway profile; --no-sandbox
# because the tests may run as root (in containers), where Chromium's sandbox refuses to start.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--mute-audio"]


def chromium() -> str:
    """The Chromium executable, or skip (fail in CI) with the reason."""
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("headless Chromium is not installed, so the HTML report is not checked in a browser: install the "
                "Debian package 'chromium' (apt-get install -y chromium; scripts/setup.sh does it when run as root)")


def _run(args: List[str], timeout: float = 90.0) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="nearslicer-chromium-") as profile:
        result = subprocess.run([chromium(), *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                                text=True, timeout=timeout)
    if result.returncode != 0:
        raise AssertionError(f"chromium failed ({result.returncode}): {result.stderr[-2000:]}")
    return result


def url_of(path: Path, fragment: str = "") -> str:
    url = Path(path).resolve().as_uri()
    return f"{url}#{fragment}" if fragment else url


def screenshot(url: str, out: Path, width: int = 1400, height: int = 900) -> Path:
    """PNG of the page as a ``width`` x ``height`` window shows it."""
    _run([f"--window-size={width},{height}", f"--screenshot={out}", url])
    assert Path(out).is_file(), "chromium wrote no screenshot"
    return Path(out)


def dump_dom(url: str) -> str:
    """The document after load (inline scripts have run) as HTML."""
    return _run(["--dump-dom", url]).stdout


def page_requests(url: str) -> List[str]:
    """URLs other than file: and data: that the page itself asked for while loading.

    From Chromium's NetLog: requests started for the page (their network isolation key is the page's
    file:// site), not the browser's own background traffic.
    """
    with tempfile.TemporaryDirectory(prefix="nearslicer-netlog-") as folder:
        log = Path(folder) / "netlog.json"
        _run([f"--log-net-log={log}", "--net-log-capture-mode=Default", "--dump-dom", url])
        data = json.loads(log.read_text())
    start = data["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    urls = []
    for event in data.get("events", []):
        params = event.get("params") or {}
        if event.get("type") != start or "url" not in params:
            continue
        if str(params.get("network_isolation_key", "")).startswith("file://") and \
                not params["url"].startswith(("file:", "data:")):
            urls.append(params["url"])
    return urls
