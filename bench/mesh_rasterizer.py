"""Time the mesh rasterizer's pure functions (rasterize → interpolate → antialias, then backward).

A UV sphere of radius 0.5 seen from B cameras 1.5 away (fovy 50°, the refinement stage's framing)
covers about a third of the image. Prints a Markdown table of median milliseconds per pass: each
stage's process CPU time (what the pass costs on one free core: the machine may be shared), the
total CPU and the total wall time, with the machine's load average.

    OMP_NUM_THREADS=1 python bench/mesh_rasterizer.py [--device cpu|cuda] [--repeats 7]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import trimesh

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from threestudio_like.data.cameras import make_cameras  # noqa: E402
from threestudio_like.renderers.antialias import antialias  # noqa: E402
from threestudio_like.renderers.rasterize import clip_positions, interpolate, rasterize  # noqa: E402

SPHERE_SEGMENTS = {10_000: 51, 50_000: 113}  # uv_sphere(count=[n, n]) has about 4n(n − 2) faces


def one_pass(vertices: torch.Tensor, faces: torch.Tensor, cameras, resolution: int) -> dict[str, float]:
    """Seconds (wall, CPU) of each stage of one forward + backward pass."""
    clocks, marks = (time.perf_counter, time.process_time), []

    def mark() -> None:
        if vertices.is_cuda:
            torch.cuda.synchronize()
        marks.append([clock() for clock in clocks])

    v = vertices.detach().requires_grad_(True)
    mark()
    pos_clip = clip_positions(v, cameras)
    rast = rasterize(pos_clip, faces, resolution, resolution)
    mark()
    color = interpolate(torch.cat([v, torch.ones_like(v[:, :1])], -1), rast, faces)
    mark()
    image = antialias(color, rast, pos_clip, faces)
    mark()
    image.square().sum().backward()
    mark()
    stages = ("rasterize", "interpolate", "antialias", "backward")
    return {f"{stage} {kind}": marks[i + 1][k] - marks[i][k]
            for i, stage in enumerate(stages) for k, kind in enumerate(("wall", "cpu"))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()}; torch threads {torch.get_num_threads()}; device {args.device}")
    print("| faces | batch | resolution | rasterize | interpolate | antialias | backward | total CPU | total wall |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n_faces, segments in SPHERE_SEGMENTS.items():
        sphere = trimesh.creation.uv_sphere(radius=0.5, count=[segments, segments])
        vertices = torch.tensor(sphere.vertices, dtype=torch.float32, device=args.device)
        faces = torch.tensor(sphere.faces, device=args.device)
        for batch in (1, 4):
            for resolution in (64, 128):
                cameras = make_cameras(torch.full((batch,), 15.0), torch.arange(batch) * 90.0, torch.full((batch,), 1.5),
                                       torch.full((batch,), 50.0), resolution, resolution).to(args.device)
                one_pass(vertices, faces, cameras, resolution)  # warm-up
                runs = [one_pass(vertices, faces, cameras, resolution) for _ in range(args.repeats)]
                ms = {key: 1e3 * statistics.median(run[key] for run in runs) for key in runs[0]}
                wall = 1e3 * statistics.median(sum(v for k, v in run.items() if k.endswith("wall")) for run in runs)
                cpu = 1e3 * statistics.median(sum(v for k, v in run.items() if k.endswith("cpu")) for run in runs)
                stages = " | ".join(f"{ms[f'{s} cpu']:.1f}" for s in ("rasterize", "interpolate", "antialias", "backward"))
                print(f"| {len(faces)} | {batch} | {resolution}² | {stages} | {cpu:.1f} | {wall:.1f} |", flush=True)
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
