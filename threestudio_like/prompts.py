"""Prompt processing: the text, its negative, which view each camera sees, and an embedding cache.

A :class:`Prompt` is plain data. The guidance turns it into conditions through the prior
(``prior.condition(text, cameras, views)``); the prior decides what "view-dependent" means for it
(text suffixes for Stable Diffusion, reference views of the matching bin for the embedded prior).
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from torch import Tensor

from threestudio_like.data.cameras import Cameras
from threestudio_like.utils.atomic import atomic_path
from threestudio_like.utils.checks import check_between

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

    def __post_init__(self) -> None:
        if not self.prompt.strip():
            raise ValueError("prompt is empty; pass one, e.g. system.prompt_processor.prompt=\"a red ball on a blue box\"")
        check_between(self, 0.0, 180.0, "front_threshold", "back_threshold")
        check_between(self, -90.0, 90.0, "overhead_threshold")


def view_suffixed(text: str, view: str) -> str:
    """The prompt with its view suffix, threestudio style: "a corgi, side view"."""
    return f"{text}, {VIEW_SUFFIXES[view]}"


@dataclass(frozen=True)
class Prompt:
    """The user's prompt as the guidance sees it: texts and the rule that names each camera's view."""

    text: str
    negative_text: str = ""
    view_dependent: bool = True
    front_threshold: float = 45.0
    back_threshold: float = 45.0
    overhead_threshold: float = 60.0

    @classmethod
    def from_config(cls, cfg: PromptConfig) -> "Prompt":
        return cls(cfg.prompt, cfg.negative_prompt, cfg.view_dependent_prompting,
                   cfg.front_threshold, cfg.back_threshold, cfg.overhead_threshold)

    def view_labels(self, cameras: Cameras) -> list[str]:
        """front/side/back/overhead per camera, by this prompt's thresholds."""
        return cameras.view_labels(self.front_threshold, self.back_threshold, self.overhead_threshold)

    def views(self, cameras: Cameras) -> Optional[list[str]]:
        """The view labels for the prompt's condition: None when view-dependent prompting is off."""
        return self.view_labels(cameras) if self.view_dependent else None


class EmbeddingCache:
    """On-disk cache of text embeddings keyed by model and prompt (safetensors files).

    ``get(model_id, text, compute)`` returns the cached tensor, or calls ``compute(text)``, stores
    the result atomically and returns it. ``hits``/``misses`` count look-ups. With
    ``keep_in_memory=False`` every look-up reads the file (for large tensors the caller keeps itself).
    """

    def __init__(self, directory: str | os.PathLike, keep_in_memory: bool = True) -> None:
        self.directory = Path(directory)
        self.hits = 0
        self.misses = 0
        self.keep_in_memory = keep_in_memory
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
        if self.keep_in_memory:
            self._memory[str(path)] = value
        return value
