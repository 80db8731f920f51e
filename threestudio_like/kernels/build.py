"""Build (once) and load the compiled CPU kernels; choose between them and the torch path.

The C++ sources in ``csrc/`` are compiled with ``torch.utils.cpp_extension.load`` into a folder
of the torch extensions cache (``$TORCH_EXTENSIONS_DIR``, else ``~/.cache/torch_extensions``) named
after a hash of the sources, the flags and the torch version: a change to any of them builds
afresh, an unchanged tree loads the built library in a fraction of a second. The library
registers its operators under ``torch.ops.threestudio_like_cpu``.

``-march=native`` lets the index and weight loops use the machine's vector units;
``-ffp-contract=off`` keeps a·b + c two roundings, as PyTorch's own kernels do, so that the
kernels give the torch path's floats (the fused MLP, whose sums differ from a BLAS product's in
order anyway, turns fused multiply-adds back on for its own file); ``-fno-math-errno`` lets sqrt
stay in vector registers (nothing reads errno). ``THREESTUDIO_LIKE_CPU_KERNELS=0`` turns the kernels off
everywhere (nothing is compiled); a build that fails warns once and leaves the torch path in use.
"""
from __future__ import annotations

import hashlib
import os
import platform
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

SOURCES = sorted((Path(__file__).parent / "csrc").glob("*.cpp"))
CFLAGS = ("-O3", "-march=native", "-ffp-contract=off", "-fno-math-errno", "-fopenmp")
LDFLAGS = ("-fopenmp",)
EXPECTED_BUILD_S = 100  # wall seconds of the 14 translation units on an idle 2-core machine (190 s of CPU; docs/BENCHMARKS.md)
CHOICES = {"auto": "auto", True: True, False: False, "true": True, "false": False}
_STATE: dict[str, Any] = {}  # "ok": bool once a build was tried; "error": its first line


def kernel_choice(value: Any, key: str) -> Any:
    """``value`` of a config's ``key`` as "auto", True or False; one clear error otherwise."""
    normal = value.lower() if isinstance(value, str) else value
    if normal not in CHOICES:
        raise ValueError(f"{key}={value!r} is not accepted; use one of auto, true, false")
    return CHOICES[normal]


def cpu_flags() -> str:
    """The processor's feature flags (``-march=native`` builds for them: a cache shared by
    different machines keeps one build per kind)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.machine()
    return next((line for line in text.splitlines() if line.startswith(("flags", "Features"))), platform.machine())


def build_directory() -> Path:
    """Where this tree's kernels are (or will be) built: one folder per sources-and-flags hash."""
    digest = hashlib.sha256()
    for path in SOURCES:
        digest.update(path.name.encode() + path.read_bytes())
    digest.update(" ".join(CFLAGS + LDFLAGS + (torch.__version__, sys.version, cpu_flags())).encode())
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "torch_extensions")
    return Path(root) / f"threestudio_like_cpu_{digest.hexdigest()[:12]}"


def disabled_by_environment() -> bool:
    return os.environ.get("THREESTUDIO_LIKE_CPU_KERNELS", "").strip().lower() in ("0", "off", "false", "no")


def library_loaded() -> bool:
    """Whether the kernels are loaded (building them on the first call); False, after one warning,
    when they cannot be built, and False without a build when the environment turns them off."""
    if "ok" not in _STATE:
        if disabled_by_environment():
            return False
        _STATE["ok"] = _load()
    return bool(_STATE["ok"])


def _load() -> bool:
    from torch.utils import cpp_extension

    folder = build_directory()
    name = folder.name
    if shutil.which("ninja") is None:  # ninja from PyPI sits next to the interpreter, maybe not on PATH
        os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    fresh = not (folder / f"{name}.so").exists()
    if fresh:
        print(f"compiling the CPU kernels (once, ~{EXPECTED_BUILD_S} s) into {folder}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        cpp_extension.load(name, [str(p) for p in SOURCES], extra_cflags=list(CFLAGS), extra_ldflags=list(LDFLAGS),  # load() extends these lists
                           build_directory=str(folder), is_python_module=False, verbose=False)
    except Exception as error:  # noqa: BLE001  (compiler, ninja and loader failures share no type)
        lines = str(error).strip().splitlines()
        _STATE["error"] = lines[0] if lines else type(error).__name__
        warnings.warn(f"the CPU kernels did not build ({_STATE['error']}); the torch path is used", stacklevel=4)
        return False
    _STATE["build_s"] = time.perf_counter() - start if fresh else 0.0
    return True


def unavailable_reason() -> str:
    """Why the kernels are not in use (after ``library_loaded`` returned False)."""
    return "turned off by THREESTUDIO_LIKE_CPU_KERNELS" if disabled_by_environment() else str(_STATE.get("error"))


def use_kernels(choice: Any, *tensors: torch.Tensor) -> bool:
    """Whether to run a compiled kernel on ``tensors`` for a config's ``choice`` (auto | True | False):
    only for CPU tensors; ``auto`` falls back to the torch path when the kernels did not build."""
    if choice is False or any(t.device.type != "cpu" for t in tensors):
        return False
    if library_loaded():
        return True
    if choice is True:
        raise RuntimeError(f"cpu_kernel=true but the CPU kernels are unavailable ({unavailable_reason()}); set cpu_kernel=auto or false")
    return False


def build_report() -> str:
    """One line for ``python -m threestudio_like.kernels``."""
    if not library_loaded():
        return f"CPU kernels unavailable: {unavailable_reason()}"
    built = _STATE.get("build_s", 0.0)
    how = f"compiled in {built:.0f} s" if built else "already built"
    return f"CPU kernels ready ({how}) in {build_directory()}"
