"""Cameras: a batched camera type, the random training sampler and orbit cameras.

Conventions (as in threestudio): the world is z-up; a camera at azimuth 0° and elevation 0° sits on
the +x axis looking at the origin, so "front" views see the +x side of an object. Camera-to-world
matrices use the OpenGL camera frame (x right, y up, looking down −z).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, List, Optional

import torch
from torch import Tensor

from threestudio_like.registry import register
from threestudio_like.utils.checks import BadValue, check_above, check_at_least, check_between

VIEW_LABELS = ("front", "side", "back", "overhead")


@dataclass
class Cameras:
    """A batch of B pinhole cameras looking at the origin.

    c2w: [B,4,4] camera-to-world (OpenGL frame); fovy: [B] radians; elevation, azimuth: [B] degrees
    (azimuth in (−180, 180]); distance: [B]; light_position: [B,3] world position of the point light.
    """

    c2w: Tensor
    fovy: Tensor
    elevation: Tensor
    azimuth: Tensor
    distance: Tensor
    light_position: Tensor
    width: int
    height: int

    def __len__(self) -> int:
        return self.c2w.shape[0]

    @property
    def device(self) -> torch.device:
        return self.c2w.device

    @property
    def position(self) -> Tensor:
        """[B,3] camera centres."""
        return self.c2w[:, :3, 3]

    def to(self, device: torch.device | str) -> "Cameras":
        tensors = {k: getattr(self, k).to(device) for k in ("c2w", "fovy", "elevation", "azimuth", "distance", "light_position")}
        return replace(self, **tensors)

    def __getitem__(self, index: Any) -> "Cameras":
        if isinstance(index, int):
            index = slice(index, index + 1)
        tensors = {k: getattr(self, k)[index] for k in ("c2w", "fovy", "elevation", "azimuth", "distance", "light_position")}
        return replace(self, **tensors)

    def with_resolution(self, width: int, height: int) -> "Cameras":
        return replace(self, width=width, height=height)

    @staticmethod
    def cat(cameras: List["Cameras"]) -> "Cameras":
        first = cameras[0]
        tensors = {k: torch.cat([getattr(c, k) for c in cameras]) for k in ("c2w", "fovy", "elevation", "azimuth", "distance", "light_position")}
        return replace(first, **tensors)

    def focal_length(self) -> Tensor:
        """[B] focal length in pixels (square pixels)."""
        return 0.5 * self.height / torch.tan(0.5 * self.fovy)

    def intrinsics(self) -> Tensor:
        """[B,3,3] pixel-space intrinsics K (principal point at the image centre)."""
        f = self.focal_length()
        K = torch.zeros(len(self), 3, 3, device=self.device)
        K[:, 0, 0] = f
        K[:, 1, 1] = f
        K[:, 0, 2] = 0.5 * self.width
        K[:, 1, 2] = 0.5 * self.height
        K[:, 2, 2] = 1.0
        return K

    def viewmats_opencv(self) -> Tensor:
        """[B,4,4] world-to-camera matrices in the OpenCV frame (x right, y down, +z forward)."""
        flip = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0], device=self.device))
        return torch.linalg.inv(self.c2w @ flip)

    def rays(self) -> tuple[Tensor, Tensor]:
        """Ray origins and unit directions through pixel centres, both [B,H,W,3]."""
        B, H, W = len(self), self.height, self.width
        j, i = torch.meshgrid(
            torch.arange(H, device=self.device, dtype=torch.float32) + 0.5,
            torch.arange(W, device=self.device, dtype=torch.float32) + 0.5,
            indexing="ij",
        )
        f = self.focal_length().view(B, 1, 1)
        # camera-frame directions (OpenGL: y up, looking down −z)
        dirs = torch.stack(
            [(i - 0.5 * W).expand(B, H, W) / f, -(j - 0.5 * H).expand(B, H, W) / f, -torch.ones(B, H, W, device=self.device)],
            dim=-1,
        )
        dirs = torch.einsum("bij,bhwj->bhwi", self.c2w[:, :3, :3], dirs)
        dirs = dirs / dirs.norm(dim=-1, keepdim=True)
        origins = self.position.view(B, 1, 1, 3).expand(B, H, W, 3)
        return origins, dirs

    def flat_matrices(self) -> Tensor:
        """[B,16] flattened camera-to-world matrices (the camera condition of VSD's ε_φ)."""
        return self.c2w.reshape(len(self), 16)

    def view_labels(self, front_threshold: float = 45.0, back_threshold: float = 45.0, overhead_threshold: float = 60.0) -> list[str]:
        """One of front/side/back/overhead per camera, by threestudio's rule.

        overhead: elevation > overhead_threshold; front: |azimuth| < front_threshold;
        back: |azimuth| > 180 − back_threshold; side otherwise.
        """
        labels = []
        for elevation, azimuth in zip(self.elevation.tolist(), wrap_degrees(self.azimuth).tolist()):
            if elevation > overhead_threshold:
                labels.append("overhead")
            elif abs(azimuth) < front_threshold:
                labels.append("front")
            elif abs(azimuth) > 180.0 - back_threshold:
                labels.append("back")
            else:
                labels.append("side")
        return labels


def wrap_degrees(angle: Tensor) -> Tensor:
    """Angles wrapped to (−180, 180]."""
    return -((-angle + 180.0) % 360.0 - 180.0)


def look_at_origin(position: Tensor, up: Optional[Tensor] = None) -> Tensor:
    """[B,4,4] OpenGL camera-to-world matrices for cameras at ``position`` [B,3] looking at 0."""
    if up is None:
        up = torch.tensor([0.0, 0.0, 1.0], device=position.device).expand_as(position)
    forward = -position / position.norm(dim=-1, keepdim=True)
    right = torch.cross(forward, up, dim=-1)
    # straight up/down: any horizontal right vector will do
    degenerate = right.norm(dim=-1) < 1e-6
    if degenerate.any():
        right[degenerate] = torch.tensor([0.0, 1.0, 0.0], device=position.device)
    right = right / right.norm(dim=-1, keepdim=True)
    true_up = torch.cross(right, forward, dim=-1)
    c2w = torch.eye(4, device=position.device).repeat(len(position), 1, 1)
    c2w[:, :3, 0] = right
    c2w[:, :3, 1] = true_up
    c2w[:, :3, 2] = -forward
    c2w[:, :3, 3] = position
    return c2w


def spherical_to_position(elevation_deg: Tensor, azimuth_deg: Tensor, distance: Tensor) -> Tensor:
    """[B,3] positions on spheres around the origin (z-up, azimuth 0 on +x)."""
    e, a = torch.deg2rad(elevation_deg), torch.deg2rad(azimuth_deg)
    return torch.stack([distance * e.cos() * a.cos(), distance * e.cos() * a.sin(), distance * e.sin()], dim=-1)


def make_cameras(
    elevation: Tensor, azimuth: Tensor, distance: Tensor, fovy_deg: Tensor, width: int, height: int,
    light_position: Optional[Tensor] = None,
) -> Cameras:
    """Cameras from spherical coordinates (degrees); the light defaults to the camera position."""
    position = spherical_to_position(elevation, azimuth, distance)
    return Cameras(
        c2w=look_at_origin(position),
        fovy=torch.deg2rad(fovy_deg),
        elevation=elevation,
        azimuth=wrap_degrees(azimuth),
        distance=distance,
        light_position=position.clone() if light_position is None else light_position,
        width=width,
        height=height,
    )


def orbit_cameras(
    n_views: int, elevation: float, distance: float, fovy: float, width: int, height: int, azimuth_offset: float = 0.0
) -> Cameras:
    """``n_views`` cameras evenly spaced in azimuth on one orbit, starting at the front (azimuth 0),
    or ``azimuth_offset`` of a step past it (0.5: views halfway between those of an unshifted orbit)."""
    azimuth = (torch.arange(n_views, dtype=torch.float32) + azimuth_offset) * (360.0 / n_views)
    full = lambda v: torch.full((n_views,), float(v))  # noqa: E731
    return make_cameras(full(elevation), azimuth, full(distance), full(fovy), width, height)


# renders larger than this (per side) exhaust any memory this renderer runs in
MAX_RESOLUTION = 8192
MAX_VIEWS = 10000  # validation grid / turntable frames: all are rendered and held in memory

@dataclass
class RandomCameraConfig:
    width: Any = 64  # int, or a list with one entry per stage of ``resolution_milestones``
    height: Any = 64
    resolution_milestones: List[int] = field(default_factory=list)  # steps where the next width/height start
    batch_size: int = 1
    elevation_range: List[float] = field(default_factory=lambda: [-10.0, 90.0])
    azimuth_range: List[float] = field(default_factory=lambda: [-180.0, 180.0])
    camera_distance_range: List[float] = field(default_factory=lambda: [1.0, 1.5])
    fovy_range: List[float] = field(default_factory=lambda: [40.0, 70.0])
    light_distance_range: List[float] = field(default_factory=lambda: [0.8, 1.5])
    # DreamFusion's light: near the camera direction, with this standard deviation (world units)
    light_position_perturb: float = 1.0
    eval_width: int = 512  # previews (validation, turntable): threestudio's 512² and 120 views
    eval_height: int = 512
    eval_elevation: float = 15.0
    eval_camera_distance: float = 1.5
    eval_fovy: float = 70.0
    n_val_views: int = 4
    n_test_views: int = 120

    def __post_init__(self) -> None:
        for key in ("elevation_range", "azimuth_range", "camera_distance_range", "fovy_range", "light_distance_range"):
            value = getattr(self, key)
            if len(value) != 2 or value[0] > value[1]:
                raise ValueError(f"{key}={list(value)!r} must be [low, high] with low <= high")
        widths, heights = _as_list(self.width), _as_list(self.height)
        if len(widths) != len(heights) or len(widths) != len(self.resolution_milestones) + 1:
            raise ValueError(
                f"width={self.width!r}/height={self.height!r} need one entry per stage: "
                f"{len(self.resolution_milestones) + 1} for resolution_milestones={list(self.resolution_milestones)}"
            )
        check_at_least(self, 1, "width", "height", "batch_size", "eval_width", "eval_height", "n_val_views", "n_test_views")
        check_between(self, 1, MAX_RESOLUTION, "width", "height", "eval_width", "eval_height")
        check_between(self, 1, MAX_VIEWS, "n_val_views", "n_test_views")
        check_at_least(self, 0, "resolution_milestones", "light_position_perturb")
        if list(self.resolution_milestones) != sorted(self.resolution_milestones):
            raise BadValue("resolution_milestones", list(self.resolution_milestones), "list the steps in increasing order")
        check_above(self, 0.0, "camera_distance_range", "light_distance_range", "eval_camera_distance")
        check_between(self, 1e-3, 179.0, "fovy_range", "eval_fovy")
        check_between(self, -90.0, 90.0, "elevation_range", "eval_elevation")


def _as_list(value: Any) -> list[int]:
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]


