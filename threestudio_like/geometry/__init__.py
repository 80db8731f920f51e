"""Geometries; importing this package registers them."""
from threestudio_like.geometry import nerf  # noqa: F401
from threestudio_like.geometry import gaussians  # noqa: F401
from threestudio_like.geometry import tetrahedra  # noqa: F401
