"""Cleaning an occupancy grid before it becomes a signed distance (``create_from``'s conversion).

All functions take and return numpy arrays on a regular voxel grid [X,Y,Z]; distances are in voxels.
Morphology is exact for a Euclidean ball: it is done with Euclidean distance transforms
(``scipy.ndimage.distance_transform_edt``), not with iterated 3×3×3 structuring elements (which grow
cubes, not balls). Everything beyond the array counts as outside.

- :func:`close`: dilation then erosion by a ball of radius r. It joins parts closer than 2r with a
  fillet of radius r (no thin neck: the bridge is as wide as the ball that could not pass), fills
  holes and cracks narrower than 2r, and leaves convex outlines where they were (the closing of a
  convex set is the set itself); it never removes an inside voxel.
- :func:`fill_cavities`: inside voxels for every empty region that does not reach the outside.
- :func:`drop_small_parts`: outside voxels for every inside part much smaller than the largest.
- :func:`signed_distance`: a true signed distance of an occupancy (positive inside), with the surface
  halfway between inside and outside voxel centres, refined to sub-voxel accuracy next to the surface
  where a first-order estimate of the same sign is given.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
from scipy import ndimage


def _padded(occupancy: np.ndarray, width: int) -> np.ndarray:
    """occupancy [X,Y,Z] bool → [X+2w,Y+2w,Z+2w] with ``width`` layers of outside on every side."""
    return np.pad(occupancy.astype(bool), width, mode="constant", constant_values=False)


def _cropped(array: np.ndarray, width: int) -> np.ndarray:
    return array[width:-width, width:-width, width:-width] if width > 0 else array


def dilate(occupancy: np.ndarray, radius: float) -> np.ndarray:
    """occupancy [X,Y,Z] bool → voxels within ``radius`` of an inside voxel's centre [X,Y,Z] bool."""
    if not occupancy.any():
        return occupancy.astype(bool)
    return ndimage.distance_transform_edt(~occupancy.astype(bool)) <= radius


def erode(occupancy: np.ndarray, radius: float) -> np.ndarray:
    """occupancy [X,Y,Z] bool → inside voxels farther than ``radius`` from every outside voxel
    (the space beyond the array included) [X,Y,Z] bool."""
    padded = _padded(occupancy, 1)
    return _cropped(ndimage.distance_transform_edt(padded) > radius, 1)


def close(occupancy: np.ndarray, radius: float) -> np.ndarray:
    """Morphological closing by a ball of ``radius`` voxels: occupancy [X,Y,Z] bool → [X,Y,Z] bool ⊇ it.

    Padded by the radius first, so that the dilation is not cut at the array's border (a cut
    dilation would erode back less than it grew and fatten whatever touches the border)."""
    if radius <= 0:
        return occupancy.astype(bool)
    width = int(math.ceil(radius)) + 1
    return _cropped(erode(dilate(_padded(occupancy, width), radius), radius), width)


def fill_cavities(occupancy: np.ndarray, structure: Optional[np.ndarray] = None) -> np.ndarray:
    """occupancy [X,Y,Z] bool → [X,Y,Z] bool with every enclosed empty region filled: empty space
    that does not reach the array's border through ``structure``'s neighbours (a [3,3,3] bool
    connectivity; default the 6 face neighbours) is a cavity."""
    return ndimage.binary_fill_holes(occupancy.astype(bool), structure=structure)


def drop_small_parts(occupancy: np.ndarray, fraction: float, structure: Optional[np.ndarray] = None) -> np.ndarray:
    """occupancy [X,Y,Z] bool → [X,Y,Z] bool without the connected inside parts (``structure``'s
    connectivity, default 6) of fewer than ``fraction`` × the largest part's voxels; the largest
    always stays, ``fraction`` 0 keeps everything."""
    labels, count = ndimage.label(occupancy.astype(bool), structure=structure)
    if count < 2 or fraction <= 0:
        return occupancy.astype(bool)
    sizes = np.bincount(labels.reshape(-1))
    sizes[0] = 0  # the empty space
    keep = sizes >= fraction * sizes.max()
    keep[0] = False
    return keep[labels]


def signed_distance(occupancy: np.ndarray, estimate: Optional[np.ndarray] = None) -> np.ndarray:
    """Signed distance [X,Y,Z] float32 in voxels, positive inside, of occupancy [X,Y,Z] bool.

    The surface lies halfway between an inside and an outside voxel centre: inside voxels get their
    distance to the nearest outside centre minus ½, outside voxels minus (their distance to the
    nearest inside centre minus ½), so neighbours across the surface hold ±½ (error ≤ ½ voxel).
    ``estimate`` [X,Y,Z] (voxels, positive inside), e.g. a level over its gradient, replaces those
    ±½ values where it has the voxel's sign and |estimate| ≤ 1: next to a surface the occupancy
    kept, it places the zero between the centres where the field crosses, sub-voxel. An empty
    occupancy is −inf everywhere (the caller clamps)."""
    inside = occupancy.astype(bool)
    if not inside.any():
        return np.full(inside.shape, -np.inf, dtype=np.float32)
    depth = _cropped(ndimage.distance_transform_edt(_padded(inside, 1)), 1)
    height = ndimage.distance_transform_edt(~inside)
    distance = np.where(inside, depth - 0.5, 0.5 - height).astype(np.float32)
    if estimate is not None:
        next_to_surface = np.abs(distance) < 1.0
        agrees = ((estimate > 0) == inside) & (np.abs(estimate) <= 1.0)
        distance = np.where(next_to_surface & agrees, estimate, distance).astype(np.float32)
    return distance
