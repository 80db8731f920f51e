"""The command line: ``python launch.py --config X.yaml --train|--validate|--test|--export [overrides]``."""
from __future__ import annotations

import argparse
import datetime
import random
import re
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from threestudio_like.config import ConfigError, ExperimentConfig, load_config, to_yaml
from threestudio_like.registry import lookup


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


def run_dir_for(cfg: ExperimentConfig) -> Path:
    """``outputs/<name>/<tag>@<timestamp>``, or the folder of the checkpoint being resumed."""
    if cfg.resume:
        ckpt = Path(cfg.resume)
        if ckpt.parent.name == "ckpts" and (ckpt.parent.parent / "configs").is_dir():
            return ckpt.parent.parent
    prompt = getattr(getattr(cfg.system, "prompt_processor", None), "prompt", "")
    tag = cfg.tag or re.sub(r"[^A-Za-z0-9_-]+", "_", prompt).strip("_")[:80] or "run"
    if cfg.use_timestamp:
        tag += "@" + datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(cfg.exp_root_dir) / cfg.name / tag


def build(cfg: ExperimentConfig, device: torch.device):
    """The camera sampler, the system and its trainer (nothing written yet)."""
    from threestudio_like.systems.trainer import Trainer

    sampler = lookup("data", cfg.data_type)(cfg.data)
    system = lookup("system", cfg.system_type)(cfg.system, sampler, device)
    convert_from = getattr(cfg.system, "geometry_convert_from", None)
    if convert_from and not cfg.resume:  # a resumed refined run has its own geometry in its checkpoint
        from threestudio_like.systems.convert import convert_system_geometry

        convert_system_geometry(system, convert_from)
    return system, Trainer


def main(argv: Optional[Sequence[str]] = None) -> int:
    args, overrides = parse_args(argv)
    try:
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
        run_dir = run_dir_for(cfg)
        trainer = trainer_cls(system, cfg.trainer, run_dir)
        if cfg.resume:
            trainer.resume(cfg.resume, with_optimizers=args.train)
    except (ConfigError, UserError, ValueError, FileNotFoundError) as error:
        # a mistake in what the user asked for: one line, no traceback
        print(f"error: {error}", file=sys.stderr)
        return 2
    return run(args, cfg, trainer, run_dir)


def run(args: argparse.Namespace, cfg: ExperimentConfig, trainer, run_dir: Path) -> int:
    from threestudio_like.export import ExportError

    (run_dir / "configs").mkdir(parents=True, exist_ok=True)
    if args.train:
        (run_dir / "configs" / "parsed.yaml").write_text(to_yaml(cfg))
        if getattr(trainer.system, "converted_from", None):
            from threestudio_like.systems.convert import write_record

            write_record(run_dir, trainer.system.converted_from)
    print(f"run folder: {run_dir}")
    try:
        if args.train:
            trainer.fit()
            if cfg.trainer.test_at_end:
                print(f"turntable: {trainer.test()}")
            if cfg.trainer.export_at_end:
                report_export(trainer.export())
            quality = trainer.quality()
            if quality is not None:
                print(f"quality: {quality}: {quality.read_text().strip()}")
        elif args.validate:
            print(f"validation grid: {trainer.validate()}")
        elif args.test:
            print(f"turntable: {trainer.test()}")
        elif args.export:
            report_export(trainer.export())
    except ExportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


def report_export(paths: dict) -> None:
    for kind, path in paths.items():
        print(f"export {kind}: {path}")
