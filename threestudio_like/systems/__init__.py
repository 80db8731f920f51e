"""Systems; importing this package registers them."""
from threestudio_like.systems import text_to_3d  # noqa: F401
