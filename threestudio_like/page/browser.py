"""Where the system's Chromium is and how to start it headless with software WebGL (no GPU needed):
what the page tests and ``bench/view_asset.py`` drive through Playwright. Playwright never downloads a
browser here; Debian's ``chromium`` is used through ``executable_path``.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Optional

CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--enable-unsafe-swiftshader",  # software WebGL for the 3D viewers (there is no GPU)
]


def chromium_path() -> Optional[str]:
    """$CHROMIUM, /usr/bin/chromium or the first chromium on PATH; None when there is none."""
    for candidate in (os.environ.get("CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and Path(candidate).is_file():
            return candidate
    return None
