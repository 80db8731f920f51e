"""Chaining stages: ``system.geometry_convert_from=<run folder or its ckpts/last.ckpt>``.

The finished run's geometry is rebuilt from its own ``configs/parsed.yaml`` and checkpoint, and this
run's geometry is created from it by ``NewGeometry.create_from(old, cfg)`` (threestudio's way: a NeRF
or a Gaussian run becomes a DMTet mesh for refinement). The refined run records where it came from
in ``convert_from.json``. Bad paths are one-line ``ValueError``s (the CLI prints them, exit code 2).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from collections.abc import Mapping
from typing import Any

import torch

from threestudio_like.registry import lookup, names
from threestudio_like.utils.atomic import write_text

RECORD_NAME = "convert_from.json"
HINT = "pass a finished run folder outputs/<name>/<run> or its ckpts/last.ckpt"


def resolve_source(path: str | os.PathLike) -> tuple[Path, Path]:
    """(run folder, checkpoint) of ``geometry_convert_from``: a run folder or a checkpoint inside one."""
    given = Path(path)
    if not given.exists():
        raise ValueError(f"geometry_convert_from={str(path)!r} does not exist; {HINT}")
    if given.is_dir():
        run_dir, ckpt = given, given / "ckpts" / "last.ckpt"
    else:
        run_dir, ckpt = (given.parent.parent if given.parent.name == "ckpts" else given.parent), given
    if not (run_dir / "configs" / "parsed.yaml").is_file():
        raise ValueError(f"geometry_convert_from={str(path)!r} is not in a run folder (no configs/parsed.yaml beside ckpts/); {HINT}")
    if not ckpt.is_file():
        raise ValueError(f"geometry_convert_from={str(path)!r}: the run has no checkpoint {str(ckpt)!r} yet; {HINT}")
    return run_dir, ckpt


def load_source_geometry(path: str | os.PathLike, thresholds: dict[str, float] | None = None) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The finished run's geometry (on the CPU, at its trained state) and the record of where it came
    from; ``thresholds`` (geometry type → density level) replaces its isosurface level."""
    from threestudio_like.config import ConfigError, load_config
    from threestudio_like.systems.checkpoint import load_checkpoint

    run_dir, ckpt = resolve_source(path)
    config_path = run_dir / "configs" / "parsed.yaml"
    try:
        source_cfg = load_config(config_path)
        level = (thresholds or {}).get(source_cfg.system.geometry_type)
        if level is not None:
            source_cfg = load_config(config_path, [f"system.geometry.isosurface_threshold={level}"])
    except ConfigError as error:
        raise ValueError(f"geometry_convert_from={str(path)!r}: its configs/parsed.yaml does not load: {error}") from None
    system_cfg = source_cfg.system
    state = load_checkpoint(ckpt)
    geometry_state = state["modules"].get("geometry")
    if geometry_state is None:
        raise ValueError(f"geometry_convert_from={str(path)!r}: checkpoint {str(ckpt)!r} holds no geometry")
    geometry = lookup("geometry", system_cfg.geometry_type)(system_cfg.geometry)
    try:
        geometry.load_state_dict(geometry_state)
    except (RuntimeError, KeyError) as error:
        raise ValueError(f"geometry_convert_from={str(path)!r}: checkpoint {str(ckpt)!r} is not a "
                         f"{system_cfg.geometry_type!r} geometry as its parsed.yaml says: {str(error).splitlines()[0]}") from None
    step = int(state["step"])
    geometry.update_step(step, source_cfg.trainer.max_steps)  # schedules (e.g. hash-grid levels) at the trained step
    record = {
        "run": str(run_dir.resolve()), "checkpoint": str(ckpt.resolve()), "step": step,
        "config_sha256": hashlib.sha256(config_path.read_bytes()).hexdigest(),
        "geometry_type": system_cfg.geometry_type, "stage": getattr(system_cfg, "stage", "coarse"),
        "prompt": system_cfg.prompt_processor.prompt, "isosurface_threshold": geometry.isosurface_threshold(),
    }
    return geometry.eval(), record


