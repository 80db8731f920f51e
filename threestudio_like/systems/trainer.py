"""The training loop and everything a run writes: progress, metrics.csv, validation grids,
checkpoints (resumable, also on Ctrl-C and SIGTERM), the turntable video, the mesh export and
quality.json.

A run stops early, with one line and the last good checkpoint kept, when a signal arrives (see
``utils/stop.py``), when a file cannot be written (disk full, read-only), when its weights turn
non-finite, or when most of its steps had to be skipped for a non-finite loss or gradient.
"""
from __future__ import annotations

import csv
import io
import json
import os
import signal
import time
from pathlib import Path
from typing import Optional

import torch
from tqdm import tqdm

from threestudio_like.config import TrainerConfig
from threestudio_like.systems import visualize
from threestudio_like.systems.checkpoint import checkpoint_meta, load_checkpoint, load_into, save_checkpoint
from threestudio_like.systems.quality import evaluate_quality
from threestudio_like.systems.tensorboard import TensorBoardLog
from threestudio_like.utils.atomic import WriteError, describe, write_text
from threestudio_like.utils.finite import all_finite
from threestudio_like.utils.stop import DeferredSignals, RunStopped, exit_code

# a run that skipped more than half of its steps (after at least this many) has diverged
MIN_STEPS_BEFORE_GIVING_UP = 10


