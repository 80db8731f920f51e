from threestudio_like.data import cameras  # noqa: F401  (registers "random-camera")
