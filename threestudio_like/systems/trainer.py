"""The training loop and everything a run writes: progress, metrics.csv, validation grids,
checkpoints (resumable, also on Ctrl-C), the turntable video, the mesh export and quality.json."""
from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path
from typing import Optional

import torch
from tqdm import tqdm

from threestudio_like.config import TrainerConfig
from threestudio_like.systems import visualize
from threestudio_like.systems.checkpoint import load_checkpoint, save_checkpoint
from threestudio_like.systems.quality import evaluate_quality
from threestudio_like.utils.atomic import write_text


class MetricsLog:
    """Appends rows to metrics.csv; the columns are fixed by the first row (or the existing file)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.columns: Optional[list[str]] = None
        if path.is_file():
            with path.open() as f:
                self.columns = next(csv.reader(f), None)

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
        self.save_dir = self.run_dir / "save"
        self.ckpt_path = self.run_dir / "ckpts" / "last.ckpt"
        self.step = 0
        self.last_export: Optional[Path] = None  # the export folder quality.json measures as the asset

    # --- checkpoints ---------------------------------------------------------------------------
    def save(self) -> Path:
        state = self.system.state()
        state["step"] = self.step
        state["rng"] = torch.get_rng_state()
        return save_checkpoint(state, self.ckpt_path)

    def resume(self, path: str | os.PathLike, with_optimizers: bool = True) -> None:
        state = load_checkpoint(path, map_location=self.system.device)
        self.system.load_state(state, with_optimizers=with_optimizers)
        self.step = int(state["step"])
        if "rng" in state:
            torch.set_rng_state(state["rng"].cpu())
        # schedules (progressive band, timestep annealing, resolution) follow the resumed step
        self.system.update_step(self.step, self.cfg.max_steps)

    # --- the loop --------------------------------------------------------------------------------
    def fit(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        log = MetricsLog(self.run_dir / "metrics.csv")
        bar = tqdm(total=self.cfg.max_steps, initial=self.step, disable=not self.cfg.progress_bar, dynamic_ncols=True, desc="train")
        window_start, window_steps = time.perf_counter(), 0
        try:
            while self.step < self.cfg.max_steps:
                logged = self.system.training_step(self.step, self.cfg.max_steps)
                self.step += 1
                window_steps += 1
                bar.update(1)
                bar.set_postfix(loss=f"{logged['loss']:.4g}", t=f"{logged.get('t', float('nan')):.0f}", refresh=False)
                if self.step % self.cfg.log_every_n_steps == 0 or self.step == self.cfg.max_steps:
                    elapsed = time.perf_counter() - window_start
                    log.write({"step": self.step, "it_per_s": window_steps / max(elapsed, 1e-9), **logged})
                    window_start, window_steps = time.perf_counter(), 0
                if self.step % self.cfg.val_check_interval == 0 or self.step == self.cfg.max_steps:
                    self.validate()
                if self.step % self.cfg.checkpoint_interval == 0 or self.step == self.cfg.max_steps:
                    self.save()
        except KeyboardInterrupt:
            bar.close()
            path = self.save()
            print(f"\ninterrupted at step {self.step}; checkpoint saved to {path} (resume={path})")
            raise
        bar.close()

    # --- outputs ---------------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self) -> Path:
        system = self.system
        cameras = system.sampler.validation_cameras()
        out = system.render(cameras, with_normal=True)
        return visualize.write_image(self.save_dir / f"it{self.step}-val.png", visualize.grid_image(out))

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
        return visualize.write_video(self.save_dir / f"it{self.step}-test.mp4", frames)

    def export(self) -> dict[str, Path]:
        from threestudio_like.export import export_geometry

        paths = export_geometry(self.system.geometry, self.save_dir / f"it{self.step}-export", self.system.cfg.exporter)
        write_splats = getattr(self.system.geometry, "write_splat_ply", None)
        if write_splats is not None:
            paths["splats"] = write_splats(Path(paths["dir"]) / "splats.ply")
        self.last_export = Path(paths["dir"])
        return paths

    def quality(self) -> Optional[Path]:
        result = evaluate_quality(self.system, export_dir=self.last_export)
        if result is None:
            return None
        result["step"] = self.step
        path = self.run_dir / "quality.json"
        return write_text(path, json.dumps(result, indent=2) + "\n")
