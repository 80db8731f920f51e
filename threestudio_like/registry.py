"""Name → class registries, one per module family.

A YAML file names each part by a short kebab-case string (``system.guidance_type: sds``); the
registry of that family turns the name into a class. Families are separate so that, e.g., a
geometry and a guidance may share a name without clashing.
"""
from __future__ import annotations

import importlib
from typing import Callable, TypeVar

T = TypeVar("T")

FAMILIES = ("data", "geometry", "material", "background", "renderer", "prior", "guidance", "system")

# Modules whose import registers the classes of each family (imported on first lookup, so that a
# plain ``import threestudio_like`` stays light and CUDA-only packages are never touched on import).
_PROVIDERS = {
    "geometry": ("threestudio_like.geometry",),
    "material": ("threestudio_like.materials",),
    "background": ("threestudio_like.renderers.background",),
    "renderer": ("threestudio_like.renderers",),
    "prior": ("threestudio_like.priors",),
    "guidance": ("threestudio_like.guidance",),
    "system": ("threestudio_like.systems",),
    "data": ("threestudio_like.data",),
}

_REGISTRY: dict[str, dict[str, type]] = {family: {} for family in FAMILIES}


class UnknownNameError(ValueError):
    """A config named a part that no registered class provides."""


def register(family: str, name: str) -> Callable[[type[T]], type[T]]:
    """Class decorator: make ``cls`` available as ``name`` in ``family``."""
    if family not in _REGISTRY:
        raise ValueError(f"unknown module family {family!r}; families are {', '.join(FAMILIES)}")

    def decorate(cls: type[T]) -> type[T]:
        existing = _REGISTRY[family].get(name)
        if existing is not None and existing is not cls:
            raise ValueError(f"{family} name {name!r} is registered twice ({existing.__name__}, {cls.__name__})")
        _REGISTRY[family][name] = cls
        cls.registered_name = name  # type: ignore[attr-defined]
        return cls

    return decorate


def _load_providers(family: str) -> None:
    for module in _PROVIDERS.get(family, ()):
        importlib.import_module(module)


def names(family: str) -> list[str]:
    """Sorted registered names of a family."""
    _load_providers(family)
    return sorted(_REGISTRY[family])


def lookup(family: str, name: str) -> type:
    """The class registered as ``name`` in ``family``; a one-line error lists the known names."""
    _load_providers(family)
    try:
        return _REGISTRY[family][name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY[family])) or "(none)"
        raise UnknownNameError(f"unknown {family} type {name!r}; known: {known}") from None
