"""Guidance methods; importing this package registers them all."""
from threestudio_like.guidance import asd, csm, esd, ism, sds, vsd  # noqa: F401
