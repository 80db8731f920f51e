"""The grid of a sweep: variants × prompts × seeds (× refinement stages), each job an ordinary
``launch.py --train`` command with its own run folder, identified by the hash of its config."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from omegaconf import OmegaConf

from threestudio_like.config import apply_overrides, load_yaml

LAUNCH = Path(__file__).resolve().parents[2] / "launch.py"
# where a run is written, not what it computes: left out of the hash, so a moved sweep folder, or a
# resumed run, is still the same job
LOCATION_KEYS = ("exp_root_dir", "tag", "use_timestamp", "resume")
PROMPT_KEY = "system.prompt_processor.prompt"


class GridError(ValueError):
    """A bad sweep argument (unknown variant, unreadable prompt file, bad seed): one line, exit 2."""


@dataclass(frozen=True)
class JobSpec:
    """One job: what to run (``argv`` after the Python interpreter) and where it writes."""

    hash: str
    variant: str
    prompt: str
    seed: int
    stage: str  # "coarse", a refinement stage's config name, or a benchmark's own kind
    run_dir: str  # absolute
    argv: tuple[str, ...]
    resumable: bool = True  # a retry appends resume=<run_dir>/ckpts/last.ckpt when that exists
    after: Optional[str] = None  # hash of the job whose run this one starts from
    gpu_args: tuple[str, ...] = ("--gpu", "0")  # appended when the job was given a GPU

    @property
    def label(self) -> str:
        return f"{self.variant} {self.prompt!r} seed {self.seed}" + ("" if self.stage == "coarse" else f" [{self.stage}]")

    @property
    def checkpoint(self) -> Path:
        return Path(self.run_dir) / "ckpts" / "last.ckpt"

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "JobSpec":
        data = json.loads(text)
        for key in ("argv", "gpu_args"):
            data[key] = tuple(data[key])
        return cls(**data)


# --------------------------------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------------------------------
def resolve_variants(config: str, variants: Optional[Sequence[str]]) -> list[Path]:
    """Config files of the variants: a name is ``<folder of --config>/<name>.yaml``; a path is itself.
    Without ``--variants`` the sweep has the one variant ``--config``."""
    base = Path(config)
    if not base.is_file():
        raise GridError(f"--config {config!r} does not exist; pass a YAML such as configs/sds-nerf.yaml")
    if not variants:
        return [base]
    paths = []
    for name in variants:
        path = Path(name) if name.endswith((".yaml", ".yml")) else base.parent / f"{name}.yaml"
        if not path.is_file():
            known = ", ".join(sorted(p.stem for p in base.parent.glob("*.yaml")))
            raise GridError(f"--variants: no config {name!r} ({path}); known beside --config: {known}")
        paths.append(path)
    return list(dict.fromkeys(paths))


def read_prompts(path: str) -> list[str]:
    """One prompt per line; blank lines and lines starting with # are skipped; duplicates once."""
    file = Path(path)
    if not file.is_file():
        raise GridError(f"--prompts {path!r} does not exist; pass a text file with one prompt per line")
    prompts = [line.strip() for line in file.read_text().splitlines()]
    prompts = list(dict.fromkeys(p for p in prompts if p and not p.startswith("#")))
    if not prompts:
        raise GridError(f"--prompts {path!r} holds no prompt (one per line; # starts a comment)")
    return prompts


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise GridError(f"--seeds {text!r} is not a comma-separated list of integers, e.g. 0,1,2") from None
    if not seeds:
        raise GridError("--seeds is empty; give e.g. 0,1")
    return list(dict.fromkeys(seeds))


def slug(text: str, limit: int = 40) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")[:limit] or "run"


# --------------------------------------------------------------------------------------------------
# Hashes
# --------------------------------------------------------------------------------------------------
def payload_hash(payload: Any) -> str:
    """16 hex digits of SHA-256 over canonical JSON of ``payload``."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def resolved_config(config: Path, overrides: Sequence[str]) -> dict:
    """The config a job runs (``extends`` merged, overrides applied), without its location keys."""
    node = OmegaConf.to_container(apply_overrides(load_yaml(config), overrides), resolve=False)
    for key in LOCATION_KEYS:
        node.pop(key, None)
    return node


# --------------------------------------------------------------------------------------------------
# Jobs
# --------------------------------------------------------------------------------------------------
def launch_job(config: Path, overrides: Sequence[str], prompt: str, seed: int, runs_root: Path,
               stage: str = "coarse", after: Optional["JobSpec"] = None) -> JobSpec:
    """A ``launch.py --train`` job; a refinement stage (``after``) starts from that job's run folder."""
    grid_keys = [f"{PROMPT_KEY}={prompt}", f"seed={seed}"]
    chain = [f"system.geometry_convert_from={after.run_dir}"] if after is not None else []
    job_overrides = [*overrides, *grid_keys]
    node = resolved_config(config, job_overrides)
    digest = payload_hash({"config": node, "stage": stage, "after": after.hash if after else None})
    name = str(node.get("name", config.stem))
    tag = f"{slug(prompt)}-seed{seed}-{digest[:8]}"
    run_dir = (runs_root / name / tag).resolve()
    location = [f"exp_root_dir={runs_root.resolve()}", f"tag={tag}", "use_timestamp=false"]
    argv = (str(LAUNCH), "--config", str(config.resolve()), "--train", *chain, *job_overrides, *location)
    variant = after.variant if after is not None else config.stem
    return JobSpec(digest, variant, prompt, seed, stage, str(run_dir), argv, after=after.hash if after else None)


def expand(configs: Sequence[Path], prompts: Sequence[str], seeds: Sequence[int], overrides: Sequence[str],
           sweep_dir: Path, refine: Sequence[Path] = ()) -> list[JobSpec]:
    """Every job of the grid, each coarse job followed by the refinement stages ``refine`` in order,
    each stage converted from the one before (stage name: the stage config's file name)."""
    if not LAUNCH.is_file():
        raise GridError(f"{LAUNCH} not found: sweeps run launch.py from a checkout of the project (pip install -e .)")
    runs_root = sweep_dir / "runs"
    jobs = []
    for config in configs:
        for prompt in prompts:
            for seed in seeds:
                jobs.append(launch_job(config, overrides, prompt, seed, runs_root))
                for stage in refine:
                    jobs.append(launch_job(stage, overrides, prompt, seed, runs_root, stage=stage.stem, after=jobs[-1]))
    return jobs
