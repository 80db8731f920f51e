"""Ground-truth benchmark of the guidance methods: the embedded prior's scene is the known answer.

    python bench/quality.py --quick                                  # CI size: 1 scene, 16², 20 steps
    python bench/quality.py --scenes "a red ball,a house" --methods sds,vsd --reprs nerf,gs \\
        --seeds 0,1 --steps 300 --resolution 32 --out outputs/bench-quality
    python bench/quality.py --report-only --out outputs/bench-quality --doc docs/BENCHMARKS.md

For every scene × representation × seed, each guidance method is trained from its shipped config
(configs/<method>-<repr>.yaml) with the same resolution, step budget and seed, and beside them the
*ceiling*: the same representation, config and budget fitted directly to the scene's true renders
(loss 0.5‖x − x_true‖² per view in the prior's pixel space, x the render of random training cameras),
so each method's distance to the best this model can do at this budget is a number.

Per run, on 16 held-out views (8 azimuths between the prior's references × elevations 5° and 35°):
PSNR, mask IoU, depth error, HSV saturation error inside the true mask (positive = over-saturated),
high-frequency excess (speckle beyond the truth's), front/back confusion (the Janus measure of ``metrics.front_back_confusion``; reported for scenes
with an asymmetric object), the Chamfer distance of the isosurface mesh (quality.json), stability
(PSNR lost from its best, variation of the gradient norm, the gradient's size and signal-to-noise
ratio on the final renders), wall time, it/s and NaN-skipped steps;
the held-out measures every ``--eval-every`` steps go to curve.csv.

Each run is an ordinary run folder ``<out>/<method>-<repr>/<scene>-seed<k>/`` (configs/parsed.yaml,
ckpts/last.ckpt, metrics.csv, quality.json) plus curve.csv and bench.json, so
``python -m threestudio_like.compare`` reads it. ``<out>/quality.csv``, ``<out>/quality.md`` and
``<out>/plots/*.png`` hold the results; ``--doc FILE`` also writes the tables into FILE's section
"## Guidance comparison (embedded prior, ground truth)", between markers, leaving the rest alone.
The command line lives in bench/quality_cli.py, the measures in bench/quality_measures.py, the tables
and plots in bench/quality_report.py.
``--refine`` then refines each guidance run of the first seed with bench/refine.py's stages (geometry,
texture) and writes the stage-1 vs refined table to ``<out>/refine/`` (with ``--doc``, into the section
"## Refinement (embedded prior, ground truth)").

The runs execute through the sweep machinery (bench/quality_sweep.py): one sweep job per run
(``bench/quality.py --run-one ...`` in its own process), recorded in ``<out>/sweep.db``, as Ray
tasks (a local Ray, or a cluster with ``--address``) or one after another without Ray;
``python -m threestudio_like.sweep status <out>`` shows where the matrix stands.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import quality_report as report  # noqa: E402
from bench import refine  # noqa: E402
from bench.quality_cli import CEILING, METHODS, REPRS, parse_args  # noqa: E402
from bench.quality_measures import HeldOut, evaluate, gradient_stats, held_out_views, stability  # noqa: E402
from bench.quality_sweep import job_spec, run_matrix  # noqa: E402
from threestudio_like.cli import build, seed_everything  # noqa: E402
from threestudio_like.config import ConfigError, load_config, to_yaml  # noqa: E402
from threestudio_like.sweep.executors import ExecutorError  # noqa: E402
from threestudio_like.utils.atomic import write_text  # noqa: E402



@dataclass(frozen=True)
class Job:
    scene: str
    repr: str
    method: str  # a guidance name, or "ceiling"
    seed: int

    @property
    def name(self) -> str:
        return f"{self.method}-{self.repr}"

    @property
    def tag(self) -> str:
        return f"{slug(self.scene)}-seed{self.seed}"

    def config_path(self) -> Path:
        # the ceiling starts from the SDS config of its representation; the guidance is never called
        return ROOT / "configs" / f"{'sds' if self.method == CEILING else self.method}-{self.repr}.yaml"


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")


# --------------------------------------------------------------------------------------------------
# Shared state across runs
# --------------------------------------------------------------------------------------------------
class Shared:
    """What runs with the same settings can share: the embedded prior's reference renders (the
    library is rendered on the first null condition, seconds per run otherwise) and held-out views."""

    def __init__(self) -> None:
        self.references: dict[tuple, tuple[dict, dict, dict]] = {}
        self.views: dict[tuple, HeldOut] = {}

    def attach(self, prior) -> None:
        """Point the prior's render caches at the ones of earlier priors with the same settings."""
        if not all(hasattr(prior, name) for name in ("_renders", "_sets", "_scenes")):
            return  # not the embedded prior
        key = (repr(prior.cfg), tuple(prior.ref_elevation.tolist()), tuple(prior.ref_azimuth.tolist()),
               prior.ref_distance, prior.ref_fovy, str(prior.alphas_cumprod.device))
        prior._renders, prior._sets, prior._scenes = self.references.setdefault(key, ({}, {}, {}))

    def held_out(self, scene, sampler) -> HeldOut:
        cfg = sampler.cfg
        width, height = sampler.resolution(0)
        distance, fovy = 0.5 * sum(cfg.camera_distance_range), 0.5 * sum(cfg.fovy_range)
        key = (scene.key, width, height, distance, fovy)
        if key not in self.views:
            self.views[key] = held_out_views(scene, width, height, distance, fovy)
        return self.views[key]


