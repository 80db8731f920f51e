"""nvdiffrast's analytic antialiasing (Laine et al. 2020), the one place visibility gets a gradient.

At each pair of horizontally or vertically adjacent pixels whose triangle ids differ, the nearer
triangle (or the only one) is examined: among its edges that cross the segment between the two pixel
centres, the crossing nearest the other pixel is taken when that edge is a silhouette (the triangle
across it lies on the same side in screen space, i.e. faces away, or there is none) and is steeper
than 45° to the segment (flatter edges are handled by the perpendicular pairs). With d ∈ [0, 1] the
crossing's distance from the centre of the pixel the triangle covers, the pixel on the far side of the
segment's midpoint from the edge takes a fraction |½ − d| of the other pixel's colour: the image is
then linear in the edge position, so its gradient reaches the clip positions (and the colours).
"""
from __future__ import annotations

import math
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from threestudio_like.kernels import use_kernels
from threestudio_like.kernels.rasterize import antialias as compiled_antialias
from threestudio_like.renderers.rasterize import nvdiffrast_module, take, use_nvdiffrast


def opposite_vertices(tri: Tensor) -> Tensor:
    """For edge i of each triangle (the edge facing its vertex i), the vertex of the neighbouring
    triangle across that edge that is not on it: tri [F,3] → [F,3] long, −1 on open edges."""
    tri = tri.long()
    a, b = tri.roll(-1, 1), tri.roll(-2, 1)
    key = (torch.minimum(a, b) * (int(tri.max()) + 1 if len(tri) else 1) + torch.maximum(a, b)).reshape(-1)
    order = torch.argsort(key)
    sorted_key = key[order]
    n = len(key)
    same = sorted_key[1:] == sorted_key[:-1]
    index = torch.arange(n, device=tri.device)
    following = torch.where(F.pad(same, (0, 1)), index + 1, -1)
    preceding = torch.where(F.pad(same, (1, 0)), index - 1, -1)
    partner_sorted = torch.where(following >= 0, following, preceding)  # pairs edges that share a key
    partner = torch.full_like(index, -1)
    partner[order] = torch.where(partner_sorted >= 0, order[partner_sorted.clamp_min(0)], -1)
    opposite = tri.reshape(-1)[partner.clamp_min(0)]  # half-edge (f, i) ↔ vertex (f', i') of its partner
    return torch.where(partner >= 0, opposite, -1).view(-1, 3)


