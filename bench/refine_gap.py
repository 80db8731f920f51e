"""Where a refined asset's PSNR goes: the colour or the outline (docs/BENCHMARKS.md, "Refinement").

    python bench/refine_gap.py <texture-stage run folder> [...] [--json FILE]

Each run's chain is followed back through convert_from.json (texture stage → geometry stage →
stage 1). On the asset's views (quality.json's: the held-out views at ``asset_resolution``), against
the true views, it measures
- the stage-1 field, the geometry stage's field and the texture stage's field (their own renders),
- the asset (the exported GLB read back, textured, rendered as quality.json renders it),
- the outline bound: the GLB's mesh coloured with the TRUE shaded colour at the closest point of the
  true surface — what the asset would score if its texture were perfect, so the gap between the bound
  and the stage-1 field is the geometry's,
and splits each one's squared error by where the pixels lie: inside both masks (colour), in the true
mask only (the outline misses them), in the render's only (extra surface), in neither (soft edges).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import trimesh
from torch import Tensor

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from threestudio_like.utils.atomic import write_text  # noqa: E402

REGIONS = ("both", "truth_only", "render_only", "neither")


def region_errors(rgb: Tensor, mask: Tensor, truth_rgb: Tensor, truth_mask: Tensor) -> dict[str, float]:
    """PSNR of rgb [B,H,W,3] against truth_rgb, PSNR inside both masks (> 0.5; [B,H,W,1] each), each
    region's share of the summed squared error and its pixel count."""
    err = ((rgb.double() - truth_rgb.double()) ** 2).mean(-1)
    ours, true = mask[..., 0] > 0.5, truth_mask[..., 0] > 0.5
    regions = {"both": ours & true, "truth_only": true & ~ours, "render_only": ours & ~true, "neither": ~ours & ~true}
    total = float(err.sum())
    out = {"psnr": -10.0 * float(torch.log10(err.mean())),
           "psnr_inside": -10.0 * float(torch.log10(err[regions["both"]].mean()))}
    for name in REGIONS:
        out[f"share_{name}"] = float(err[regions[name]].sum()) / total if total > 0 else 0.0
        out[f"pixels_{name}"] = int(regions[name].sum())
    return out


def true_colour_render(mesh: trimesh.Trimesh, scene, cameras, supersample: int = 2) -> dict[str, Tensor]:
    """The mesh rendered with the true scene's shaded colour at the closest true surface point of each
    pixel's surface point (white background; pixel-averaged over ``supersample``²) → rgb, mask."""
    from threestudio_like.priors.scenes import AMBIENT, light_direction
    from threestudio_like.priors.sdf import sdf_normals, shade
    from threestudio_like.renderers.rasterize import clip_positions, interpolate, rasterize

    fine = cameras.with_resolution(cameras.width * supersample, cameras.height * supersample)
    vertices = torch.as_tensor(np.asarray(mesh.vertices), dtype=torch.float32)
    faces = torch.as_tensor(np.asarray(mesh.faces), dtype=torch.long)
    rast = rasterize(clip_positions(vertices, fine), faces, fine.height, fine.width, backend="torch")
    world = interpolate(vertices.expand(len(fine), -1, -1), rast, faces, backend="torch")
    covered = rast[..., 3] > 0
    points = closest_surface_points(scene, world[covered])
    rgb = torch.ones(len(fine), fine.height, fine.width, 3)
    rgb[covered] = shade(scene.albedo(points), sdf_normals(scene.sdf, points), light_direction(), AMBIENT)
    pool = lambda x: F.avg_pool2d(x.permute(0, 3, 1, 2), supersample).permute(0, 2, 3, 1)  # noqa: E731
    return {"rgb": pool(rgb), "mask": pool(covered[..., None].float())}


def closest_surface_points(scene, points: Tensor, projections: int = 3) -> Tensor:
    """points [N,3] moved onto the true surface along the SDF gradient (p ← p − sdf(p)·∇sdf)."""
    from threestudio_like.priors.sdf import sdf_normals

    for _ in range(projections):
        points = points - scene.sdf(points)[:, None] * sdf_normals(scene.sdf, points)
    return points


