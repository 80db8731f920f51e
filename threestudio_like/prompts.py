"""Prompt processing: the text, its negative, view-dependent conditioning, and an embedding cache.

A :class:`Prompt` is what guidance methods receive. It asks the prior for conditions; the prior
decides what "view-dependent" means for it (text suffixes for Stable Diffusion, reference views of
the matching bin for the embedded prior).
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List

from torch import Tensor

from threestudio_like.data.cameras import Cameras
from threestudio_like.utils.atomic import atomic_path
from threestudio_like.utils.checks import check_between, check_length

VIEW_SUFFIXES = {"front": "front view", "side": "side view", "back": "back view", "overhead": "overhead view"}


@dataclass
class PromptConfig:
    prompt: str = "a red ball on a blue box"
    negative_prompt: str = ""
    view_dependent_prompting: bool = True
    # threestudio's thresholds (degrees): front |azimuth| < front, back |azimuth| > 180 − back,
    # overhead elevation > overhead
    front_threshold: float = 45.0
    back_threshold: float = 45.0
    overhead_threshold: float = 60.0
    use_perp_neg: bool = False
    # Perp-Neg weights of the negative view directions: [a, b, c] → a·exp(−b·r) + c (threestudio's)
    perp_neg_f_sb: List[float] = field(default_factory=lambda: [1.0, 0.5, -0.606])
    perp_neg_f_fsb: List[float] = field(default_factory=lambda: [1.0, 0.5, 0.967])
    perp_neg_f_fs: List[float] = field(default_factory=lambda: [4.0, 0.5, -2.426])
    perp_neg_f_sf: List[float] = field(default_factory=lambda: [4.0, 0.5, -2.426])
    cache_dir: str = ".cache/text_embeddings"

    def __post_init__(self) -> None:
        if not self.prompt.strip():
            raise ValueError("prompt is empty; pass one, e.g. system.prompt_processor.prompt=\"a red ball on a blue box\"")
        check_between(self, 0.0, 180.0, "front_threshold", "back_threshold")
        check_between(self, -90.0, 90.0, "overhead_threshold")
        check_length(self, 3, "perp_neg_f_sb", "perp_neg_f_fsb", "perp_neg_f_fs", "perp_neg_f_sf")
        if self.use_perp_neg and not self.view_dependent_prompting:
            raise ValueError("use_perp_neg=true needs view_dependent_prompting=true (its negatives are the view prompts)")


def view_suffixed(text: str, view: str) -> str:
    """The prompt with its view suffix, threestudio style: "a corgi, side view"."""
    return f"{text}, {VIEW_SUFFIXES[view]}"


class Prompt:
    """The user's prompt as guidance sees it: conditional and null conditions for a camera batch."""

    def __init__(self, cfg: PromptConfig, prior) -> None:
        self.cfg = cfg
        self.prior = prior
        self.text = cfg.prompt
        self.negative_text = cfg.negative_prompt

    def views(self, cameras: Cameras) -> list[str]:
        cfg = self.cfg
        return cameras.view_labels(cfg.front_threshold, cfg.back_threshold, cfg.overhead_threshold)

    def cond(self, cameras: Cameras, view_dependent: bool = True) -> Tensor:
        """[B,...] condition of the prompt; view-dependent when asked and enabled in the config.

        Under Perp-Neg the view-dependent condition is the azimuth-interpolated one.
        """
        if view_dependent and self.cfg.use_perp_neg:
            from threestudio_like.guidance import perp_neg  # lazy: guidance imports this module

            return perp_neg.positive_condition(self, cameras)
        views = self.views(cameras) if (view_dependent and self.cfg.view_dependent_prompting) else None
        return self.prior.condition(self.text, cameras, views)

    def null(self, cameras: Cameras) -> Tensor:
        """[B,...] condition of the negative prompt (∅)."""
        return self.prior.null_condition(self.negative_text, cameras)


class EmbeddingCache:
    """On-disk cache of text embeddings keyed by model and prompt (safetensors files).

    ``get(model_id, text, compute)`` returns the cached tensor, or calls ``compute(text)``, stores
    the result atomically and returns it. ``hits``/``misses`` count look-ups.
    """

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        self.hits = 0
        self.misses = 0
        self._memory: dict[str, Tensor] = {}

    def path(self, model_id: str, text: str) -> Path:
        key = hashlib.sha256(f"{model_id}\0{text}".encode()).hexdigest()[:32]
        return self.directory / f"{key}.safetensors"

    def get(self, model_id: str, text: str, compute: Callable[[str], Tensor]) -> Tensor:
        from safetensors.torch import load_file, save_file

        path = self.path(model_id, text)
        if str(path) in self._memory:
            self.hits += 1
            return self._memory[str(path)]
        if path.is_file():
            self.hits += 1
            value = load_file(str(path))["embedding"]
        else:
            self.misses += 1
            value = compute(text).detach().cpu().contiguous()
            with atomic_path(path) as tmp:
                save_file({"embedding": value}, str(tmp), metadata={"model": model_id, "text": text})
        self._memory[str(path)] = value
        return value
