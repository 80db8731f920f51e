"""Side-by-side report of finished runs: ``python -m threestudio_like.compare RUN_DIR... -o DIR``.

Each run's last checkpoint is rendered from one shared orbit (so every run is seen from identical
cameras), through its own ``configs/parsed.yaml``: only the geometry, material, background and
renderer are rebuilt, never the prior, so runs of either prior compare without loading a diffusion
model. Writes into DIR:

- ``compare.mp4``: a turntable, the runs side by side, each labelled;
- ``compare.png``: a grid of the same views, one labelled row per run;
- ``compare.md``: the config keys whose values differ between the runs, then time and metrics
  (metrics.csv's last row, quality.json and bench.json when present);
- ``curves.png``: |loss| from metrics.csv (and held-out PSNR when the runs have curve.csv).

A run folder that does not exist or holds no checkpoint is a one-line error (exit status 2).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from threestudio_like import plots
from threestudio_like.config import ConfigError, ExperimentConfig, load_config
from threestudio_like.data.cameras import Cameras, orbit_cameras
from threestudio_like.systems.checkpoint import load_checkpoint
from threestudio_like.systems.visualize import to_uint8, write_image, write_video
from threestudio_like.utils.atomic import write_text

LABEL_KEYS = ("name", "system.guidance_type", "system.geometry_type", "system.prompt_processor.prompt", "seed")
LABEL_HEIGHT = 16
MIN_TILE = 128  # tiles are enlarged (nearest neighbour) to at least this width so labels fit


class CompareError(Exception):
    """Bad input (a missing run folder, no checkpoint, an unreadable config): one line, exit 2."""


@dataclass
class Run:
    path: Path
    cfg: ExperimentConfig
    flat: dict[str, Any]  # parsed.yaml flattened to dotted keys
    checkpoint: Path
    label: str = ""
    facts: dict[str, Any] = field(default_factory=dict)  # time and metrics for the table


# --------------------------------------------------------------------------------------------------
# Reading runs
# --------------------------------------------------------------------------------------------------
def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """A nested mapping → {dotted.key: leaf}; lists are leaves."""
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: node}


def load_run(path: str | os.PathLike) -> Run:
    """A finished run folder: its parsed config and last checkpoint (CompareError when either is missing)."""
    from omegaconf import OmegaConf

    path = Path(path)
    if not path.is_dir():
        raise CompareError(f"run folder {str(path)!r} does not exist; pass folders such as outputs/<name>/<run>")
    config_path, checkpoint = path / "configs" / "parsed.yaml", path / "ckpts" / "last.ckpt"
    if not config_path.is_file():
        raise CompareError(f"{str(path)!r} is not a run folder: no configs/parsed.yaml")
    if not checkpoint.is_file():
        raise CompareError(f"run {str(path)!r} has no checkpoint ckpts/last.ckpt; train it first (or wait for its first checkpoint)")
    try:
        cfg = load_config(config_path)
    except ConfigError as error:
        raise CompareError(f"run {str(path)!r}: {error}") from None
    flat = flatten(OmegaConf.to_container(OmegaConf.load(config_path), resolve=True))
    return Run(path, cfg, flat, checkpoint, facts=run_facts(path))


def run_facts(path: Path) -> dict[str, Any]:
    """Time and metrics of a run: metrics.csv's last row, training time summed from its it/s,
    quality.json and bench.json (the quality benchmark's row) when present."""
    facts: dict[str, Any] = {}
    columns = plots.read_csv_columns(path / "metrics.csv")
    if columns.get("step"):
        steps, rates = columns["step"], columns.get("it_per_s", [])
        previous, seconds = 0.0, 0.0
        for step, rate in zip(steps, rates):
            if rate > 0 and math.isfinite(rate):
                seconds += (step - previous) / rate
            previous = step
        facts["train time (s, from it/s)"] = seconds
        facts.update({f"last {key}": values[-1] for key, values in columns.items()})
    for name in ("quality.json", "bench.json"):
        if (path / name).is_file():
            data = json.loads((path / name).read_text())
            facts.update({f"{name[:-5]} {k}": v for k, v in data.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
    return facts


def assign_labels(runs: Sequence[Run], labels: Optional[Sequence[str]] = None) -> None:
    """Label runs by the salient config values that differ between them (folder names as a fallback)."""
    if labels:
        if len(labels) != len(runs):
            raise CompareError(f"--labels gives {len(labels)} labels for {len(runs)} runs")
        for run, label in zip(runs, labels):
            run.label = label
        return
    differing = [k for k in LABEL_KEYS if len({str(r.flat.get(k)) for r in runs}) > 1]
    if "name" in differing:  # configs are named <method>-<repr>: the name says both
        differing = [k for k in differing if k not in ("system.guidance_type", "system.geometry_type")]
    for run in runs:
        parts = [f"seed {run.flat.get(k)}" if k == "seed" else str(run.flat.get(k)) for k in differing]
        run.label = " ".join(parts) if parts else str(run.flat.get("name", run.path.name))
    if len({r.label for r in runs}) < len(runs):
        for run in runs:
            run.label = f"{run.label} {run.path.name}" if len(runs) > 1 else run.label


# --------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------
def renderable(run: Run, device: torch.device):
    """(geometry, material, background, renderer) of a run at its last checkpoint."""
    from threestudio_like.systems.text_to_3d import build

    system_cfg = run.cfg.system
    parts = {
        "geometry": build("geometry", system_cfg.geometry_type, system_cfg.geometry),
        "material": build("material", system_cfg.material_type, system_cfg.material),
        "background": build("background", system_cfg.background_type, system_cfg.background),
        "renderer": build("renderer", system_cfg.renderer_type, system_cfg.renderer),
    }
    try:
        state = load_checkpoint(run.checkpoint)
    except ValueError as error:
        raise CompareError(str(error)) from None
    for name in ("geometry", "background", "renderer"):  # a geometry may resize itself on loading
        if name in state["modules"]:
            parts[name].load_state_dict(state["modules"][name])
    for part in parts.values():
        part.to(device).eval()
    parts["geometry"].update_step(int(state["step"]), run.cfg.trainer.max_steps)  # e.g. the hash grid's levels
    return parts["geometry"], parts["material"], parts["background"], parts["renderer"]


@torch.no_grad()
def render_orbit(run: Run, cameras: Cameras, device: torch.device) -> np.ndarray:
    """uint8 frames [V,H,W,3] of the run's rgb renders from ``cameras`` (white where empty)."""
    geometry, material, background, renderer = renderable(run, device)
    frames = []
    for i in range(len(cameras)):
        out = renderer.render(geometry, material, background, cameras[i].to(device), shading="albedo", training=False)
        frames.append(to_uint8(out["rgb"][0]))
    return np.stack(frames)


def shared_orbit(runs: Sequence[Run], args: argparse.Namespace) -> Cameras:
    """The orbit every run is rendered from: the first run's evaluation camera unless overridden."""
    data = run_data_cfg(runs[0])
    size = args.size or int(data.get("eval_width", 64))
    elevation = args.elevation if args.elevation is not None else float(data.get("eval_elevation", 20.0))
    distance = args.distance if args.distance is not None else float(data.get("eval_camera_distance", 2.5))
    fovy = args.fovy if args.fovy is not None else float(data.get("eval_fovy", 40.0))
    return orbit_cameras(args.frames, elevation, distance, fovy, size, size)


def run_data_cfg(run: Run) -> dict[str, Any]:
    prefix = "data."
    return {k[len(prefix):]: v for k, v in run.flat.items() if k.startswith(prefix)}


# --------------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------------
def enlarge(frames: np.ndarray, min_width: int = MIN_TILE) -> np.ndarray:
    """Nearest-neighbour enlargement of [..., H, W, 3] by the integer factor that reaches ``min_width``."""
    factor = max(1, math.ceil(min_width / frames.shape[-2]))
    return frames.repeat(factor, axis=-3).repeat(factor, axis=-2) if factor > 1 else frames


def label_strip(text: str, width: int, height: int = LABEL_HEIGHT) -> np.ndarray:
    """A white strip [height, width, 3] with ``text`` in black (cut with … when too long)."""
    from PIL import Image, ImageDraw, ImageFont

    image = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    while text and draw.textlength(text, font=font) > width - 4:
        text = text[:-2] + "…" if len(text) > 2 else ""
    draw.text((2, 2), text, fill=(0, 0, 0), font=font)
    return np.asarray(image)


def video_frames(renders: Sequence[np.ndarray], labels: Sequence[str]) -> list[np.ndarray]:
    """Each frame: the runs' tiles side by side, a label strip above each; even sizes for H.264."""
    tiles = [enlarge(r) for r in renders]
    strips = [label_strip(label, t.shape[2]) for label, t in zip(labels, tiles)]
    frames = []
    for i in range(len(tiles[0])):
        frame = np.concatenate([np.concatenate([s, t[i]], axis=0) for s, t in zip(strips, tiles)], axis=1)
        frames.append(pad_even(frame))
    return frames


def grid_image(renders: Sequence[np.ndarray], labels: Sequence[str], n_views: int) -> np.ndarray:
    """One row per run: a label strip above ``n_views`` evenly spaced frames of the orbit."""
    rows = []
    for label, frames in zip(labels, renders):
        picks = enlarge(frames[np.linspace(0, len(frames), n_views, endpoint=False).astype(int)])
        row = np.concatenate(list(picks), axis=1)
        rows.append(np.concatenate([label_strip(label, row.shape[1]), row], axis=0))
    return np.concatenate(rows, axis=0)


def pad_even(frame: np.ndarray) -> np.ndarray:
    h, w = frame.shape[:2]
    return np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), constant_values=255)


# --------------------------------------------------------------------------------------------------
# Tables and curves
# --------------------------------------------------------------------------------------------------
def config_differences(runs: Sequence[Run]) -> list[tuple[str, list[Any]]]:
    """(key, one value per run) for every flattened config key whose values are not all equal
    (a key missing from a run counts as a value of its own)."""
    keys = sorted(set().union(*(r.flat for r in runs)))
    missing = object()
    diffs = []
    for key in keys:
        values = [r.flat.get(key, missing) for r in runs]
        if len({repr(v) for v in values}) > 1:
            diffs.append((key, ["—" if v is missing else v for v in values]))
    return diffs


def format_value(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    text = str(value).replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= 60 else text[:57] + "…"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(format_value(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def report_markdown(runs: Sequence[Run]) -> str:
    """compare.md: the runs, their config differences, then their time and metrics."""
    header = ["", *[r.label for r in runs]]
    lines = ["# Run comparison", "", markdown_table(["run", "folder", "step"], [
        (r.label, str(r.path), r.facts.get("last step", "—")) for r in runs]), ""]
    diffs = config_differences(runs)
    lines += ["## Config differences", ""]
    lines += [markdown_table(["key", *header[1:]], [(k, *v) for k, v in diffs]) if diffs else "The configs are identical.", ""]
    keys = list(dict.fromkeys(k for r in runs for k in r.facts if k != "last step"))
    lines += ["## Time and metrics", ""]
    lines += [markdown_table(["", *header[1:]], [(k, *[r.facts.get(k, "—") for r in runs]) for k in keys]) if keys
              else "No metrics.csv, quality.json or bench.json in these runs.", ""]
    return "\n".join(lines)


def write_curves(runs: Sequence[Run], path: Path) -> Optional[Path]:
    """|loss| vs step per run (metrics.csv), and held-out PSNR vs step when the runs have curve.csv."""
    loss = {r.label: s for r in runs if (s := plots.loss_series(r.path)) is not None}
    psnr = {}
    for run in runs:
        columns = plots.read_csv_columns(run.path / "curve.csv")
        if columns.get("step") and "psnr" in columns:
            psnr[run.label] = (columns["step"], columns["psnr"])
    panels = [{"ylabel": "|loss| (metrics.csv)", "series": loss, "log": True}] if loss else []
    if psnr:
        panels.append({"ylabel": "held-out PSNR (dB)", "series": psnr})
    return plots.plot_panels(path, panels) if panels else None


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------
def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m threestudio_like.compare", description="Side-by-side video, grid and table of finished runs.")
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders (each with configs/parsed.yaml and ckpts/last.ckpt)")
    parser.add_argument("-o", "--output", required=True, help="folder for compare.mp4, compare.png, compare.md, curves.png")
    parser.add_argument("--frames", type=int, default=60, help="turntable frames (default 60)")
    parser.add_argument("--grid-views", type=int, default=8, help="views per row of the PNG grid (default 8)")
    parser.add_argument("--size", type=int, default=None, help="render size (default: the first run's data.eval_width)")
    parser.add_argument("--elevation", type=float, default=None)
    parser.add_argument("--distance", type=float, default=None)
    parser.add_argument("--fovy", type=float, default=None, help="degrees")
    parser.add_argument("--fps", type=int, default=20)
    parser.add_argument("--labels", default=None, help="comma-separated labels, one per run")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    for key in ("frames", "grid_views", "fps"):
        if getattr(args, key) < 1:
            parser.error(f"--{key.replace('_', '-')}={getattr(args, key)} must be at least 1")
    if args.size is not None and args.size < 8:
        parser.error(f"--size={args.size} must be at least 8")
    return args


def compare(args: argparse.Namespace) -> dict[str, Path]:
    """Everything ``main`` writes; raises CompareError on bad input before writing anything."""
    runs = [load_run(path) for path in args.runs]
    assign_labels(runs, [s.strip() for s in args.labels.split(",")] if args.labels else None)
    device = torch.device(args.device)
    cameras = shared_orbit(runs, args)
    renders = [render_orbit(run, cameras, device) for run in runs]
    labels = [r.label for r in runs]
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "video": write_video(out / "compare.mp4", video_frames(renders, labels), fps=args.fps),
        "grid": write_image(out / "compare.png", grid_image(renders, labels, min(args.grid_views, args.frames))),
    }
    table = out / "compare.md"
    write_text(table, report_markdown(runs))
    paths["table"] = table
    curves = write_curves(runs, out / "curves.png")
    if curves is not None:
        paths["curves"] = curves
    return paths


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    try:
        paths = compare(args)
    except CompareError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
