"""Coarse → refine → export in one command: each stage an ordinary run, converted from the one before.

    python -m threestudio_like.chain configs/sds-nerf.yaml configs/refine-geometry.yaml \\
        configs/refine-texture.yaml system.prompt_processor.prompt="a red ball on a blue box"

Every stage is ``launch.py --config <its config> --train`` in its own process, with
``system.geometry_convert_from=<the previous stage's run folder>`` from the second stage on. Overrides
apply to every stage; ``K:key=value`` to stage K only (0 = the first). The first item may be a
finished run folder instead of a config: the chain then refines that run. At the end it prints each
stage's run folder, the last export and the asset measures of each stage's quality.json.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Optional, Sequence

STAGE_OVERRIDE = re.compile(r"^(\d+):(.+=.*)$")
RUN_FOLDER = "run folder: "
LAUNCH = "import sys; from threestudio_like.cli import main; sys.exit(main(sys.argv[1:]))"
SHOWN = ("chamfer", "normal_error_deg", "psnr", "iou", "components")


def stage_overrides(overrides: Sequence[str], n_stages: int) -> list[list[str]]:
    """Per stage, the overrides that apply to it, in the given order (``K:`` prefixes removed)."""
    per_stage: list[list[str]] = [[] for _ in range(n_stages)]
    for item in overrides:
        match = STAGE_OVERRIDE.match(item)
        if match is None:
            for stage in per_stage:
                stage.append(item)
            continue
        index = int(match.group(1))
        if index >= n_stages:
            raise ValueError(f"override {item!r} names stage {index}, but there are {n_stages} stages (0 to {n_stages - 1})")
        per_stage[index].append(match.group(2))
    return per_stage


def run_stage(config: str, overrides: list[str], source: Optional[Path]) -> Path:
    """Train one stage in its own process (its output shown as it comes); its run folder."""
    args = ["--config", config, "--train", *overrides]
    if source is not None:
        args.append(f"system.geometry_convert_from={source}")
    process = subprocess.Popen([sys.executable, "-c", LAUNCH, *args], stdout=subprocess.PIPE, text=True, bufsize=1)
    run_dir = None
    for line in process.stdout:
        sys.stdout.write(line)
        if line.startswith(RUN_FOLDER):
            run_dir = Path(line[len(RUN_FOLDER):].strip())
    code = process.wait()
    if code != 0 or run_dir is None:
        raise StageFailed(f"stage {config} failed (exit code {code})", code or 1)
    return run_dir


class StageFailed(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def summary(run_dirs: list[Path]) -> str:
    """Lines: each stage's run folder and asset measures, then the final export."""
    lines = []
    for run_dir in run_dirs:
        lines.append(f"stage run folder: {run_dir}")
        quality = run_dir / "quality.json"
        if quality.is_file():
            asset = json.loads(quality.read_text()).get("asset", {})
            lines.append("  asset: " + ", ".join(f"{k} {asset[k]:.4g}" for k in SHOWN if k in asset))
    exports = sorted((run_dirs[-1] / "save").glob("it*-export*/model.glb"), key=lambda p: p.stat().st_mtime)
    if exports:
        lines.append(f"final asset: {exports[-1]}")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m threestudio_like.chain", description=__doc__.splitlines()[0])
    parser.add_argument("items", nargs="+", metavar="CONFIG_OR_OVERRIDE",
                        help="stage configs in order (YAML files), then key=value overrides (K:key=value: stage K only)")
    items = parser.parse_args(argv).items
    configs = [item for item in items if "=" not in item]
    overrides = [item for item in items if "=" in item]
    run_dirs: list[Path] = []
    if configs and Path(configs[0]).is_dir():  # a finished run to refine
        run_dirs.append(Path(configs.pop(0)))
    try:
        missing = [c for c in configs if not Path(c).is_file()]
        if len(configs) + len(run_dirs) < 2 or missing:
            raise ValueError(f"config {missing[0]!r} does not exist" if missing else
                             "give at least two stages, e.g. configs/sds-nerf.yaml configs/refine-fine.yaml")
        per_stage = stage_overrides(overrides, len(run_dirs) + len(configs))[len(run_dirs):]
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        for config, own in zip(configs, per_stage):
            run_dirs.append(run_stage(config, own, run_dirs[-1] if run_dirs else None))
    except StageFailed as error:
        print(f"error: {error}", file=sys.stderr)
        return error.code
    print(summary(run_dirs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
