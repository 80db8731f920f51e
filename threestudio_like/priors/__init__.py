"""Diffusion priors; importing this package registers them."""
from threestudio_like.priors import embedded  # noqa: F401
from threestudio_like.priors import stable_diffusion  # noqa: F401
