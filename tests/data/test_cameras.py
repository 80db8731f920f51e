import math

import pytest
import torch

from threestudio_like.data.cameras import RandomCameraConfig, RandomCameraSampler, make_cameras, orbit_cameras


def test_front_camera_looks_at_origin_from_plus_x():
    cams = orbit_cameras(4, 0.0, 2.0, 40.0, 9, 9)
    origins, dirs = cams.rays()
    assert origins.shape == (4, 9, 9, 3) and dirs.shape == (4, 9, 9, 3)
    assert torch.allclose(cams.position[0], torch.tensor([2.0, 0.0, 0.0]), atol=1e-6)
    # the centre pixel's ray points at the origin
    assert torch.allclose(dirs[0, 4, 4], torch.tensor([-1.0, 0.0, 0.0]), atol=1e-6)
    # image up is world +z: the top row's rays point upward
    assert dirs[0, 0, 4, 2] > 0
    # the opencv view matrix puts the origin straight ahead at distance 2
    assert torch.allclose(cams.viewmats_opencv()[0] @ torch.tensor([0.0, 0, 0, 1]), torch.tensor([0.0, 0, 2, 1]), atol=1e-6)


def test_field_of_view():
    cams = orbit_cameras(1, 0.0, 2.0, 60.0, 64, 64)
    _, dirs = cams.rays()
    top = dirs[0, 0, 32]  # pixel centre half a pixel below the top edge
    angle = math.degrees(math.atan2(top[2].item(), -top[0].item()))
    assert angle == pytest.approx(30.0 * (31.5 / 32) / 1.0, abs=0.6)


@pytest.mark.parametrize(
    "elevation, azimuth, label",
    [(0, 0, "front"), (0, 44, "front"), (0, 90, "side"), (0, -100, "side"), (0, 180, "back"), (0, -150, "back"), (70, 0, "overhead")],
)
def test_view_labels(elevation, azimuth, label):
    one = lambda v: torch.tensor([float(v)])  # noqa: E731
    cams = make_cameras(one(elevation), one(azimuth), one(2.0), one(40.0), 8, 8)
    assert cams.view_labels() == [label]


def test_sampler_ranges_and_progressive_resolution():
    cfg = RandomCameraConfig(width=[16, 32], height=[16, 32], resolution_milestones=[10], batch_size=64,
                             elevation_range=[0.0, 30.0], camera_distance_range=[2.0, 3.0], fovy_range=[40.0, 50.0])
    sampler = RandomCameraSampler(cfg)
    cams = sampler.sample(torch.Generator().manual_seed(0))
    assert len(cams) == 64 and (cams.width, cams.height) == (16, 16)
    assert cams.elevation.min() >= 0 and cams.elevation.max() <= 30
    assert cams.distance.min() >= 2 and cams.distance.max() <= 3
    assert torch.allclose(cams.position.norm(dim=-1), cams.distance, atol=1e-5)
    sampler.update_step(10)
    assert sampler.resolution() == (32, 32)


def test_sampler_rejects_mismatched_resolution_stages():
    with pytest.raises(ValueError, match="one entry per stage"):
        RandomCameraConfig(width=[16, 32], height=[16, 32])
