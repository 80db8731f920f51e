"""Files a page needs beside it: the 3D viewer script (from the npm registry, installed by
``make web`` into ``web/node_modules``), the page's own splat viewer, and the asset as a script.

Browsers refuse ``fetch`` (and ES modules) on ``file://`` pages, so the viewer is model-viewer's
UMD build (a classic script) and each binary asset is wrapped in a small classic script that
hands its base64 bytes to the page: ``window.ASSETS["model.glb"] = "…"``.
"""
from __future__ import annotations

import base64
import os
import shutil
from pathlib import Path
from typing import Optional

from threestudio_like.utils.atomic import atomic_path, write_bytes

MODEL_VIEWER = Path("node_modules") / "@google" / "model-viewer" / "dist" / "model-viewer-umd.min.js"
WEB_ENV = "THREESTUDIO_LIKE_WEB"  # a folder holding node_modules/@google/model-viewer
SPLAT_VIEWER = Path(__file__).with_name("splat_viewer.js")


def web_dirs() -> list[Path]:
    """Where model-viewer may be installed: $THREESTUDIO_LIKE_WEB, the checkout's web/, ./web."""
    dirs = [Path(os.environ[WEB_ENV])] if os.environ.get(WEB_ENV) else []
    return dirs + [Path(__file__).resolve().parents[2] / "web", Path.cwd() / "web"]


def model_viewer_script() -> Optional[Path]:
    """The installed model-viewer UMD script, or None when ``make web`` has not run."""
    for folder in web_dirs():
        if (folder / MODEL_VIEWER).is_file():
            return folder / MODEL_VIEWER
    return None


def copy_if_changed(source: Path, target: Path) -> Path:
    """Copy ``source`` to ``target`` (atomically) unless an identical-size copy is already there."""
    if not (target.is_file() and target.stat().st_size == source.stat().st_size):
        with atomic_path(target) as tmp:
            shutil.copyfile(source, tmp)
    return target


def asset_script(source: Path, target: Path, key: str) -> Path:
    """A classic script that registers ``source``'s bytes, base64-encoded, as ``window.ASSETS[key]``."""
    payload = base64.b64encode(source.read_bytes()).decode("ascii")
    text = f'(window.ASSETS = window.ASSETS || {{}})["{key}"] = "{payload}";\n'
    return write_bytes(target, text.encode("ascii"))
