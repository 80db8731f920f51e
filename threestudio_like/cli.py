"""The command line: ``python launch.py --config X.yaml --train|--validate|--test|--export [overrides]``."""
from __future__ import annotations

import argparse
import dataclasses
import random
import signal
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from threestudio_like.config import ConfigError, ExperimentConfig, load_config, to_yaml
from threestudio_like.registry import lookup
from threestudio_like.systems import run_folder
from threestudio_like.utils.atomic import WriteError
from threestudio_like.utils.checks import shorten
from threestudio_like.utils.stop import RunStopped, Terminated, exit_code, in_main_thread, raise_terminated


class UserError(Exception):
    """A mistake of the user's (bad flag, missing file): printed as one line, exit code 2."""


def parse_args(argv: Optional[Sequence[str]]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(prog="launch.py", description="threestudio_like: text to 3D by score distillation")
    parser.add_argument("--config", required=True, help="YAML config, e.g. configs/sds-nerf.yaml")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--train", action="store_true", help="optimise, then write the turntable, the mesh and quality.json")
    mode.add_argument("--validate", action="store_true", help="write a validation grid of a checkpoint (needs resume=)")
    mode.add_argument("--test", action="store_true", help="write the turntable video of a checkpoint (needs resume=)")
    mode.add_argument("--export", action="store_true", help="write OBJ/MTL/PNG and GLB of a checkpoint (needs resume=)")
    parser.add_argument("--gpu", default=None, help="CUDA device index; without CUDA the run uses the CPU")
    args, overrides = parser.parse_known_args(argv)
    unknown_flags = [o for o in overrides if o.startswith("--")]
    if unknown_flags:
        parser.error(f"unknown flag {unknown_flags[0]!r}; overrides are key=value, e.g. trainer.max_steps=100")
    return args, overrides


def choose_device(gpu: Optional[str]) -> torch.device:
    if torch.cuda.is_available():
        return torch.device(f"cuda:{int(gpu) if gpu is not None else 0}")
    if gpu is not None:
        print(f"warning: --gpu {gpu} asked for, but CUDA is not available: running on the CPU", file=sys.stderr)
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def run_tag(cfg: ExperimentConfig) -> str:
    prompt = getattr(getattr(cfg.system, "prompt_processor", None), "prompt", "")
    return run_folder.default_tag(cfg.tag, prompt)


def run_dir_for(cfg: ExperimentConfig) -> Path:
    """Where --validate/--test/--export write: the folder of the checkpoint (or a new name for a
    loose one). Training claims its folder with :func:`run_folder.claim` instead."""
    return run_folder.checkpoint_run_dir(cfg.resume) or Path(cfg.exp_root_dir) / cfg.name / run_tag(cfg)


def one_line(error: BaseException) -> str:
    """An error as the single line the user sees, long values (a 10 000-character prompt) shortened."""
    lines = str(error).strip().splitlines() or [type(error).__name__]
    return shorten(lines[0], 400)


def build(cfg: ExperimentConfig, device: torch.device):
    """The camera sampler, the system and its trainer (nothing written yet)."""
    from threestudio_like.systems.trainer import Trainer

    sampler = lookup("data", cfg.data_type)(cfg.data)
    system = lookup("system", cfg.system_type)(cfg.system, sampler, device)
    convert_from = getattr(cfg.system, "geometry_convert_from", None)
    if convert_from:
        from threestudio_like.systems.convert import convert_system_geometry, restore_source_options

        if cfg.resume:  # a resumed refined run has its own geometry in its checkpoint: only its options
            restore_source_options(system, cfg.resume)
        else:
            convert_system_geometry(system, convert_from)
    return system, Trainer


def main(argv: Optional[Sequence[str]] = None) -> int:
    args, overrides = parse_args(argv)
    previous = signal.signal(signal.SIGTERM, raise_terminated) if in_main_thread() else None
    lock = None
    try:
        cfg, trainer = start(args, overrides)
        if args.train:  # nothing is written before the config, the parts and the checkpoint all fit
            trainer.run_dir, lock = run_folder.claim(cfg.exp_root_dir, cfg.name, run_tag(cfg), cfg.use_timestamp, cfg.resume)
            config_text = to_yaml(dataclasses.replace(cfg, resume=None))
            trainer.config_file = run_folder.record_config(trainer.run_dir, config_text, trainer.step, trainer.resumed_config_file)
            if trainer.system.converted_from:
                from threestudio_like.systems.convert import write_record

                write_record(trainer.run_dir, trainer.system.converted_from)
        return run(args, trainer)
    except (ConfigError, UserError, ValueError, FileNotFoundError) as error:
        # a mistake in what the user asked for: one line, no traceback
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted (SIGINT) before training started; nothing was written", file=sys.stderr)
        return exit_code(signal.SIGINT)
    except Terminated as stop:
        print(f"error: stopped by {stop} before training started; nothing was written", file=sys.stderr)
        return exit_code(stop.signum)
    finally:
        if lock is not None:
            lock.release()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def start(args: argparse.Namespace, overrides: Sequence[str]):
    """The checked config and a trainer with its system built (and, unless training, its checkpoint loaded)."""
    cfg = load_config(args.config, overrides)
    if not args.train and not cfg.resume:
        raise UserError("--validate/--test/--export need a checkpoint: add resume=outputs/<run>/ckpts/last.ckpt")
    if cfg.resume and not Path(cfg.resume).is_file():
        raise UserError(f"resume={cfg.resume!r} does not exist; pass a checkpoint such as outputs/<run>/ckpts/last.ckpt")
    device = choose_device(args.gpu)
    if device.type == "cpu" and cfg.cpu_threads > 0:
        torch.set_num_threads(cfg.cpu_threads)
    seed_everything(cfg.seed)
    system, trainer_cls = build(cfg, device)
    trainer = trainer_cls(system, cfg.trainer, run_dir_for(cfg))
    if cfg.resume:
        trainer.resume(cfg.resume, with_optimizers=args.train)
    return cfg, trainer


def run(args: argparse.Namespace, trainer) -> int:
    """Train and/or write the outputs; a signal or a failed write ends it with one line."""
    from threestudio_like.export import ExportError

    cfg = trainer.cfg
    print(f"run folder: {trainer.run_dir}")
    try:
        if args.train:
            trainer.fit()
            if cfg.test_at_end:
                print(f"turntable: {trainer.test()}")
            if cfg.export_at_end:
                report_export(trainer.export())
            quality = trainer.quality()
            if quality is not None:
                print(f"quality: {quality}: {quality.read_text().strip()}")
            if cfg.page_at_end:
                report_page(trainer.run_dir)
        elif args.validate:
            print(f"validation grid: {trainer.validate()}")
        elif args.test:
            print(f"turntable: {trainer.test()}")
        elif args.export:
            report_export(trainer.export())
    except (ExportError, ConfigError) as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 2
    except RunStopped as stop:
        print(f"\n{'stopped' if stop.exit_code > 128 else 'error'}: {stop}", file=sys.stderr)
        return stop.exit_code
    except WriteError as error:
        print(f"error: {one_line(error)}; {trainer.kept_checkpoint()}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, Terminated) as stop:
        name = "SIGINT" if isinstance(stop, KeyboardInterrupt) else str(stop)
        phase = "after training (turntable, export or quality)" if args.train else "while writing the outputs"
        print(f"\nstopped: {name} {phase}; {trainer.kept_checkpoint()}", file=sys.stderr)
        return exit_code(getattr(stop, "signum", signal.SIGINT))
    return 0


def report_page(run_dir: Path) -> None:
    """Write the run page; a page that cannot be written is a warning, the run itself succeeded."""
    from threestudio_like.page import PageError, write_run_page

    try:
        print(f"run page: {write_run_page(run_dir)}")
    except (PageError, OSError) as error:
        print(f"warning: the run page was not written: {error}", file=sys.stderr)


def report_export(paths: dict) -> None:
    for kind, path in paths.items():
        print(f"export {kind}: {path}")
