"""An exported GLB as a user sees it: six views from a real viewer, side by side in one strip.

    python bench/view_asset.py outputs/<run>/save/export/model.glb outputs/view --viewer model-viewer
    python bench/view_asset.py <glb> outputs/view --viewer blender      # needs `blender` (Debian's)

``model-viewer``: Google's <model-viewer> (``make web``) in headless Chromium (``make chromium``),
orbited to front, side, back, other side, top and below. ``blender``: Blender's own glTF importer
in background mode (bench/blender_views.py), rendered with Cycles on the CPU from the same six sides;
it also writes ``blender.json`` (objects, vertices, faces, loose parts, image texture or not).
Writes ``<out>/<viewer>/<view>.png`` and ``<out>/<viewer>-strip.png``; prints the strip's path.
"""
from __future__ import annotations

import argparse
import functools
import http.server
import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from threestudio_like.page.assets import model_viewer_script  # noqa: E402
from threestudio_like.page.browser import CHROMIUM_ARGS, chromium_path  # noqa: E402

VIEWS = ("front", "side", "back", "other-side", "top", "below")
# model-viewer's camera-orbit: azimuth, polar angle from +y (the glTF up axis)
ORBITS = ("0deg 75deg auto", "90deg 75deg auto", "180deg 75deg auto", "270deg 75deg auto", "30deg 10deg auto", "30deg 150deg auto")
PAGE = ('<html><body style="margin:0;background:#d9d9d9"><script src="model-viewer.js"></script>'
        '<model-viewer id="m" src="model.glb" style="width:{size}px;height:{size}px" camera-orbit="{orbit}" '
        'interaction-prompt="none"><div slot="progress-bar"></div></model-viewer></body></html>')


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # the page's requests are not the user's business
        pass


def model_viewer_views(glb: Path, out: Path, size: int) -> list[Path]:
    """Screenshots of glb in <model-viewer> at the six ORBITS → their paths."""
    from playwright.sync_api import sync_playwright

    script, chromium = model_viewer_script(), chromium_path()
    if script is None or chromium is None:
        raise SystemExit("error: the model-viewer check needs `make web` (model-viewer) and `make chromium` (Chromium)")
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(glb, out / "model.glb")
    shutil.copyfile(script, out / "model-viewer.js")
    (out / "view.html").write_text(PAGE.format(size=size, orbit=ORBITS[0]))
    handler = functools.partial(QuietHandler, directory=str(out))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    paths = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": size, "height": size})
            page.goto(f"http://127.0.0.1:{server.server_port}/view.html")
            page.wait_for_function("document.getElementById('m').loaded", timeout=120000)
            for name, orbit in zip(VIEWS, ORBITS):
                page.evaluate(f"(() => {{ const m = document.getElementById('m'); m.cameraOrbit = '{orbit}'; m.jumpCameraToGoal(); }})()")
                page.wait_for_timeout(700)  # a few frames at the new orbit
                paths.append(out / f"{name}.png")
                page.screenshot(path=str(paths[-1]))
            browser.close()
    finally:
        server.shutdown()
    return paths


def blender_views(glb: Path, out: Path, size: int) -> list[Path]:
    """Blender's import of glb rendered from the six sides (bench/blender_views.py) → their paths."""
    blender = shutil.which("blender")
    if blender is None:
        raise SystemExit("error: the Blender check needs `blender` on PATH (Debian: apt-get install -y blender)")
    out.mkdir(parents=True, exist_ok=True)
    command = [blender, "-b", "--factory-startup", "-noaudio", "--python-exit-code", "1", "-P", str(ROOT / "bench" / "blender_views.py"), "--", str(glb), str(out), str(size)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0 or not (out / "blender.json").is_file():
        raise SystemExit(f"error: blender failed ({done.returncode}): {done.stderr.strip()[-2000:] or done.stdout.strip()[-2000:]}")
    report = json.loads((out / "blender.json").read_text())
    print("blender:", json.dumps({k: v for k, v in report.items() if k != "views"}))
    return [out / f"{name}.png" for name in report["views"]]


def strip(paths: list[Path], target: Path) -> Path:
    """The images side by side, in order → target."""
    images = [Image.open(p).convert("RGB") for p in paths]
    width, height = sum(i.width for i in images), max(i.height for i in images)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    x = 0
    for image in images:
        canvas.paste(image, (x, 0))
        x += image.width
    canvas.save(target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("glb", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--viewer", choices=("model-viewer", "blender", "both"), default="model-viewer")
    parser.add_argument("--size", type=int, default=256, help="pixels per view (default 256)")
    args = parser.parse_args(argv)
    if not args.glb.is_file():
        parser.error(f"no GLB at {args.glb}")
    viewers = ("model-viewer", "blender") if args.viewer == "both" else (args.viewer,)
    for viewer in viewers:
        render = model_viewer_views if viewer == "model-viewer" else blender_views
        print(strip(render(args.glb.resolve(), args.out / viewer, args.size), args.out / f"{viewer}-strip.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
