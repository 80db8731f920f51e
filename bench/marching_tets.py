"""Time of one DMTet surface step on the CPU: marching tetrahedra, the mesh regularisers, backward.

The colour field and the rasterizer are left out (their cost depends on the image size, not the grid).

    python -m bench.marching_tets [--resolutions 32 48 64] [--repeats 5]

The grid holds the ball-on-box scene's signed distance (fitted lattice box, a random deformation),
as after ``create_from`` of a coarse run; prints one markdown table row per resolution (median ms).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from threestudio_like.config import parse_structured
from threestudio_like.geometry.mesh import laplacian_smoothness, normal_consistency
from threestudio_like.registry import lookup

CPU_ENCODING = {"n_levels": 8, "log2_hashmap_size": 15, "base_resolution": 16, "per_level_scale": 1.3459, "start_level": 8}


def ball_on_box(points: torch.Tensor) -> torch.Tensor:
    """Signed distance [N] (positive inside) of a ball (r 0.25 at z 0.2) resting on a box."""
    ball = 0.25 - (points - torch.tensor([0.0, 0.0, 0.2])).norm(dim=-1)
    q = (points - torch.tensor([0.0, 0.0, -0.2])).abs() - torch.tensor([0.4, 0.3, 0.15])
    box = -(q.clamp_min(0).norm(dim=-1) + q.max(-1).values.clamp_max(0))
    return torch.maximum(ball, box)


def make_grid(resolution: int):
    cls = lookup("geometry", "tetrahedra-sdf-grid")
    grid = cls(parse_structured(cls.Config, {"isosurface_resolution": resolution, "pos_encoding": CPU_ENCODING},
                                "system.geometry"))
    grid.set_lattice_box(torch.tensor([0.0, 0.0, 0.05]), 0.55)
    points = grid.lattice_points(torch.arange(grid.sdf.shape[0]))
    grid.set_sdf_cells(ball_on_box(points) / grid.cell)
    with torch.no_grad():
        grid.deformation.normal_(0.0, 0.3, generator=torch.Generator().manual_seed(0))
    return grid


def time_step(grid) -> tuple[float, float, int]:
    """(forward ms, forward + regularisers + backward ms, faces) of one step."""
    start = time.perf_counter()
    mesh = grid.isosurface()
    extracted = time.perf_counter()
    loss = normal_consistency(mesh) + laplacian_smoothness(mesh) + mesh.v_pos.sum()  # + a stand-in image loss
    loss.backward()
    done = time.perf_counter()
    grid.zero_grad(set_to_none=True)
    return (extracted - start) * 1e3, (done - start) * 1e3, mesh.n_faces


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolutions", type=int, nargs="+", default=[32, 48, 64])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print("| resolution | lattice vertices | faces | marching tets (ms) | + regularisers + backward (ms) |")
    print("|---|---|---|---|---|")
    for resolution in args.resolutions:
        grid = make_grid(resolution)
        time_step(grid)  # warm-up
        runs = [time_step(grid) for _ in range(args.repeats)]
        forward = statistics.median(r[0] for r in runs)
        total = statistics.median(r[1] for r in runs)
        print(f"| {resolution} | {(resolution + 1) ** 3} | {runs[0][2]} | {forward:.0f} | {total:.0f} |")


if __name__ == "__main__":
    main()
