"""Static pages to look at runs: one page per run (the asset in a 3D viewer, the turntable, the
latest validation grid, curves, config and quality tables) and an index over many runs.

``python -m threestudio_like.page RUN_DIR... [-o DIR] [--serve]``; a training run writes its own
page at the end (``RUN_DIR/page/index.html``). The pages work offline from ``file://``: the 3D
viewer (@google/model-viewer, installed from the npm registry by ``make web``) is copied next to
them, and the asset is embedded as a script, since browsers do not let a ``file://`` page fetch files.
"""
from threestudio_like.page.run_page import PageError, write_index_page, write_run_page

__all__ = ["PageError", "write_run_page", "write_index_page"]
