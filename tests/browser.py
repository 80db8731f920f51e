"""Headless Chromium for the page tests, driven by Playwright's Python package.

Uses the system's Chromium (Debian's ``chromium``, which ``make test`` installs) through
``executable_path``: Playwright never downloads a browser here. ``browser_or_skip`` gives the reason
to skip when either piece is missing.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from threestudio_like.page.browser import CHROMIUM_ARGS, chromium_path  # noqa: F401 (re-exported)


def browser_or_skip():
    """(playwright sync API module, chromium path), or pytest.skip with the reason."""
    try:
        from playwright import sync_api
    except ImportError:
        pytest.skip("the playwright package is not installed (pip install -e '.[test]')")
    path = chromium_path()
    if path is None:
        pytest.skip("no Chromium installed (make test installs Debian's chromium: apt-get install -y chromium)")
    return sync_api, path


def visit(url: str, wait_for: str, screenshot: Path, selectors: tuple[str, ...] = (), timeout_ms: int = 90000) -> dict:
    """Open ``url``, wait until the JS expression ``wait_for`` is truthy, take a screenshot.
    Returns {"errors": console errors and page errors, "value": the expression's value,
    "boxes": {selector: (x0, y0, x1, y1) in screenshot pixels}}."""
    sync_api, path = browser_or_skip()
    errors: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 1400})
            page.on("console", lambda m: errors.append(f"console: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
            page.goto(url)
            page.wait_for_function(wait_for, timeout=timeout_ms)
            value = page.evaluate(wait_for)
            page.wait_for_timeout(500)  # a few frames after the load event
            boxes = {}
            for selector in selectors:
                box = page.locator(selector).bounding_box()
                boxes[selector] = tuple(int(round(v)) for v in (box["x"], box["y"], box["x"] + box["width"], box["y"] + box["height"]))
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    return {"errors": errors, "value": value, "boxes": boxes}


def region_std(png: Path, box: tuple[int, int, int, int]) -> float:
    """Standard deviation of the pixels of a screenshot region (x0, y0, x1, y1): 0 for a blank area."""
    from PIL import Image

    image = np.asarray(Image.open(png).convert("RGB"), dtype=np.float32)
    x0, y0, x1, y1 = box
    return float(image[y0:y1, x0:x1].std())
