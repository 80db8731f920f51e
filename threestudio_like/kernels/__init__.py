"""Compiled CPU kernels (a C++ torch extension built on first use) for the hash grid and the
volume renderer, each behind a ``torch.autograd.Function``; the pure-PyTorch paths they replace
stay, as the fallback and as the reference the exactness tests compare against."""
from threestudio_like.kernels.build import kernel_choice, library_loaded, use_kernels

__all__ = ["kernel_choice", "library_loaded", "use_kernels"]
