"""Guidance methods; importing this package registers them all."""
from threestudio_like.guidance import sds  # noqa: F401