class MetricsLog:
    """Appends rows to metrics.csv; the columns are fixed by the first row (or the existing file)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.columns: Optional[list[str]] = None
        if path.is_file():
            with path.open() as f:
                self.columns = next(csv.reader(f), None)

    def keep_until(self, step: int) -> None:
        """Drop the rows after ``step`` (those a resumed run is about to write again) and any torn
        last line a crash left, so that the file holds each step once."""
        if not self.path.is_file() or self.columns is None:
            return
        with self.path.open(newline="") as f:
            rows = list(csv.DictReader(f))
        kept = [r for r in rows if r.get("step", "").isdigit() and int(r["step"]) <= step and None not in r.values()]
        if len(kept) == len(rows):
            return
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=self.columns, lineterminator="\r\n")
        writer.writeheader()
        writer.writerows(kept)
        write_text(self.path, buffer.getvalue())

    def write(self, row: dict[str, float]) -> None:
        new = self.columns is None
        if new:
            self.columns = ["step"] + sorted(k for k in row if k != "step")
        with self.path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.columns, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(row)


class Trainer:
    """Runs a system for ``cfg.max_steps`` steps inside ``run_dir``."""

    def __init__(self, system, cfg: TrainerConfig, run_dir: str | os.PathLike) -> None:
        self.system, self.cfg = system, cfg
        self.run_dir = Path(run_dir)
        self.step = 0
        self.last_export: Optional[Path] = None  # the export folder quality.json measures as the asset
        self.saved_step: Optional[int] = None  # the step of the last checkpoint on disk
        self.config_file: Optional[str] = None  # the run's config file that made the checkpoints
        self.resumed_config_file: Optional[str] = None  # the one recorded in the resumed checkpoint
        self.board: Optional[TensorBoardLog] = None  # opened by fit, once run_dir is the run's own folder

    @property
    def save_dir(self) -> Path:
        return self.run_dir / "save"

    @property
    def ckpt_path(self) -> Path:
        return self.run_dir / "ckpts" / "last.ckpt"

    # --- checkpoints ---------------------------------------------------------------------------
    def save(self) -> Path:
        """Checkpoint the current step boundary; refuses (RunStopped) to overwrite a good
        checkpoint with non-finite weights."""
        if not weights_are_finite(self.system):
            raise RunStopped(
                f"the weights turned non-finite by step {self.step} (learning rate too high?); training stopped; "
                f"{self.kept_checkpoint()}", 1,
            )
        state = self.system.state()
        state["step"] = self.step
        state["rng"] = torch.get_rng_state()
        state["counters"] = {"skipped_steps": int(self.system.skipped_steps)}
        state["meta"] = checkpoint_meta(self.system, self.config_file)
        path = save_checkpoint(state, self.ckpt_path)
        self.saved_step = self.step
        return path

    def kept_checkpoint(self) -> str:
        if self.saved_step is None:
            return "no checkpoint was written"
        return f"the last good checkpoint (step {self.saved_step}) is kept: resume={self.ckpt_path}"

    def resume(self, path: str | os.PathLike, with_optimizers: bool = True) -> None:
        state = load_checkpoint(path, map_location=self.system.device)
        load_into(self.system, state, path, with_optimizers=with_optimizers)
        self.step = self.saved_step = int(state["step"])
        self.system.skipped_steps = int(state.get("counters", {}).get("skipped_steps", 0))
        self.resumed_config_file = state.get("meta", {}).get("config")
        if "rng" in state:
            torch.set_rng_state(state["rng"].cpu())
        if not with_optimizers:
            # schedules (progressive band, timestep annealing, resolution) follow the resumed step;
            # a training run's first step does this itself (doing it here too would refresh the
            # occupancy grid twice at a multiple of grid_update_every and break exact resume)
            self.system.update_step(self.step, self.cfg.max_steps)

    # --- the loop --------------------------------------------------------------------------------
    def fit(self) -> None:
        """Train up to ``max_steps``; raises :class:`RunStopped` when the run ends early."""
        bar = tqdm(total=self.cfg.max_steps, initial=self.step, disable=not self.cfg.progress_bar, dynamic_ncols=True, desc="train")
        signals = DeferredSignals()
        try:
            with signals:
                self.run_dir.mkdir(parents=True, exist_ok=True)
                log = MetricsLog(self.run_dir / "metrics.csv")
                if self.cfg.tensorboard and self.board is None:
                    self.board = TensorBoardLog(self.run_dir / "tensorboard")
                log.keep_until(self.step)
                self.loop(log, bar, signals)
        except KeyboardInterrupt:  # a second signal, mid-step: that step cannot be saved
            code = exit_code(signals.signum or signal.SIGINT)
            raise RunStopped(f"interrupted again at step {self.step}: the step in progress was dropped; {self.kept_checkpoint()}", code) from None
        except (WriteError, OSError) as error:
            raise RunStopped(f"cannot write into {str(self.run_dir)!r} ({describe(error)}); training stopped at step {self.step}; "
                             f"{self.kept_checkpoint()}", 1) from None
        finally:
            bar.close()
            if self.board is not None:
                self.board.flush()

    def loop(self, log: MetricsLog, bar: tqdm, signals: DeferredSignals) -> None:
        window_start, window_steps = time.perf_counter(), 0
        while self.step < self.cfg.max_steps:
            logged = self.system.training_step(self.step, self.cfg.max_steps)
            self.step += 1
            window_steps += 1
            bar.update(1)
            bar.set_postfix(loss=f"{logged['loss']:.4g}", t=f"{logged.get('t', float('nan')):.0f}", refresh=False)
            if self.step % self.cfg.log_every_n_steps == 0 or self.step == self.cfg.max_steps:
                elapsed = time.perf_counter() - window_start
                row = {"step": self.step, "it_per_s": window_steps / max(elapsed, 1e-9), **logged}
                log.write(row)
                if self.board is not None:
                    self.board.scalars(self.step, row)
                window_start, window_steps = time.perf_counter(), 0
            self.check_progress()
            if self.step % self.cfg.val_check_interval == 0 or self.step == self.cfg.max_steps:
                self.validate()
            if self.step % self.cfg.checkpoint_interval == 0 or self.step == self.cfg.max_steps:
                self.save()
            if signals.signum is not None:
                path = self.save() if self.saved_step != self.step else self.ckpt_path
                raise RunStopped(f"{signals.name} at step {self.step}: checkpoint saved, continue with resume={path}", exit_code(signals.signum))

    def check_progress(self) -> None:
        """Stop a run that skips most of its steps: it learns nothing, and would end 'successfully'."""
        skipped = int(self.system.skipped_steps)
        if self.step >= MIN_STEPS_BEFORE_GIVING_UP and skipped * 2 > self.step:
            raise RunStopped(
                f"{skipped} of {self.step} steps had a non-finite loss or gradient and were skipped (guidance_scale or a "
                f"learning rate too large?); training stopped; {self.kept_checkpoint()}", 1,
            )

    # --- outputs ---------------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self) -> Path:
        system = self.system
        cameras = system.sampler.validation_cameras()
        out = system.render(cameras, with_normal=True)
        grid = visualize.grid_image(out)
        path = visualize.write_image(self.save_dir / f"it{self.step}-val.png", grid)
        self.record_validation(grid)
        return path

    def record_validation(self, grid) -> None:
        """Held-out metrics at this step into curve.csv (priors that know the truth), and TensorBoard."""
        held_out = evaluate_quality(self.system, with_chamfer=False)
        if held_out is not None:
            held_out = {"step": self.step, **{k: v for k, v in held_out.items() if k != "chamfer"}}
            MetricsLog(self.run_dir / "curve.csv").write(held_out)
        if self.board is not None:
            self.board.image("validation", self.step, grid)
            if held_out is not None:
                self.board.scalars(self.step, held_out, prefix="held_out")

    @torch.no_grad()
    def test(self) -> Path:
        """Turntable video of the current state: rgb beside normals."""
        system = self.system
        cameras = system.sampler.test_cameras()
        frames = []
        for i in tqdm(range(len(cameras)), desc="turntable", disable=not self.cfg.progress_bar, leave=False):
            out = system.render(cameras[i], with_normal=True)
            normal = (out["normal"] * 0.5 + 0.5) * out["opacity"] + (1.0 - out["opacity"])
            frames.append(visualize.to_uint8(torch.cat([out["rgb"][0], normal[0]], dim=1)))
        return visualize.write_video(self.save_dir / f"it{self.step}-test.mp4", frames, fps=self.cfg.video_fps)

    def export(self) -> dict[str, Path]:
        from threestudio_like.export import TrainingViews, export_geometry
        from threestudio_like.renderers.background import SolidColorBackground

        system = self.system
        solid = system.background.cfg.color if isinstance(system.background, SolidColorBackground) else None
        seen_by = TrainingViews(system.sampler.cfg, solid)  # what the views saw, for exporter.fill_unseen
        paths = export_geometry(system.geometry, self.save_dir / f"it{self.step}-export", system.cfg.exporter, seen_by)
        self.last_export = Path(paths["dir"])
        return paths

    def quality(self) -> Optional[Path]:
        result = evaluate_quality(self.system, export_dir=self.last_export)
        if result is None:
            return None
        result["step"] = self.step
        path = self.run_dir / "quality.json"
        return write_text(path, json.dumps(result, indent=2) + "\n")


def weights_are_finite(system) -> bool:
    """No NaN or inf among the trainable weights (geometry, background, the guidance's own network)."""
    tensors = [p.detach() for opt in system.optimizers.values() for group in opt.param_groups for p in group["params"]]
    return all_finite(tensors)
