"""create_from's cap of the surface no training view sees (geometry/tetrahedra_cap.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from threestudio_like.config import ConfigError, parse_structured
from threestudio_like.data.cameras import RandomCameraConfig
from threestudio_like.geometry import tetrahedra_cap
from threestudio_like.registry import lookup

BOTTOM = -0.3  # the box's true bottom face


def views(low: float = -10.0) -> RandomCameraConfig:
    """The CPU configs' training range: elevations low…60°, all the way around, at 2.5."""
    return RandomCameraConfig(elevation_range=[low, 60.0], camera_distance_range=[2.5, 2.5], fovy_range=[40.0, 40.0])


def grid_with(sdf_of_points, resolution: int = 32):
    cls = lookup("geometry", "tetrahedra-sdf-grid")
    cfg = parse_structured(cls.Config, {"isosurface_resolution": resolution, "convert_cap_unseen": True,
                                        "pos_encoding": {"n_levels": 2, "log2_hashmap_size": 10}, "mlp_neurons": 8},
                           "system.geometry")
    grid = cls(cfg)
    grid.set_sdf_cells(sdf_of_points(grid.lattice_points(torch.arange(len(grid.sdf)))) / grid.cell)
    return grid


def box(p, half=(0.4, 0.4, 0.2), centre=(0.0, 0.0, -0.1)):
    """Signed distance, positive inside, of an axis-aligned box."""
    q = (p - torch.tensor(centre)).abs() - torch.tensor(half)
    return -(q.clamp_min(0).norm(dim=-1) + q.max(-1).values.clamp_max(0))


def sphere(p, radius, centre):
    return radius - (p - torch.tensor(centre)).norm(dim=-1)


DOME_RADIUS, DOME_CENTRE_Z = 0.5, 0.05


def box_with_dome(p):
    """The box (bottom at z −0.3) with a dome hanging 0.15 below the middle of its bottom face."""
    dome = torch.minimum(sphere(p, DOME_RADIUS, (0.0, 0.0, DOME_CENTRE_Z)), -0.1 - p[:, 2])  # below z −0.1 only
    return torch.maximum(box(p), dome)


def cap_height(lowest_elevation: float = -10.0, angle: float = 60.0) -> float:
    """Where the dome's unseen part begins: its normal tilts less than angle + lowest_elevation − (−90°)
    ... i.e. less than 90° − angle + lowest_elevation from straight down (20° here) from every view."""
    tilt = np.radians(90.0 - angle + lowest_elevation)
    return DOME_CENTRE_Z - DOME_RADIUS * np.cos(tilt)


def lowest(grid, where=None) -> float:
    v = grid.extract().v_pos.detach()
    if where is not None:
        v = v[where(v)]
    return float(v[:, 2].min())


def test_a_dome_under_a_box_is_capped_flat_where_no_view_faces_it_and_the_rest_is_kept():
    grid = grid_with(box_with_dome, resolution=48)
    before = grid.extract().v_pos.detach()
    assert float(before[:, 2].min()) < BOTTOM - 0.1  # the dome is there
    assert tetrahedra_cap.cap_unseen(grid, views()) == 1
    after = grid.extract().v_pos.detach()
    cell = grid.cell
    assert abs(float(after[:, 2].min()) - cap_height()) < cell  # the dome's lowest 0.08 is cut off
    # top and sides where they were
    assert abs(float(after[:, 2].max()) - float(before[:, 2].max())) < 1e-4
    for axis in (0, 1):
        assert abs(float(after[:, axis].max()) - float(before[:, axis].max())) < 0.5 * cell
    # the cut is flat: every vertex near the middle of the bottom lies on it
    middle = after[(after[:, :2].norm(dim=-1) < 0.1) & (after[:, 2] < BOTTOM)]
    assert len(middle) > 0 and float(middle[:, 2].max() - middle[:, 2].min()) < 0.1 * cell


def test_a_dome_that_the_views_see_from_below_is_kept():
    grid = grid_with(box_with_dome)
    before = lowest(grid)
    assert tetrahedra_cap.cap_unseen(grid, views(low=-80.0)) == 0
    assert lowest(grid) == pytest.approx(before, abs=1e-6)


def test_an_unseen_pocket_in_the_bottom_is_not_filled_or_carved():
    """A hollow dent up into the bottom face: its plane lies outside the surface, nothing changes."""
    def dented(p):
        return torch.minimum(box(p), -sphere(p, 0.25, (0.0, 0.0, -0.4)))

    grid = grid_with(dented)
    sdf = grid.sdf.detach().clone()
    tetrahedra_cap.cap_unseen(grid, views())
    centre_column = lambda v: v[:, :2].norm(dim=-1) < 0.05  # noqa: E731
    assert lowest(grid, centre_column) > BOTTOM + 0.1  # the dent is still there
    assert torch.equal(grid.sdf.detach() <= 0, sdf <= 0)  # no lattice vertex changed side


def test_a_lone_ball_loses_only_a_small_flat_spot():
    """Its bottom beyond 60° of every view (latitude below −70° from −10° views) becomes a plane:
    at most r(1 − cos 20°) ≈ 0.06 r higher, within a cell."""
    radius = 0.5
    grid = grid_with(lambda p: sphere(p, radius, (0.0, 0.0, 0.0)))
    tetrahedra_cap.cap_unseen(grid, views())
    bottom = lowest(grid)
    assert -radius - grid.cell < bottom < -radius * np.cos(np.radians(20.0)) + grid.cell


def test_cap_angle_is_range_checked():
    cls = lookup("geometry", "tetrahedra-sdf-grid")
    with pytest.raises((ConfigError, ValueError), match="convert_cap_angle=95"):
        parse_structured(cls.Config, {"convert_cap_angle": 95.0}, "system.geometry")
