"""Renderers and backgrounds; importing this package registers them."""
from threestudio_like.renderers import background, volume  # noqa: F401
from threestudio_like.renderers import gaussian  # noqa: F401
from threestudio_like.renderers import mesh  # noqa: F401