def _discontinuities(rast: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Adjacent pixel pairs with different triangle ids: (pixel0 [K], pixel1 [K] flat indices into
    B·H·W, down [K] bool: pixel1 lies below pixel0 rather than to its right)."""
    B, H, W, _ = rast.shape
    tid = rast[..., 3].detach()
    index = torch.arange(B * H * W, device=rast.device).view(B, H, W)
    right = torch.nonzero((tid[:, :, 1:] != tid[:, :, :-1]).reshape(-1))[:, 0]
    right = index[:, :, :-1].reshape(-1)[right]
    down = torch.nonzero((tid[:, 1:] != tid[:, :-1]).reshape(-1))[:, 0]
    down = index[:, :-1].reshape(-1)[down]
    pixel0 = torch.cat([right, down])
    is_down = torch.cat([torch.zeros_like(right, dtype=torch.bool), torch.ones_like(down, dtype=torch.bool)])
    return pixel0, pixel0 + torch.where(is_down, W, 1), is_down


def _silhouette_crossings(own: Tensor, other: Tensor, from_first: Tensor, down: Tensor) -> tuple[Tensor, Tensor]:
    """Where a silhouette edge of a triangle crosses the segment between two pixel centres.

    own [K,3,2], other [K,3,2]: the triangle's vertices and the opposite vertices across its edges
    (the vertex itself on open edges), in pixels relative to the centre of the pixel the triangle
    covers; the other pixel lies one step along +x (or +y when ``down``) if ``from_first``, else along
    −x (−y). → (distance [K] from the covering pixel's centre to the crossing, in [0, 1]; found [K]).
    An edge is a silhouette when the neighbour's far vertex lies on the triangle's own side of it.
    """
    x, y = own.unbind(-1)
    ox, oy = other.unbind(-1)
    xj, yj, xk, yk = x.roll(-1, 1), y.roll(-1, 1), x.roll(-2, 1), y.roll(-2, 1)
    own_side = (xj - x) * (yk - y) - (xk - x) * (yj - y)  # the triangle's signed area, per edge
    far_side = (xj - ox) * (yk - oy) - (xk - ox) * (yj - oy)
    silhouette = own_side * far_side > 0
    swap = down[:, None]  # vertical pairs: exchange x and y so the segment always runs along x
    x, y, xj, yj, xk, yk = (torch.where(swap, b, a) for a, b in ((x, y), (y, x), (xj, yj), (yj, xj), (xk, yk), (yk, xk)))
    dx, dy = xk - xj, yk - yj
    crosses = (yj < 0) != (yk < 0)
    sign = torch.where(from_first, 1.0, -1.0).to(own.dtype)[:, None]
    at = sign * (xj - yj * dx / torch.where(crosses, dy, torch.ones_like(dy)))  # the crossing, toward the other pixel
    at = torch.where(crosses, at, torch.full_like(at, -math.inf))
    edge = at.detach().argmax(1, keepdim=True)  # the crossing nearest the other pixel
    pick = lambda t: t.gather(1, edge)[:, 0]  # noqa: E731
    distance = pick(at)
    steep = pick(dy).abs() >= pick(dx).abs()  # the perpendicular pass handles flatter edges
    eps = 1.0 / 16.0  # nvdiffrast's tolerance for crossings just outside the segment
    found = pick(silhouette) & steep & (distance > -eps) & (distance < 1 + eps)
    return distance.clamp(0, 1), found


def antialias_torch(color: Tensor, rast: Tensor, pos_clip: Tensor, tri: Tensor, opposite: Optional[Tensor] = None) -> Tensor:
    """The torch path of :func:`antialias` (nvdiffrast's analytic antialiasing)."""
    B, H, W, C = color.shape
    V = pos_clip.shape[1]
    tri = tri.long()
    opposite = opposite_vertices(tri) if opposite is None else opposite
    pixel0, pixel1, down = _discontinuities(rast)
    flat = rast.detach().reshape(-1, 4)
    r0, r1 = take(flat, pixel0), take(flat, pixel1)
    t0, t1 = r0[:, 3].long() - 1, r1[:, 3].long() - 1
    from_first = (t0 >= 0) & ((t1 < 0) | (r0[:, 2] < r1[:, 2]))  # the nearer triangle's edge
    triangle = torch.where(from_first, t0, t1)
    covering = torch.where(from_first, pixel0, pixel1)
    batch = torch.div(covering, H * W, rounding_mode="floor")
    corners, across = take(tri, triangle), take(opposite, triangle)
    far = torch.where(across >= 0, across, corners)
    vertices = take(pos_clip.reshape(-1, 4), batch[:, None] * V + torch.cat([corners, far], 1))  # [K,6,4]
    in_front = (vertices[..., 3] > 0).all(1)  # pixel-space projection needs w > 0: others are not blended
    w = torch.where(in_front[:, None], vertices[..., 3], torch.ones_like(vertices[..., 3]))
    size = pos_clip.new_tensor([W, H])
    centre = torch.stack([covering % W, torch.div(covering, W, rounding_mode="floor") % H], -1).to(pos_clip.dtype) + 0.5
    screen = (vertices[..., :2] / w[..., None] + 1) * 0.5 * size - centre[:, None]  # pixels, relative
    distance, found = _silhouette_crossings(screen[:, :3], screen[:, 3:], from_first, down)
    keep = found & in_front
    # the pixel on the far side of the segment's midpoint from the edge takes colour from the other
    kept = torch.nonzero(keep)[:, 0]
    alpha = take(torch.where(from_first, 1.0, -1.0).to(color.dtype) * (0.5 - distance.to(color.dtype)), kept)
    p0, p1 = take(pixel0, kept), take(pixel1, kept)
    colors = color.reshape(-1, C)
    target = torch.where(alpha > 0, p0, p1)
    update = alpha[:, None] * (take(colors, p1) - take(colors, p0))
    return (colors + torch.zeros_like(colors).index_add(0, target, update)).view(B, H, W, C)


def antialias(color: Tensor, rast: Tensor, pos_clip: Tensor, tri: Tensor, backend: str = "auto",
              opposite: Optional[Tensor] = None, cpu_kernel: Any = "auto") -> Tensor:
    """color [B,H,W,C] blended across silhouette edges (module docstring) → [B,H,W,C]; gradients
    reach pos_clip and color. ``opposite`` (from :func:`opposite_vertices`) saves recomputing the
    mesh topology. ``cpu_kernel`` (auto | true | false): on the CPU the compiled loop
    (kernels/csrc/antialias.cpp: the same image, gradients to float rounding) or the torch path."""
    if use_nvdiffrast(backend, color.device):
        return nvdiffrast_module().antialias(color.float().contiguous(), rast.float().contiguous(),
                                             pos_clip.float().contiguous(), tri.int().contiguous())
    if color.dtype == pos_clip.dtype == rast.dtype and use_kernels(cpu_kernel, color, pos_clip):
        return compiled_antialias(color, rast, pos_clip, tri, opposite_vertices(tri) if opposite is None else opposite)
    return antialias_torch(color, rast, pos_clip, tri, opposite)
