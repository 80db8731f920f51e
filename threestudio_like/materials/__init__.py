"""Materials; importing this package registers them."""
from threestudio_like.materials import plain_albedo, point_light  # noqa: F401