# --------------------------------------------------------------------------------------------------
# One run
# --------------------------------------------------------------------------------------------------
def supervised_step(system, scene, step: int, max_steps: int) -> dict[str, float]:
    """One step of the ceiling: fit the renders of random training cameras to the true renders.

    The loss is 0.5‖x − x_true‖² per view in the prior's pixel space ([−1,1]), the form every
    guidance loss takes (with g = x − x_true), so Gaussian densification sees gradients of the
    same kind.
    """
    system.update_step(step, max_steps)
    cameras = system.sampler.sample().to(system.device)
    truth = scene.render(cameras)["rgb"].to(system.device)
    shading = system.material.training_shading(step)
    out = system.render(cameras, shading=shading, training=True, with_normal=system.material.requires_normal(shading))
    x, target = 2.0 * out["rgb"] - 1.0, 2.0 * truth - 1.0
    loss = 0.5 * ((x - target) ** 2).sum() / len(x)
    optimizer = system.optimizers["geometry"]
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    system.after_backward(out, step)
    optimizer.step()
    grad_norm = float((x - target).detach().norm())
    return {"loss": float(loss.detach()), "loss_fit": float(loss.detach()), "grad_norm": grad_norm}


class StepRecorder:
    """Stands in for ``system.training_step``: times each step and evaluates the held-out views
    every ``every`` steps (and at the last), keeping evaluation time out of the step time."""

    def __init__(self, system, views: HeldOut, every: int, fit_scene=None) -> None:
        self.system, self.views, self.every = system, views, max(1, every)
        self.step_fn = system.training_step if fit_scene is None else (lambda s, m: supervised_step(system, fit_scene, s, m))
        self.curve: list[dict[str, float]] = []
        self.step_seconds = self.eval_seconds = 0.0
        system.training_step = self  # an instance attribute shadows the method

    def __call__(self, step: int, max_steps: int) -> dict[str, float]:
        start = time.perf_counter()
        logged = self.step_fn(step, max_steps)
        self.step_seconds += time.perf_counter() - start
        if (step + 1) % self.every == 0 or step + 1 == max_steps:
            start = time.perf_counter()
            rng = torch.get_rng_state()  # evaluation must not change the training's random draws
            self.curve.append({"step": step + 1, **evaluate(self.system, self.views)})
            torch.set_rng_state(rng)
            self.eval_seconds += time.perf_counter() - start
        return logged