def with_source_options(geometry_cfg: Any, options: dict[str, Any], source_type: str) -> Any:
    """geometry_cfg with ``options[source_type]`` (system.geometry_convert_options) applied; unknown
    or bad options are one-line ``ValueError``s naming them."""
    where = f"system.geometry_convert_options.{source_type}"
    own = dict(options.get(source_type) or {})  # a mapping (check_source_tables)
    known = {f.name for f in dataclasses.fields(geometry_cfg)}
    unknown = sorted(set(own) - known)
    if unknown:
        raise ValueError(f"{where}: {', '.join(unknown)} is not an option of system.geometry (e.g. convert_closing_radius)")
    try:
        return dataclasses.replace(geometry_cfg, **own)
    except (ValueError, TypeError) as error:
        raise ValueError(f"{where}: {str(error).splitlines()[0]}") from None


def check_source_tables(thresholds: dict[str, Any], options: dict[str, Any]) -> None:
    """system.geometry_convert_threshold and _options where they are parsed: every key a registered
    geometry type (a misspelt one would never apply), every threshold a number > 0, every option set
    a mapping. One-line ``ValueError``s; the options themselves are checked by ``check_source_options``."""
    known = names("geometry")
    for key, table in (("geometry_convert_threshold", thresholds), ("geometry_convert_options", options)):
        for source in table:
            if source not in known:
                raise ValueError(f"system.{key}.{source}: {source!r} is not a geometry type; use one of {', '.join(known)}")
    for source, level in thresholds.items():
        if isinstance(level, bool) or not isinstance(level, (int, float)) or not level > 0:
            raise ValueError(f"system.geometry_convert_threshold.{source}={level!r} must be a density level > 0")
    for source, own in options.items():
        if own is not None and not isinstance(own, Mapping):
            raise ValueError(f"system.geometry_convert_options.{source}={own!r} must be a mapping of system.geometry "
                             "options, e.g. {convert_closing_radius: 0.06}")


def check_source_options(geometry_cfg: Any, options: dict[str, Any]) -> None:
    """Every option set of system.geometry_convert_options applied to the typed system.geometry (once
    the config is typed, before a system is built), so that a bad one stops the run at start-up."""
    for source in options:
        with_source_options(geometry_cfg, options, source)


def convert_system_geometry(system, path: str | os.PathLike) -> dict[str, Any]:
    """Replace ``system.geometry`` by ``create_from`` of the run at ``path``; rebuilds the optimizers.
    Returns (and keeps as ``system.converted_from``) the record written to convert_from.json."""
    cfg = system.cfg
    source, record = load_source_geometry(path, cfg.geometry_convert_threshold)
    target = lookup("geometry", cfg.geometry_type)
    geometry_cfg = with_source_options(cfg.geometry, cfg.geometry_convert_options, record["geometry_type"])
    # may fit (e.g. a colour field): autograd on; the training range is what decides unseen surface
    geometry = target.create_from(source, geometry_cfg, views=system.sampler.cfg)
    system.geometry = geometry.to(system.device)
    system.build_optimizers()
    record["into"] = cfg.geometry_type
    system.converted_from = record
    return record


def restore_source_options(system, resume: str | os.PathLike) -> None:
    """A resumed refined run: rebuild ``system.geometry`` with the options of the source type it was
    converted from (its run folder's convert_from.json), as the run's first start built it, so that
    its config (e.g. a Gaussian source's learning rates) is the same before the checkpoint loads."""
    record_path = Path(resume).resolve().parent.parent / RECORD_NAME
    if not record_path.is_file():
        return
    cfg = system.cfg
    source_type = json.loads(record_path.read_text()).get("geometry_type")
    if source_type not in cfg.geometry_convert_options:
        return
    geometry_cfg = with_source_options(cfg.geometry, cfg.geometry_convert_options, source_type)
    system.geometry = lookup("geometry", cfg.geometry_type)(geometry_cfg).to(system.device)
    system.build_optimizers()


def write_record(run_dir: str | os.PathLike, record: dict[str, Any]) -> Path:
    """Write convert_from.json into ``run_dir`` (temp file + rename)."""
    return write_text(Path(run_dir) / RECORD_NAME, json.dumps(record, indent=2) + "\n")
