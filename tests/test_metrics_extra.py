"""The benchmark's measures on hand-made cases: saturation, front/back (Janus) confusion, and the
basic measures at their limits on real data (a mesh, a scene's renders)."""
import math

import pytest
import torch
import trimesh

from threestudio_like import metrics
from threestudio_like.data.cameras import make_cameras
from threestudio_like.priors.scenes import parse_prompt


def test_psnr_of_identical_images_is_capped_and_iou_of_disjoint_masks_is_zero():
    image = torch.rand(3, 8, 8, 3, generator=torch.Generator().manual_seed(1))
    assert metrics.psnr(image, image) == 100.0
    assert torch.equal(metrics.psnr_per_view(image, image), torch.full((3,), 100.0))
    noisy = (image + 0.1).clamp(0, 1)
    assert metrics.psnr_per_view(noisy, image).tolist() == pytest.approx(
        [metrics.psnr(noisy[i], image[i]) for i in range(3)], abs=1e-4)
    left, right = torch.zeros(1, 6, 6, 1), torch.zeros(1, 6, 6, 1)
    left[..., :3, :] = 1.0
    right[..., 3:, :] = 1.0
    assert metrics.mask_iou(left, right) == 0.0


def test_chamfer_of_a_mesh_with_itself_is_zero_and_grows_with_an_offset():
    mesh = trimesh.creation.icosphere(subdivisions=2, radius=0.5)
    points = torch.as_tensor(mesh.vertices, dtype=torch.float32)
    assert metrics.chamfer_distance(points, points) == 0.0
    shifted = points + torch.tensor([0.05, 0.0, 0.0])
    assert 0.0 < metrics.chamfer_distance(points, shifted) <= 0.05 + 1e-6


def test_hsv_saturation_of_known_colors():
    colors = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.0, 0.0, 0.0], [0.8, 0.4, 0.4]])
    assert metrics.hsv_saturation(colors).tolist() == pytest.approx([1.0, 0.0, 0.0, 0.5])


def test_saturation_error_zero_for_identical_and_positive_for_a_saturated_copy():
    scene = parse_prompt("a red ball on a blue box")
    cameras = make_cameras(torch.tensor([20.0]), torch.tensor([30.0]), torch.tensor([2.5]), torch.tensor([40.0]), 16, 16)
    truth = scene.render(cameras)
    rgb, mask = truth["rgb"], truth["mask"]
    assert metrics.saturation_error(rgb, rgb, mask) == 0.0
    # push every color away from its gray: same hue, more saturated
    gray = rgb.mean(dim=-1, keepdim=True)
    saturated = (gray + 1.8 * (rgb - gray)).clamp(0.0, 1.0)
    assert metrics.saturation_error(saturated, rgb, mask) > 0.05
    washed = (gray + 0.3 * (rgb - gray)).clamp(0.0, 1.0)
    assert metrics.saturation_error(washed, rgb, mask) < -0.05
    assert math.isnan(metrics.saturation_error(rgb, rgb, torch.zeros_like(mask)))


def test_front_back_confusion_flags_a_swapped_render():
    g = torch.Generator().manual_seed(0)
    truth = torch.rand(4, 8, 8, 3, generator=g)
    opposite = torch.rand(4, 8, 8, 3, generator=g)
    right = metrics.front_back_confusion(truth, truth, opposite)
    assert right["fraction"] == 0.0 and right["margin_db"] > 20.0
    swapped = metrics.front_back_confusion(opposite, truth, opposite)
    assert swapped["fraction"] == 1.0 and swapped["margin_db"] < -20.0
    # two views swapped, two right: half; slightly noisy renders do not change the verdict
    half = torch.cat([truth[:2], opposite[2:]]) + 0.01 * torch.randn(4, 8, 8, 3, generator=g)
    assert metrics.front_back_confusion(half, truth, opposite)["fraction"] == 0.5
    # views whose two sides look the same tell nothing and are left out
    same = metrics.front_back_confusion(truth, truth, truth.clone())
    assert math.isnan(same["fraction"]) and math.isnan(same["margin_db"])


def test_high_frequency_excess_tells_noise_from_blur():
    scene = parse_prompt("a house")
    cameras = make_cameras(torch.tensor([20.0]), torch.tensor([30.0]), torch.tensor([2.5]), torch.tensor([40.0]), 24, 24)
    truth = scene.render(cameras)
    rgb, mask = truth["rgb"], truth["mask"]
    assert metrics.high_frequency_excess(rgb, rgb, mask) == 0.0
    noisy = (rgb + 0.1 * torch.randn(rgb.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    assert metrics.high_frequency_excess(noisy, rgb, mask) > 0.05
    blurred = torch.nn.functional.avg_pool2d(rgb.permute(0, 3, 1, 2), 3, stride=1, padding=1, count_include_pad=False).permute(0, 2, 3, 1)
    assert metrics.high_frequency_excess(blurred, rgb, mask) < 0.0
