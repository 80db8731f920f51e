import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# one thread: these tests run many mid-sized ops, where intra-op threads mostly wait on each other
torch.set_num_threads(1)


@pytest.fixture
def root() -> Path:
    return ROOT
