"""What a run folder holds, found by file name: the newest validation grid, turntable and export,
the config, metrics and quality files. Pure reading; nothing is rendered here."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from threestudio_like import plots

STEP_FILE = re.compile(r"^it(\d+)-(val\.png|test\.mp4|export(?:-\d+)?)$")


class PageError(Exception):
    """Bad input (a folder that is not a run, nothing to show): one line, exit status 2."""


@dataclass
class RunFiles:
    path: Path
    config: dict[str, Any]  # parsed.yaml as nested mappings
    quality: dict[str, Any] = field(default_factory=dict)
    export_info: dict[str, Any] = field(default_factory=dict)
    validation: Optional[Path] = None  # newest save/it<N>-val.png
    turntable: Optional[Path] = None  # newest save/it<N>-test.mp4
    export_dir: Optional[Path] = None  # newest save/it<N>-export[-k]/ holding model.glb
    metrics: dict[str, list[float]] = field(default_factory=dict)  # metrics.csv columns
    curve: dict[str, list[float]] = field(default_factory=dict)  # curve.csv: held-out metrics per validation

    @property
    def glb(self) -> Optional[Path]:
        path = self.export_dir / "model.glb" if self.export_dir else None
        return path if path is not None and path.is_file() else None

    @property
    def splats(self) -> Optional[Path]:
        path = self.export_dir / "splats.ply" if self.export_dir else None
        return path if path is not None and path.is_file() else None

    def get(self, dotted: str, default: Any = None) -> Any:
        node: Any = self.config
        for key in dotted.split("."):
            if not isinstance(node, dict) or key not in node:
                return default
            node = node[key]
        return node


def is_run(path: Path) -> bool:
    return (path / "configs" / "parsed.yaml").is_file()


def find_runs(paths: list[Path]) -> list[Path]:
    """Run folders among ``paths``; a folder that is not a run (a sweep, outputs/) is searched for runs."""
    runs: list[Path] = []
    for path in paths:
        if not path.is_dir():
            raise PageError(f"{str(path)!r} does not exist; pass run folders such as outputs/<name>/<run>, or a folder of runs")
        found = [path] if is_run(path) else sorted(p.parent.parent for p in path.glob("**/configs/parsed.yaml"))
        if not found:
            raise PageError(f"{str(path)!r} holds no run (no configs/parsed.yaml below it)")
        runs += [p for p in found if p not in runs]
    return runs


def newest(save: Path, kind: str) -> Optional[Path]:
    """The file (or folder) of ``kind`` (val.png, test.mp4, export) with the highest step, later copies last."""
    best, best_key = None, None
    for child in save.iterdir() if save.is_dir() else ():
        match = STEP_FILE.match(child.name)
        if match and match.group(2).startswith(kind):
            key = (int(match.group(1)), child.stat().st_mtime)
            if best_key is None or key > best_key:
                best, best_key = child, key
    return best


def read_run(path: Path) -> RunFiles:
    """Everything a page shows of the run folder ``path``."""
    from omegaconf import OmegaConf

    if not is_run(path):
        raise PageError(f"{str(path)!r} is not a run folder: no configs/parsed.yaml")
    try:
        config = OmegaConf.to_container(OmegaConf.load(path / "configs" / "parsed.yaml"), resolve=True)
    except Exception as error:  # a damaged YAML: say which file
        raise PageError(f"{path / 'configs' / 'parsed.yaml'} is not readable: {str(error).splitlines()[0]}") from None
    save = path / "save"
    run = RunFiles(path=path, config=config if isinstance(config, dict) else {},
                   validation=newest(save, "val.png"), turntable=newest(save, "test.mp4"),
                   export_dir=newest(save, "export"), metrics=plots.read_csv_columns(path / "metrics.csv"),
                   curve=plots.read_csv_columns(path / "curve.csv"))
    run.quality = read_json(path / "quality.json")
    if run.export_dir is not None:
        run.export_info = read_json(run.export_dir / "export.json")
    return run


def read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}
