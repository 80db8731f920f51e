"""bench/quality.py's command line: the matrix's axes, budget and options, checked before anything runs."""
from __future__ import annotations

import argparse
from typing import Optional

import torch

DEFAULT_SCENES = ("a red ball", "a blue cube", "a red ball on a blue box", "a green torus next to a yellow cone", "a house", "a mug")
METHODS = ("sds", "vsd", "asd", "esd", "csm", "ism")
REPRS = ("nerf", "gs")
CEILING = "ceiling"
DESCRIPTION = "Ground-truth benchmark of the guidance methods: the embedded prior's scene is the known answer."


# --------------------------------------------------------------------------------------------------
def split_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def parse_set(item: str) -> tuple[Optional[str], str]:
    """``[target:]key=value``: target a method, representation or method-repr (default: every run)."""
    head, _, _ = item.partition("=")
    if ":" in head:
        target, _, rest = item.partition(":")
        return target, rest
    return None, item


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=DESCRIPTION)
    parser.add_argument("--quick", action="store_true", help="CI size: 16², 20 steps, one scene, sds+asd on NeRF, one seed")
    parser.add_argument("--scenes", type=split_list, default=None, help=f"comma-separated prompts (default: {', '.join(DEFAULT_SCENES)})")
    parser.add_argument("--methods", type=split_list, default=None, help=f"comma-separated, from {', '.join(METHODS)}")
    parser.add_argument("--reprs", type=split_list, default=None, help="comma-separated, from nerf, gs")
    parser.add_argument("--seeds", type=lambda s: [int(v) for v in split_list(s)], default=None, help="e.g. 0,1,2")
    parser.add_argument("--steps", type=int, default=None, help="training steps per run (default 1500, quick 20)")
    parser.add_argument("--resolution", type=int, default=None, help="training and evaluation size (default 32, quick 16)")
    parser.add_argument("--eval-every", type=int, default=None, help="held-out evaluation interval in steps")
    parser.add_argument("--mesh-resolution", type=int, default=None, help="marching-cubes grid for Chamfer (default 64, quick 24)")
    parser.add_argument("--surface-points", type=int, default=None, help="points per surface for Chamfer (default 5000)")
    parser.add_argument("--log-every", type=int, default=None, help="metrics.csv interval (default 10, quick 5)")
    parser.add_argument("--no-ceiling", action="store_true", help="skip the supervised fit to the true renders")
    parser.add_argument("--set", action="append", type=parse_set, default=[], metavar="[TARGET:]KEY=VALUE",
                        help="config override for every run, or for one method/repr/method-repr, e.g. asd:system.guidance.plus_ratio=0.2")
    parser.add_argument("--out", default="outputs/bench-quality", help="folder of the run folders and the report")
    parser.add_argument("--doc", default=None, help="Markdown file whose benchmark section receives the tables, e.g. docs/BENCHMARKS.md")
    parser.add_argument("--resume", action="store_true", help="reuse runs of the same budget already finished under --out")
    parser.add_argument("--report-only", action="store_true", help="train nothing: rebuild the report from every run under --out")
    parser.add_argument("--backfill", action="store_true", help="with --report-only: measure the gradient SNR of runs made without it")
    parser.add_argument("--address", default=None, help="Ray cluster for the runs: auto, or ray://host:port (default: a local Ray)")
    parser.add_argument("--executor", choices=("auto", "ray", "sequential"), default="auto",
                        help="how the runs are spread: auto (Ray when installed), ray, sequential")
    parser.add_argument("--gpus-per-run", type=float, default=1.0, help="GPUs per run where the cluster has GPUs")
    parser.add_argument("--run-one", nargs=4, metavar=("METHOD", "REPR", "SEED", "SCENE"), default=None,
                        help="train one run of the matrix in this process (what each sweep job executes)")
    parser.add_argument("--command", default=None, help=argparse.SUPPRESS)  # the matrix's command line, for the record
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest on a shared machine)")
    parser.add_argument("--refine", action="store_true", help="then refine each guidance run of the first seed "
                        "(bench/refine.py's stages): stage 1 vs refined, in <out>/refine/ (with --doc: its Refinement section)")
    args = parser.parse_args(argv)
    quick = args.quick
    defaults = dict(scenes=["a mug"] if quick else list(DEFAULT_SCENES), methods=["sds", "asd"] if quick else list(METHODS),
                    reprs=["nerf"] if quick else list(REPRS), seeds=[0] if quick else [0, 1, 2], steps=20 if quick else 1500,
                    resolution=16 if quick else 32, mesh_resolution=24 if quick else 64, surface_points=1000 if quick else 5000,
                    log_every=5 if quick else 10)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.eval_every is None:
        args.eval_every = max(1, args.steps // 10)
    check_args(parser, args)
    return args


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    from threestudio_like.priors.scenes import parse_prompt

    for method in args.methods:
        if method not in METHODS:
            parser.error(f"--methods: unknown method {method!r}; use some of {', '.join(METHODS)}")
    for rep in args.reprs:
        if rep not in REPRS:
            parser.error(f"--reprs: unknown representation {rep!r}; use some of {', '.join(REPRS)}")
    for scene in args.scenes:
        try:
            parse_prompt(scene)
        except ValueError as error:
            parser.error(f"--scenes: {error}")
    for key in ("steps", "resolution", "mesh_resolution", "surface_points", "log_every"):
        if getattr(args, key) < 1:
            parser.error(f"--{key.replace('_', '-')}={getattr(args, key)} must be at least 1")
