"""The run page and the index page: HTML written from a run folder's files (see facts.py)."""
from __future__ import annotations

import html
import math
import os
from pathlib import Path
from string import Template
from typing import Any, Optional, Sequence

from threestudio_like import plots
from threestudio_like.compare import flatten
from threestudio_like.page import assets
from threestudio_like.page.facts import PageError, RunFiles, find_runs, read_run
from threestudio_like.page.templates import INDEX_PAGE, RUN_PAGE
from threestudio_like.utils.atomic import write_bytes

__all__ = ["PageError", "write_run_page", "write_index_page", "write_pages"]
HEADLINE_KEYS = (("prompt", "system.prompt_processor.prompt"), ("guidance", "system.guidance_type"),
                 ("geometry", "system.geometry_type"), ("prior", "system.prior_type"), ("steps", "trainer.max_steps"))


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def link(target: Path, start: Path) -> str:
    """A relative URL from folder ``start`` to ``target`` (forward slashes, escaped)."""
    return esc(Path(os.path.relpath(target, start)).as_posix())


def number(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return esc(value)


def table(rows: Sequence[tuple[Any, Any]], css: str = "kv") -> str:
    """A two-column HTML table; values are escaped (pass pre-built HTML as ``Markup``)."""
    body = "".join(f"<tr><th>{esc(k)}</th><td>{v if isinstance(v, Markup) else number(v)}</td></tr>" for k, v in rows)
    return f'<table class="{css}">{body}</table>'


class Markup(str):
    """HTML that ``table`` inserts as is."""


def write_curves(run: RunFiles, out_dir: Path) -> Optional[Path]:
    """curves.png: |loss| terms vs step (metrics.csv), held-out PSNR and IoU vs step (curve.csv)."""
    steps = run.metrics.get("step")
    panels = []
    if steps:
        terms = {key: (steps, [abs(v) for v in values]) for key, values in run.metrics.items()
                 if key == "loss" or key.startswith("loss_")}
        if terms:
            panels.append({"ylabel": "|loss| (metrics.csv)", "series": terms, "log": True})
    if run.curve.get("step") and "psnr" in run.curve:
        panels.append({"ylabel": "held-out PSNR (dB)", "series": {"psnr": (run.curve["step"], run.curve["psnr"])}})
        if "iou" in run.curve:
            panels.append({"ylabel": "held-out mask IoU", "series": {"iou": (run.curve["step"], run.curve["iou"])}})
    return plots.plot_panels(out_dir / "curves.png", panels, title=run.path.name) if panels else None


def viewer_section(run: RunFiles, out_dir: Path) -> tuple[str, str]:
    """(HTML of the 3D viewer section, scripts for <head>): model-viewer over the embedded GLB."""
    if run.glb is None:
        return "<p class=note>No exported mesh (model.glb) in this run yet.</p>", ""
    viewer = assets.model_viewer_script()
    download = f'<a href="{link(run.glb, out_dir)}">model.glb</a>'
    if viewer is None:
        return (f"<p class=note>The 3D viewer is not installed (run <code>make web</code>, which installs "
                f"@google/model-viewer from the npm registry, then write the page again). The asset: {download}.</p>", "")
    assets.copy_if_changed(viewer, out_dir / "model-viewer.min.js")
    assets.asset_script(run.glb, out_dir / "model.glb.js", "model.glb")
    html_ = ('<model-viewer id="asset-viewer" camera-controls auto-rotate rotation-per-second="30deg" '
             'interaction-prompt="none" shadow-intensity="1" exposure="1.1" environment-image="neutral" '
             f'alt="the exported asset" data-asset="model.glb"></model-viewer><p>{download} · drag to turn, '
             'scroll to zoom</p>')
    return html_, '<script src="model-viewer.min.js"></script><script src="model.glb.js"></script>'


def splat_section(run: RunFiles, out_dir: Path) -> tuple[str, str]:
    """(HTML, head scripts) of the splat viewer, for runs whose export holds splats.ply."""
    if run.splats is None:
        return "", ""
    up = run.export_info.get("splat_up", "-y")
    assets.copy_if_changed(assets.SPLAT_VIEWER, out_dir / "splat-viewer.js")
    assets.asset_script(run.splats, out_dir / "splats.ply.js", "splats.ply")
    body = (f'<h2>Gaussians</h2><canvas id="splat-viewer" width="512" height="512" data-asset="splats.ply" '
            f'data-up="{up}"></canvas><p><a href="{link(run.splats, out_dir)}">splats.ply</a> (standard 3DGS file, '
            f'{"−Y" if up == "-y" else "+Y"} up) · drag to turn, scroll to zoom</p>')
    return body, '<script src="splat-viewer.js"></script><script src="splats.ply.js"></script>'


def media_section(run: RunFiles, out_dir: Path) -> str:
    parts = []
    if run.turntable is not None:
        parts.append(f'<figure><video id="turntable" src="{link(run.turntable, out_dir)}" controls autoplay loop muted '
                     f'playsinline></video><figcaption>turntable: {esc(run.turntable.name)}</figcaption></figure>')
    if run.validation is not None:
        parts.append(f'<figure><img id="validation" src="{link(run.validation, out_dir)}" alt="validation grid">'
                     f'<figcaption>validation: {esc(run.validation.name)} (rgb · opacity · normals)</figcaption></figure>')
    return "".join(parts) or "<p class=note>No validation grid or turntable yet.</p>"


def export_rows(run: RunFiles, out_dir: Path) -> list[tuple[Any, Any]]:
    info = run.export_info
    rows: list[tuple[Any, Any]] = [(k, info[k]) for k in ("vertices", "faces", "watertight", "texture_size", "placement", "up") if k in info]
    if info.get("atlas_coverage") is not None:
        rows.append(("atlas coverage", f"{100 * info['atlas_coverage']:.1f} %"))
    files = " ".join(f'<a href="{link(run.export_dir / name, out_dir)}">{esc(name)}</a>' for name in info.get("files", []))
    return rows + ([("files", Markup(files))] if files else [])


def write_run_page(run_dir: str | os.PathLike, out_dir: Optional[str | os.PathLike] = None) -> Path:
    """Write ``index.html`` (and what it needs) for the run in ``run_dir`` into ``out_dir``
    (default ``run_dir/page``). Returns the page's path."""
    run = read_run(Path(run_dir))
    out = Path(out_dir) if out_dir is not None else run.path / "page"
    out.mkdir(parents=True, exist_ok=True)
    viewer_html, viewer_head = viewer_section(run, out)
    splat_html, splat_head = splat_section(run, out)
    curves = write_curves(run, out)
    headline = [(label, run.get(key)) for label, key in HEADLINE_KEYS if run.get(key) is not None]
    page = Template(RUN_PAGE).substitute(
        title=esc(run.get("system.prompt_processor.prompt") or run.path.name), run=esc(run.path.name),
        head=viewer_head + splat_head, headline=table(headline), viewer=viewer_html, splats=splat_html,
        media=media_section(run, out),
        curves=f'<img id="curves" src="{curves.name}" alt="training curves">' if curves else "<p class=note>No metrics.csv yet.</p>",
        quality=table(list(flatten(run.quality).items())) if run.quality else "<p class=note>No quality.json (a prior without ground truth, or not finished).</p>",
        export=table(export_rows(run, out)) if run.export_info else "<p class=note>No export yet.</p>",
        config=table(sorted(flatten(run.config).items()), css="kv config"),
    )
    return write_bytes(out / "index.html", page.encode("utf-8"))


def index_row(run: RunFiles, page: Path, out_dir: Path) -> str:
    thumb = f'<img src="{link(run.validation, out_dir)}" alt="">' if run.validation else ""
    cells = [f'<a href="{link(page, out_dir)}">{thumb}</a>',
             f'<a href="{link(page, out_dir)}">{esc(run.path.parent.name)}/{esc(run.path.name)}</a>']
    cells += [number(run.get(key, "")) for _, key in HEADLINE_KEYS]
    cells += [number(run.quality.get(key, "")) for key in ("psnr", "iou", "chamfer")]
    return "<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"


def write_index_page(run_dirs: Sequence[str | os.PathLike], out_dir: str | os.PathLike) -> Path:
    """Write every run's own page, then ``out_dir/index.html``: one row per run, linking to its page."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for path in find_runs([Path(p) for p in run_dirs]):
        page = write_run_page(path)
        rows.append(index_row(read_run(path), page, out))
    header = "".join(f"<th>{esc(h)}</th>" for h in ["", "run", *(label for label, _ in HEADLINE_KEYS), "PSNR", "IoU", "Chamfer"])
    text = Template(INDEX_PAGE).substitute(count=len(rows), header=header, rows="".join(rows))
    return write_bytes(out / "index.html", text.encode("utf-8"))


def write_pages(paths: Sequence[str | os.PathLike], out_dir: Optional[str | os.PathLike] = None) -> list[Path]:
    """The command's work: one run without ``-o`` → its page; otherwise every run's page plus an index
    in ``out_dir`` (default: the folders' common parent). Returns the pages to open first."""
    runs = find_runs([Path(p) for p in paths])
    if len(runs) == 1 and out_dir is None and Path(paths[0]) == runs[0]:
        return [write_run_page(runs[0])]
    target = Path(out_dir) if out_dir is not None else Path(os.path.commonpath([str(p.resolve()) for p in map(Path, paths)]))
    return [write_index_page(runs, target)]
