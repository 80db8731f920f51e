"""The embedded prior's reference pictures, rendered once per machine: an on-disk cache.

Sphere-tracing a scene's K references (and the null library's) costs seconds to tens of seconds on
the CPU, more than a whole refinement stage spends on anything else but training, and every run of
every stage rendered the same pictures again. Like the text-embedding cache of the Stable Diffusion
prior (threestudio's ``.threestudio_cache``), the pictures are stored as safetensors files, keyed by
everything that determines them: the scene's primitives, the cameras, the resolution, the
supersampling and the source of the modules that trace and shade them (a code change is a miss, not
a stale picture). One trace gives every kind (rgb and normal), so a miss stores them all: a texture
stage after a geometry stage finds its rgb references already there. A hit returns the stored float32
tensor, bit for bit what the render gives.
"""
from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor

from threestudio_like.data.cameras import Cameras
from threestudio_like.kernels import sdf_trace, use_kernels
from threestudio_like.priors import scenes, sdf
from threestudio_like.priors.scenes import BACKGROUND, Scene
from threestudio_like.prompts import EmbeddingCache
from threestudio_like.utils import images
from threestudio_like.utils.images import normal_image

REFERENCE_KINDS = ("rgb", "normal")
_SOURCES = (sdf, scenes, images)  # what a reference picture's pixels depend on, besides the key's values


def reference_image(render: dict[str, Tensor], kind: str) -> Tensor:
    """The reference picture [K,H,W,3] in [0,1] of a scene render (``Scene.render``'s dict): its
    shaded rgb, or its normals as the geometry stage's renders show them (on the white background)."""
    if kind == "normal":
        return normal_image(render["normal"], render["mask"], torch.tensor(BACKGROUND, dtype=render["normal"].dtype))
    return render["rgb"]


def render_fingerprint(scene: Scene, cameras: Cameras, supersample: int, compiled: bool = False) -> str:
    """A hex digest of everything a render of ``scene`` by ``cameras`` depends on (``compiled``:
    traced by the compiled tracer, whose pixels equal the torch tracer's only to float rounding)."""
    digest = hashlib.sha256()
    digest.update(repr((scene.shapes, scene.radius, cameras.width, cameras.height, supersample)).encode())
    for tensor in (cameras.c2w, cameras.fovy):
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    digest.update(_sources_digest(compiled))
    return digest.hexdigest()


@functools.lru_cache(maxsize=2)
def _sources_digest(compiled: bool) -> bytes:
    """The tracer's and shader's source files hashed (once a process: they do not change under it)."""
    files = [Path(module.__file__) for module in _SOURCES] + ([sdf_trace.SOURCE] if compiled else [])
    return hashlib.sha256(b"".join(path.read_bytes() for path in files) + (b"compiled" if compiled else b"torch")).digest()


class ReferenceCache:
    """``images(scene, cameras, supersample, kind)`` → [K,H,W,3] through the files under ``directory``
    (no directory: rendered every time)."""

    def __init__(self, directory: Optional[str], cpu_kernel: Any = "auto") -> None:
        # the prior keeps the pictures it uses; the cache need not hold a second copy in memory
        self.files = EmbeddingCache(directory, keep_in_memory=False) if directory else None
        self.cpu_kernel = cpu_kernel  # the compiled tracer (auto | true) or the torch one (false)

    def images(self, scene: Scene, cameras: Cameras, supersample: int, kind: str) -> Tensor:
        compiled = use_kernels(self.cpu_kernel)
        if self.files is None:
            return reference_image(scene.render(cameras, supersample=supersample, cpu_kernel=compiled), kind)
        key = render_fingerprint(scene, cameras, supersample, compiled)
        rendered: dict[str, Tensor] = {}

        def compute(wanted: str) -> Tensor:
            if not rendered:
                rendered.update(scene.render(cameras, supersample=supersample, cpu_kernel=compiled))
            return reference_image(rendered, wanted)

        value = self.files.get(key, kind, compute)
        if rendered:  # a miss: the same trace gives the other kinds, store them too
            for other in REFERENCE_KINDS:
                if other != kind:
                    self.files.get(key, other, compute)
        return value
