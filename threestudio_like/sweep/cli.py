"""``python -m threestudio_like.sweep --config C --variants A,B --prompts FILE --seeds 0,1 [key=value ...]``
and ``python -m threestudio_like.sweep status DIR``."""
from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from typing import Optional, Sequence

from threestudio_like.config import ConfigError
from threestudio_like.sweep import report
from threestudio_like.sweep.driver import Driver, RetryPolicy
from threestudio_like.sweep.executors import ExecutorError, make_executor
from threestudio_like.sweep.grid import GridError, expand, parse_seeds, read_prompts, resolve_variants
from threestudio_like.sweep.ledger import LEDGER_NAME, Ledger

PROG = "python -m threestudio_like.sweep"


def split_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def positive(kind):
    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text!r} must be greater than 0")
        return value
    return parse


def run_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="A grid of launch.py --train runs on Ray, with a SQLite ledger.",
                                     epilog=f"Trailing key=value config overrides apply to every job (e.g. trainer.max_steps=600). "
                                            f"{PROG} status DIR prints the ledger of a sweep folder.")
    parser.add_argument("--config", required=True, help="a run config, e.g. configs/sds-nerf.yaml")
    parser.add_argument("--variants", type=split_list, default=None,
                        help="comma-separated configs beside --config (sds-nerf,vsd-nerf) or YAML paths; default: --config alone")
    parser.add_argument("--prompts", required=True, help="text file, one prompt per line (# starts a comment)")
    parser.add_argument("--seeds", default="0", help="comma-separated, e.g. 0,1 (default 0)")
    parser.add_argument("--refine", default=None, help="refinement stage configs, comma-separated, run in order after each job, "
                        "each converted from the one before (launch.py --config STAGE --train system.geometry_convert_from=<run folder>)")
    parser.add_argument("--out", default="outputs/sweep", help="sweep folder: ledger, run folders, report (default outputs/sweep)")
    parser.add_argument("--address", default=None, help="Ray cluster to join: auto, or ray://host:port (default: a local Ray)")
    parser.add_argument("--executor", choices=("auto", "ray", "sequential"), default="auto",
                        help="auto: Ray when installed, else one job after another")
    parser.add_argument("--gpus-per-run", type=positive(float), default=1.0, help="GPUs per job where the cluster has GPUs (fractions allowed)")
    parser.add_argument("--cpus-per-run", type=positive(float), default=1.0, help="CPUs per job (default 1)")
    parser.add_argument("--max-attempts", type=positive(int), default=3, help="launches of a job before it counts as failed (default 3)")
    parser.add_argument("--retry-failed", action="store_true", help="also rerun jobs that failed with a user error or stopped themselves")
    parser.add_argument("--report-frames", type=positive(int), default=24, help="turntable frames of the comparison video")
    parser.add_argument("--no-report", action="store_true", help="skip the comparison report at the end")
    return parser


def status_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog=f"{PROG} status", description="Print the ledger of a sweep folder.")
    parser.add_argument("dir", help="the sweep folder (its --out)")
    args = parser.parse_args(argv)
    path = Path(args.dir) / LEDGER_NAME
    if not path.is_file():
        print(f"error: {args.dir!r} holds no sweep ledger ({LEDGER_NAME}); pass the --out folder of a sweep", file=sys.stderr)
        return 2
    ledger = Ledger(path)
    print(report.status_text(ledger.rows(), Path(args.dir)))
    ledger.close()
    return 0


def interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["status"]:
        return status_main(argv[1:])
    args, overrides = run_parser().parse_known_args(argv)
    unknown = [o for o in overrides if o.startswith("--")]
    if unknown:
        run_parser().error(f"unknown flag {unknown[0]!r}; config overrides are key=value, e.g. trainer.max_steps=100")
    sweep_dir = Path(args.out).resolve()
    try:
        configs = resolve_variants(args.config, args.variants)
        refine = [resolve_variants(stage, None)[0] for stage in split_list(args.refine or "")]
        jobs = expand(configs, read_prompts(args.prompts), parse_seeds(args.seeds), overrides, sweep_dir, refine)
        return run_sweep(args, jobs, sweep_dir)
    except (GridError, ConfigError, ExecutorError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def run_sweep(args: argparse.Namespace, jobs, sweep_dir: Path) -> int:
    """Run what is left of the grid, then report; exit 0 when every job is done, 1 when some failed."""
    try:
        counts = execute(jobs, sweep_dir, args.executor, args.address, args.cpus_per_run, args.gpus_per_run,
                         RetryPolicy(args.max_attempts, args.retry_failed))
    except KeyboardInterrupt:
        print(f"interrupted: the running jobs go back to pending; run the same command to resume them "
              f"(status: {PROG} status {args.out})", file=sys.stderr)
        return 130
    finish(args, jobs, sweep_dir)
    return 0 if counts["done"] == len(jobs) else 1


def execute(jobs, sweep_dir: Path, executor_kind: str = "auto", address: Optional[str] = None, cpus_per_run: float = 1.0,
            gpus_per_run: float = 1.0, policy: Optional[RetryPolicy] = None) -> dict[str, int]:
    """Record ``jobs`` in the ledger of ``sweep_dir`` and run those not done yet; the final counts.
    The executor (Ray) is started only when something is left to run."""
    policy = policy or RetryPolicy()
    ledger = Ledger.of(sweep_dir)
    ledger.add(jobs)
    ledger.requeue_failed([j.hash for j in jobs], policy.max_attempts, policy.retry_user_errors)
    counts = ledger.counts(j.hash for j in jobs)
    ledger.close()
    kept = f", {counts['failed']} failed and not retried (see status; --retry-failed reruns them)" if counts["failed"] else ""
    print(f"sweep {sweep_dir}: {len(jobs)} jobs, {counts['done']} already done{kept}", flush=True)
    if counts["pending"] + counts["running"] == 0:
        return counts
    executor = make_executor(executor_kind, address, cpus_per_run, gpus_per_run)
    print(f"executor: {executor.describe()}", flush=True)
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        return Driver(sweep_dir, jobs, executor, policy).run()
    finally:
        signal.signal(signal.SIGTERM, previous)


def finish(args: argparse.Namespace, jobs, sweep_dir: Path) -> None:
    ledger = Ledger.of(sweep_dir)
    rows = ledger.rows(j.hash for j in jobs)
    ledger.close()
    print(report.status_text(rows, sweep_dir))
    truth = report.truth_rows(rows)
    if truth:
        print("\nground truth (mean ± std over prompts and seeds):\n" + report.ground_truth_summary(truth))
    if args.no_report:
        return
    paths = report.write_report(rows, sweep_dir, args.report_frames)
    if "unchanged" in paths:
        print(f"report: {paths['unchanged']} (up to date)")
    for kind, path in paths.items():
        if kind != "unchanged":
            print(f"report {kind}: {path}")