def job_overrides(job: Job, args: argparse.Namespace) -> list[str]:
    """The config overrides that give every run of the matrix the same budget."""
    res, steps = args.resolution, args.steps
    overrides = [
        f"system.prompt_processor.prompt={job.scene}", f"seed={job.seed}", f"name={job.name}", f"tag={job.tag}",
        f"exp_root_dir={Path(args.out).resolve()}", "use_timestamp=false",
        f"data.width={res}", f"data.height={res}", f"data.eval_width={2 * res}", f"data.eval_height={2 * res}",
        f"trainer.max_steps={steps}", f"trainer.val_check_interval={steps}", f"trainer.checkpoint_interval={steps}",
        f"trainer.log_every_n_steps={args.log_every}", "trainer.progress_bar=false",
        f"system.quality.mesh_resolution={args.mesh_resolution}", f"system.quality.n_surface_points={args.surface_points}",
        f"system.exporter.isosurface_resolution={args.mesh_resolution}", "system.exporter.progress=false",
    ]
    for target, item in args.set:
        if target in (None, job.method, job.repr, job.name):
            overrides.append(item)
    return overrides


def fresh_folder(folder: Path) -> None:
    """Empty ``folder`` for a new run (metrics.csv appends); refuse one that is not a run folder."""
    if folder.exists():
        if any(folder.iterdir()) and not (folder / "configs" / "parsed.yaml").is_file():
            raise SystemExit(f"error: {folder} exists and is not a run folder; pick another --out")
        shutil.rmtree(folder)
    (folder / "configs").mkdir(parents=True)


def run_job(job: Job, args: argparse.Namespace, shared: Shared, command: str) -> dict:
    """Train one run of the matrix in its own folder; returns its row (also written to bench.json)."""
    cfg = load_config(job.config_path(), job_overrides(job, args))
    folder = Path(cfg.exp_root_dir) / cfg.name / cfg.tag
    fresh_folder(folder)
    seed_everything(job.seed)
    system, trainer_cls = build(cfg, torch.device(args.device))
    shared.attach(system.prior)
    write_text(folder / "configs" / "parsed.yaml", to_yaml(cfg))
    scene = system.prior.scene(job.scene)
    views = shared.held_out(scene, system.sampler)
    recorder = StepRecorder(system, views, args.eval_every, fit_scene=scene if job.method == CEILING else None)
    trainer = trainer_cls(system, cfg.trainer, folder)
    start = time.perf_counter()
    trainer.fit()
    wall = time.perf_counter() - start - recorder.eval_seconds
    quality = json.loads(trainer.quality().read_text())
    gradient = gradient_stats(system, views) if job.method != CEILING else {"grad_rms": float("nan"), "grad_snr_db": float("nan")}
    row = {
        "scene": job.scene, "repr": job.repr, "method": job.method, "seed": job.seed, "steps": args.steps,
        "resolution": args.resolution, "asymmetric": bool(scene.asymmetric), **recorder.curve[-1],
        "chamfer": quality.get("chamfer", float("nan")), **stability(recorder.curve, folder / "metrics.csv"),
        **gradient, "wall_s": wall, "it_per_s": args.steps / max(recorder.step_seconds, 1e-9),
        "skipped_steps": int(system.skipped_steps) if job.method != CEILING else 0,
        "run_dir": str(folder), "command": command,
    }
    row.pop("step")
    report.write_csv(folder / "curve.csv", recorder.curve)
    write_text(folder / "bench.json", json.dumps(row, indent=2) + "\n")
    return row


def backfill_gradient(run_dir: Path, shared: Shared, device: str) -> dict:
    """Add the gradient measures to the bench.json of a run made before they were taken (from its checkpoint)."""
    path = run_dir / "bench.json"
    row = json.loads(path.read_text())
    if "grad_snr_db" in row and "grad_rms" in row:
        return row
    cfg = load_config(run_dir / "configs" / "parsed.yaml")
    seed_everything(cfg.seed)
    system, trainer_cls = build(cfg, torch.device(device))
    shared.attach(system.prior)
    trainer_cls(system, cfg.trainer, run_dir).resume(run_dir / "ckpts" / "last.ckpt")
    views = shared.held_out(system.prior.scene(row["scene"]), system.sampler)
    nan = {"grad_rms": float("nan"), "grad_snr_db": float("nan")}
    row.update(gradient_stats(system, views) if row["method"] != CEILING else nan)
    write_text(path, json.dumps(row, indent=2) + "\n")
    return row


