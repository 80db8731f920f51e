"""Does the exported mesh look like the run's own renders?

For a finished run: loads its last checkpoint, renders the trained geometry and the exported GLB
(read back from disk) from the same held-out cameras, and prints mask IoU and texture PSNR between
them, plus the Chamfer distance from the mesh to the ground-truth surface when the prior knows it.

    python bench/export_fidelity.py outputs/sds-nerf/<run> [--views 8] [--resolution 128]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from threestudio_like import metrics  # noqa: E402
from threestudio_like.cli import build  # noqa: E402
from threestudio_like.config import load_config  # noqa: E402
from threestudio_like.data.cameras import orbit_cameras  # noqa: E402
from threestudio_like.export.preview import load_export, render_mesh  # noqa: E402
from threestudio_like.systems.checkpoint import load_checkpoint  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--views", type=int, default=8)
    parser.add_argument("--resolution", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(1)

    cfg = load_config(args.run_dir / "configs/parsed.yaml", ["trainer.progress_bar=false"])
    system, _ = build(cfg, torch.device("cpu"))
    state = load_checkpoint(args.run_dir / "ckpts/last.ckpt")
    system.load_state(state, with_optimizers=False)
    exports = sorted((args.run_dir / "save").glob(f"it{state['step']}-export*"))
    if not exports:
        print(f"error: no export of step {state['step']} in {args.run_dir / 'save'}", file=sys.stderr)
        return 2
    mesh = load_export(exports[-1], "model.glb")

    n = args.views
    cameras = orbit_cameras(n, 20.0, cfg.data.eval_camera_distance, cfg.data.eval_fovy, args.resolution, args.resolution,
                            azimuth_offset=0.5)
    with torch.no_grad():
        ours = system.render(cameras)
    preview = render_mesh(mesh, cameras, supersample=2)
    rows = [
        ("views", f"{n} at {args.resolution}², elevation 20°"),
        ("mesh faces", f"{len(mesh.faces)}"),
        ("mask IoU (mesh vs field)", f"{float(metrics.mask_iou(preview['mask'], ours['opacity'])):.3f}"),
        ("texture PSNR (mesh vs field)", f"{float(metrics.psnr(preview['rgb'], ours['rgb'])):.2f} dB"),
    ]
    if hasattr(system.prior, "scene"):
        truth = system.prior.scene(system.prompt.text).surface_points(20000)
        points = torch.as_tensor(mesh.sample(20000), dtype=torch.float32)
        rows.append(("Chamfer (mesh vs true surface)", f"{float(metrics.chamfer_distance(points, torch.as_tensor(truth))):.4f}"))
    print("| measure | value |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