def load_run(run: Path):
    """The system of a finished run folder, its last checkpoint loaded (no training state)."""
    from threestudio_like.cli import build, seed_everything
    from threestudio_like.config import load_config

    checkpoint = run / "ckpts" / "last.ckpt"
    cfg = dataclasses.replace(load_config(run / "configs" / "parsed.yaml"), resume=str(checkpoint))
    seed_everything(cfg.seed)
    system, trainer_cls = build(cfg, torch.device("cpu"))
    trainer_cls(system, cfg.trainer, run).resume(checkpoint, with_optimizers=False)
    return system


def chain_of(run: Path) -> list[Path]:
    """[stage 1, …, run]: the run folders ``run`` was converted from, through convert_from.json."""
    chain = [run]
    while (chain[0] / "convert_from.json").exists():
        chain.insert(0, Path(json.loads((chain[0] / "convert_from.json").read_text())["run"]))
    return chain


@torch.no_grad()
def decompose(run: Path) -> dict:
    """The measures of the module docstring for one texture-stage run folder."""
    from threestudio_like.export import load_export, render_mesh
    from threestudio_like.systems.quality import held_out_cameras

    chain = chain_of(run)
    last = load_run(run)
    cfg = last.cfg.quality
    cameras = held_out_cameras(last.sampler, cfg.n_views, cfg.elevation).with_resolution(cfg.asset_resolution, cfg.asset_resolution)
    scene = last.prior.scene(last.prompt.text)
    truth = scene.render(cameras)
    source = json.loads((chain[1] / "convert_from.json").read_text())["geometry_type"] if len(chain) > 1 else "?"
    result = {"run": str(run), "chain": [str(p) for p in chain], "method": last.cfg.guidance_type, "source": source}
    for name, folder in zip(("stage1_field", "geometry_field", "texture_field")[-len(chain):], chain):
        system = last if folder == run else load_run(folder)
        out = system.render(cameras)
        result[name] = region_errors(out["rgb"], out["opacity"], truth["rgb"], truth["mask"])
    mesh = load_export(sorted((run / "save").glob("it*-export"))[-1])
    asset = render_mesh(mesh, cameras, supersample=2)
    result["asset"] = region_errors(asset["rgb"], asset["mask"], truth["rgb"], truth["mask"])
    bound = true_colour_render(mesh, scene, cameras)
    result["outline_bound"] = region_errors(bound["rgb"], bound["mask"], truth["rgb"], truth["mask"])
    return result


def table(results: list[dict]) -> str:
    """Markdown: one row per run."""
    head = ("| source | method | stage-1 field | geometry-stage field | texture-stage field | asset | outline bound | "
            "asset inside both masks | asset's error on truth-only pixels | truth-only pixels: stage-1 field / asset |")
    rows = [head, "|" + "---|" * 10]
    for r in results:
        cells = [r["source"], r["method"]]
        cells += [f"{r[k]['psnr']:.2f}" if k in r else "–" for k in ("stage1_field", "geometry_field", "texture_field", "asset", "outline_bound")]
        cells += [f"{r['asset']['psnr_inside']:.2f}", f"{100 * r['asset']['share_truth_only']:.0f} %",
                  f"{r['stage1_field']['pixels_truth_only']} / {r['asset']['pixels_truth_only']}" if "stage1_field" in r else "–"]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", help="texture-stage run folders")
    parser.add_argument("--json", help="write the measures to this file")
    args = parser.parse_args(argv)
    missing = [r for r in args.runs if not (Path(r) / "configs" / "parsed.yaml").exists()]
    if missing:
        print(f"error: {missing[0]!r} is not a run folder (no configs/parsed.yaml); give texture-stage run folders", file=sys.stderr)
        return 2
    results = [decompose(Path(r)) for r in args.runs]
    if args.json:
        write_text(Path(args.json), json.dumps(results, indent=1) + "\n")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