def reusable(job: Job, args: argparse.Namespace) -> Optional[dict]:
    """The row of an earlier finished run of the same job and budget, for ``--resume``."""
    path = Path(args.out).resolve() / job.name / job.tag / "bench.json"
    if not path.is_file():
        return None
    row = json.loads(path.read_text())
    same_budget = row.get("steps") == args.steps and row.get("resolution") == args.resolution
    return row if same_budget and all(c in row for c in report.CSV_COLUMNS) else None


def jobs_of(args: argparse.Namespace) -> list[Job]:
    methods = ([] if args.no_ceiling else [CEILING]) + list(args.methods)
    return [Job(scene, rep, method, seed) for rep in args.reprs for scene in args.scenes for seed in args.seeds for method in methods]


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)  # more threads stall on a shared machine
    if args.run_one:
        return run_one(args)
    out = Path(args.out).resolve()
    command = "python bench/quality.py " + " ".join(_quote(a) for a in (sys.argv[1:] if argv is None else argv))
    failed = 0
    if args.report_only:
        rows = report.collect_rows(out)
        if args.backfill:
            shared = Shared()
            rows = [backfill_gradient(Path(row["run_dir"]), shared, args.device) for row in rows]
        if not rows and not args.refine:  # --refine --report-only needs only <out>/refine/refine.csv
            print(f"error: no finished runs (bench.json) under {out}", file=sys.stderr)
            return 2
    else:
        try:
            rows, failed = run_all(args, command)
        except (ConfigError, ExecutorError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        if not rows:
            return 1
    for path in report.write_report(rows, out, doc=args.doc) if rows else []:
        print(f"wrote {path}")
    if args.refine:  # the refinement row: stage 1 (this matrix's runs of the first seed) vs refined
        chosen = [r for r in rows if r["method"] != CEILING and r["seed"] == min(args.seeds)]
        try:
            print(refine.refine_runs(chosen, out / "refine", quick=args.quick, report_only=args.report_only, doc=args.doc))
        except FileNotFoundError as error:
            print(f"error: --refine --report-only: {error.filename} does not exist (run --refine first)", file=sys.stderr)
            return 2
    return 1 if failed else 0


def run_all(args: argparse.Namespace, command: str) -> tuple[list[dict], int]:
    """The matrix through the sweep (bench/quality_sweep.py): (rows of the finished runs, failed runs)."""
    out = Path(args.out).resolve()
    jobs = jobs_of(args)
    specs = [job_spec(job, args, job_overrides(job, args), command) for job in jobs if not (args.resume and reusable(job, args))]
    counts = run_matrix(specs, args)
    rows = [row for job in jobs if (row := reusable(job, args)) is not None]
    report.write_csv(out / "quality.csv", rows)
    if counts["failed"]:
        print(f"error: {counts['failed']} runs failed (python -m threestudio_like.sweep status {out}); "
              "the report covers the others", file=sys.stderr)
    return rows, counts["failed"]


def run_one(args: argparse.Namespace) -> int:
    """One run of the matrix, in this process: the body of each sweep job."""
    method, rep, seed, scene = args.run_one
    if method not in (CEILING, *METHODS) or rep not in REPRS or not seed.lstrip("-").isdigit():
        print(f"error: --run-one {' '.join(args.run_one)!r}: give METHOD ({', '.join((CEILING, *METHODS))}) "
              f"REPR ({', '.join(REPRS)}) SEED (an integer) SCENE", file=sys.stderr)
        return 2
    job = Job(scene, rep, method, int(seed))
    try:
        row = run_job(job, args, Shared(), args.command or "python bench/quality.py --run-one " + " ".join(args.run_one))
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{job.name} {job.scene!r} seed {job.seed}: " + report.row_summary(row), flush=True)
    return 0


def _quote(arg: str) -> str:
    return f'"{arg}"' if re.search(r"[\s,]", arg) and not arg.startswith("--") else arg


if __name__ == "__main__":
    sys.exit(main())
