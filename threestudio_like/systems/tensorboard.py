"""TensorBoard logging (``trainer.tensorboard=true``), beside metrics.csv: the logged scalars of
training steps, held-out metrics and validation grids, as threestudio's users read them.
Needs the ``tensorboard`` package: ``pip install -e '.[tensorboard]'``."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from threestudio_like.config import ConfigError


class TensorBoardLog:
    """Event files in ``folder`` (open with ``tensorboard --logdir <run>/tensorboard``)."""

    def __init__(self, folder: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError("trainer.tensorboard=true needs the tensorboard package: pip install -e '.[tensorboard]'") from None
        self.writer = SummaryWriter(log_dir=str(folder))

    def scalars(self, step: int, row: dict[str, float], prefix: str = "train") -> None:
        for key, value in row.items():
            if key != "step":
                self.writer.add_scalar(f"{prefix}/{key}", float(value), step)

    def image(self, tag: str, step: int, image: np.ndarray) -> None:
        """image: uint8 [H,W,3]."""
        self.writer.add_image(tag, image, step, dataformats="HWC")

    def flush(self) -> None:
        self.writer.flush()