@register("data", "random-camera")
class RandomCameraSampler:
    """Draws training cameras uniformly in the configured ranges; also builds val/test orbits."""

    Config = RandomCameraConfig

    def __init__(self, cfg: RandomCameraConfig) -> None:
        self.cfg = cfg
        self.step = 0

    def update_step(self, step: int) -> None:
        self.step = step

    def resolution(self, step: Optional[int] = None) -> tuple[int, int]:
        """(width, height) of training renders at ``step`` (progressive resolution)."""
        step = self.step if step is None else step
        stage = sum(step >= m for m in self.cfg.resolution_milestones)
        return _as_list(self.cfg.width)[stage], _as_list(self.cfg.height)[stage]

    def sample(self, generator: Optional[torch.Generator] = None) -> Cameras:
        """A batch of random training cameras (on the CPU)."""
        cfg, B = self.cfg, self.cfg.batch_size

        def uniform(low_high: List[float]) -> Tensor:
            low, high = low_high
            return low + (high - low) * torch.rand(B, generator=generator)

        # elevation uniform in angle; DreamFusion samples uniformly on the sphere, which starves the
        # overhead views that view-dependent prompts rely on
        elevation = uniform(cfg.elevation_range)
        azimuth = uniform(cfg.azimuth_range)
        distance = uniform(cfg.camera_distance_range)
        fovy = uniform(cfg.fovy_range)
        width, height = self.resolution()
        cameras = make_cameras(elevation, azimuth, distance, fovy, width, height)
        # point light near the camera's direction (DreamFusion), at a random distance
        direction = cameras.position / cameras.distance[:, None]
        jittered = direction + cfg.light_position_perturb * torch.randn(B, 3, generator=generator) * 0.25
        jittered = jittered / jittered.norm(dim=-1, keepdim=True)
        cameras.light_position = jittered * uniform(cfg.light_distance_range)[:, None]
        return cameras

    def validation_cameras(self) -> Cameras:
        cfg = self.cfg
        return orbit_cameras(cfg.n_val_views, cfg.eval_elevation, cfg.eval_camera_distance, cfg.eval_fovy, cfg.eval_width, cfg.eval_height)

    def test_cameras(self) -> Cameras:
        cfg = self.cfg
        return orbit_cameras(cfg.n_test_views, cfg.eval_elevation, cfg.eval_camera_distance, cfg.eval_fovy, cfg.eval_width, cfg.eval_height)
