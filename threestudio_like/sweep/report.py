"""What a sweep shows: the ledger as a table (``status``), and at the end the comparison report of
the finished runs (``threestudio_like.compare``) and their ground-truth table (quality.json)."""
from __future__ import annotations

import csv
import io
import math
import os
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Optional, Sequence

from threestudio_like.sweep.driver import format_duration
from threestudio_like.utils.atomic import write_text

STATUS_COLUMNS = ("state", "tries", "variant", "stage", "seed", "prompt", "wall", "step", "PSNR", "IoU", "run folder / error")
TRUTH_COLUMNS = (("psnr", "PSNR (dB)", "{:.2f}"), ("iou", "IoU", "{:.3f}"), ("depth_error", "depth error", "{:.3f}"),
                 ("chamfer", "Chamfer", "{:.4f}"))


def number(value, fmt: str) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else fmt.format(value)


# --------------------------------------------------------------------------------------------------
# status
# --------------------------------------------------------------------------------------------------
def shorten(text: str, limit: int = 110) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def status_rows(rows: Sequence[dict], sweep_dir: Path) -> list[tuple[str, ...]]:
    table = []
    for row in rows:
        m = row["metrics"]
        where = shorten(row["error"] or "") if row["state"] == "failed" else os.path.relpath(row["run_dir"], sweep_dir)
        table.append((row["state"], str(row["attempts"]), row["variant"], row["stage"], str(row["seed"]), row["prompt"],
                      number(row["wall_s"], "{:.0f} s"), number(m.get("step"), "{:.0f}"), number(m.get("psnr"), "{:.2f}"),
                      number(m.get("iou"), "{:.3f}"), where or ""))
    return table


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell; the last column is left unpadded."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r[:-1], widths)) + "  " + str(r[-1]) for r in [header, *rows]]
    return "\n".join(line.rstrip() for line in lines)


def counts_line(rows: Sequence[dict]) -> str:
    counts = {s: sum(r["state"] == s for r in rows) for s in ("done", "running", "failed", "pending")}
    walls = [r["wall_s"] for r in rows if r["state"] == "done" and r["wall_s"]]
    mean = f", {format_duration(statistics.mean(walls))} per finished job" if walls else ""
    return f"{len(rows)} jobs: " + ", ".join(f"{n} {s}" for s, n in counts.items()) + mean


def status_text(rows: Sequence[dict], sweep_dir: Path) -> str:
    if not rows:
        return f"{sweep_dir}: the ledger holds no jobs"
    return text_table(STATUS_COLUMNS, status_rows(rows, sweep_dir)) + "\n" + counts_line(rows)


# --------------------------------------------------------------------------------------------------
# ground truth
# --------------------------------------------------------------------------------------------------
def truth_rows(rows: Sequence[dict]) -> list[dict]:
    """Finished jobs whose run measured itself against the prior's ground truth (quality.json)."""
    return [r for r in rows if r["state"] == "done" and r["metrics"].get("psnr") is not None]


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows])


def mean_std(values: Sequence[Optional[float]], fmt: str) -> str:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return "—"
    return fmt.format(statistics.mean(finite)) + (f" ± {fmt.format(statistics.stdev(finite))}" if len(finite) > 1 else "")


def ground_truth_summary(rows: Sequence[dict]) -> str:
    """Per variant and stage: mean ± std over prompts and seeds (Markdown)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        groups[(row["variant"], row["stage"])].append(row)
    summary = [(v, s, str(len(g)), *[mean_std([r["metrics"].get(k) for r in g], f) for k, _, f in TRUTH_COLUMNS])
               for (v, s), g in groups.items()]
    return markdown_table(["variant", "stage", "runs", *[h for _, h, _ in TRUTH_COLUMNS]], summary)


def ground_truth_markdown(rows: Sequence[dict]) -> str:
    """The summary, then every run."""
    runs = [(r["variant"], r["stage"], r["prompt"], str(r["seed"]), number(r["metrics"].get("step"), "{:.0f}"),
             *[number(r["metrics"].get(k), f) for k, _, f in TRUTH_COLUMNS], number(r["wall_s"], "{:.0f}")) for r in rows]
    names = [h for _, h, _ in TRUTH_COLUMNS]
    return "\n".join([
        "# Ground truth (embedded prior)", "", "Held-out views and the mesh against the true scene (quality.json of each run).", "",
        ground_truth_summary(rows), "",
        markdown_table(["variant", "stage", "prompt", "seed", "step", *names, "wall (s)"], runs), ""])


def ground_truth_csv(rows: Sequence[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["variant", "stage", "prompt", "seed", "step", *[k for k, _, _ in TRUTH_COLUMNS], "wall_s", "run_dir"])
    for r in rows:
        writer.writerow([r["variant"], r["stage"], r["prompt"], r["seed"], r["metrics"].get("step"),
                         *[r["metrics"].get(k) for k, _, _ in TRUTH_COLUMNS], r["wall_s"], r["run_dir"]])
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------------
# the end-of-sweep report
# --------------------------------------------------------------------------------------------------
def write_report(rows: Sequence[dict], sweep_dir: Path, frames: int, out=None) -> dict[str, Path]:
    """report/: compare.{mp4,png,md} and curves.png over every finished run, ground_truth.{md,csv}.
    Rebuilt only when the set of finished runs changed since the last report."""
    report_dir = sweep_dir / "report"
    done = [r for r in rows if r["state"] == "done" and (Path(r["run_dir"]) / "ckpts" / "last.ckpt").is_file()]
    if not done:
        return {}
    stamp = "\n".join(sorted(f"{r['hash']} {r['updated']}" for r in done)) + "\n"
    stamp_path = report_dir / "runs.txt"
    if stamp_path.is_file() and stamp_path.read_text() == stamp and (report_dir / "compare.md").is_file():
        return {"unchanged": report_dir}
    from threestudio_like import compare  # torch: only when there is something to render

    paths: dict[str, Path] = {}
    truth = truth_rows(done)
    if truth:
        paths["ground truth"] = write_text(report_dir / "ground_truth.md", ground_truth_markdown(truth))
        write_text(report_dir / "ground_truth.csv", ground_truth_csv(truth))
    try:
        args = compare.parse_args([*[r["run_dir"] for r in done], "-o", str(report_dir), "--frames", str(frames)])
        paths.update(compare.compare(args))
    except compare.CompareError as error:
        print(f"warning: no comparison report: {error}", file=out)
    write_text(stamp_path, stamp)
    return paths
