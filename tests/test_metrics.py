"""Quality measures on hand-made cases with known answers."""
import math

import pytest
import torch

from threestudio_like.metrics import chamfer_distance, depth_error, mask_iou, psnr


def test_psnr():
    image = torch.rand(2, 8, 8, 3, generator=torch.Generator().manual_seed(0))
    assert psnr(image, image) == 100.0
    assert psnr(image, image, max_db=60.0) == 60.0
    # a uniform error of 0.1 is an MSE of 0.01: 20 dB
    assert psnr(image.clamp(0, 0.9) + 0.1, image.clamp(0, 0.9)) == pytest.approx(20.0, abs=1e-4)
    assert psnr(torch.zeros(4, 4, 3), torch.ones(4, 4, 3)) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError):
        psnr(torch.zeros(4, 4, 3), torch.zeros(4, 5, 3))


def test_mask_iou():
    a = torch.zeros(1, 4, 4, 1)
    b = torch.zeros(1, 4, 4, 1)
    a[:, :2] = 1.0
    b[:, 2:] = 1.0
    assert mask_iou(a, b) == 0.0  # disjoint
    assert mask_iou(a, a) == 1.0
    c = torch.zeros(1, 4, 4, 1)
    c[:, 1:3] = 1.0  # half of a, half of b
    assert mask_iou(a, c) == pytest.approx(1 / 3)
    assert mask_iou(0.4 * a, a) == 0.0  # soft coverage binarised at 0.5
    assert mask_iou(torch.zeros(2, 2), torch.zeros(2, 2)) == 1.0


def test_depth_error_counts_only_inside_the_true_mask():
    true_mask = torch.zeros(1, 2, 2, 1)
    true_mask[0, 0, 0] = 1.0
    true_mask[0, 1, 1] = 1.0
    true_depth = torch.full((1, 2, 2, 1), 2.0)
    pred = true_depth.clone()
    pred[0, 0, 0] = 2.5  # inside: error 0.5
    pred[0, 0, 1] = 9.0  # outside: ignored
    assert depth_error(pred, true_depth, true_mask) == pytest.approx(0.25)
    assert math.isnan(depth_error(pred, true_depth, torch.zeros_like(true_mask)))


def test_chamfer_distance():
    points = torch.rand(500, 3, generator=torch.Generator().manual_seed(0))
    assert chamfer_distance(points, points) == 0.0
    assert chamfer_distance(points, points[torch.randperm(500)]) == 0.0
    single = torch.zeros(1, 3)
    assert chamfer_distance(single, single + torch.tensor([0.3, 0.0, 0.4])) == pytest.approx(0.5)
    # a → b: 0 for both; b → a: 0 and 1 → mean 0.5; symmetric mean (0 + 0.5) / 2
    a = torch.tensor([[0.0, 0.0, 0.0]])
    b = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    assert chamfer_distance(a, b) == pytest.approx(0.25)
    assert chamfer_distance(b, a) == pytest.approx(0.25)
    with pytest.raises(ValueError):
        chamfer_distance(torch.zeros(0, 3), a)
