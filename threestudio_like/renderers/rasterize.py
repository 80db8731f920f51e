"""Differentiable triangle rasterization in nvdiffrast's split: ``clip_positions`` → ``rasterize`` →
``interpolate`` → ``antialias`` (Laine et al. 2020; the last in renderers/antialias.py). Pure PyTorch
anywhere; nvdiffrast on CUDA tensors.

Conventions (nvdiffrast's):
- clip positions [B,V,4] (x, y, z, w); pixel (i, j), column i and row j, has its centre at NDC
  ((2i+1)/W − 1, (2j+1)/H − 1). ``clip_positions`` flips y, so that row 0 is the top of the image as
  in ``Cameras.rays()`` and in the other renderers' images.
- ``rast`` [B,H,W,4] = (u, v, z/w, triangle index + 1), 0 where nothing covers the pixel centre; (u, v)
  are the perspective-correct barycentrics of the triangle's vertices 0 and 1 (vertex 2 gets 1 − u − v).

Torch path: homogeneous rasterization (Olano & Greer 1997). For a triangle with clip vertices
V_i = (x_i, y_i, z_i, w_i) and a pixel centre (p, q) in NDC, λ = a × b with a_i = x_i − p w_i and
b_i = y_i − q w_i solves Σ λ_i (x_i − p w_i) = Σ λ_i (y_i − q w_i) = 0: λ/Σλ are the barycentrics of the
point of the triangle seen through that pixel, perspective-correct because clip space is linear in world
space. Each λ_i is linear in (p, q). The pixel is covered when all λ_i/Σλ ≥ 0, the point lies in front
(w > 0) and between the near and far planes (−1 ≤ z/w ≤ 1): clipping without splitting triangles, so
triangles behind the camera or crossing it need no special case. Candidate pixels come from each
triangle's screen bounding box (of its part in front of the near plane); the nearest z/w wins (ties: the
lower triangle index). Visibility is discrete (no gradient); (u, v, z/w) of the winner are recomputed
with autograd, so gradients reach the clip positions through them, as nvdiffrast's do.
"""
from __future__ import annotations

import math
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from threestudio_like.config import check_choice
from threestudio_like.kernels import use_kernels
from threestudio_like.kernels.rasterize import rasterize as compiled_rasterize

BACKENDS = ("auto", "torch", "nvdiffrast")
NEAR, FAR = 0.1, 100.0  # threestudio's near plane; cameras sit 1–4 from objects within a unit ball
_CONTEXTS: dict[torch.device, tuple[Any, Any]] = {}  # device → (RasterizeCudaContext or None, failure)
_WARNED: set[str] = set()


# --------------------------------------------------------------------------------------------------
# Cameras → clip space
# --------------------------------------------------------------------------------------------------
def projection_matrices(fovy: Tensor, aspect: float, near: float = NEAR, far: float = FAR) -> Tensor:
    """[B,4,4] OpenGL perspective projections (fovy [B] radians, aspect = width/height) with y flipped."""
    f = 1.0 / torch.tan(0.5 * fovy)
    proj = torch.zeros(len(fovy), 4, 4, dtype=fovy.dtype, device=fovy.device)
    proj[:, 0, 0] = f / aspect
    proj[:, 1, 1] = -f  # row 0 at the top of the image (see the module docstring)
    proj[:, 2, 2] = (far + near) / (near - far)
    proj[:, 2, 3] = 2.0 * far * near / (near - far)
    proj[:, 3, 2] = -1.0
    return proj


def clip_positions(v_pos: Tensor, cameras, near: float = NEAR, far: float = FAR) -> Tensor:
    """World vertices v_pos [V,3] (or [B,V,3]) → clip positions [B,V,4] in each of the B cameras."""
    if not 0.0 < near < far:
        raise ValueError(f"near={near}, far={far}: need 0 < near < far")
    c2w = cameras.c2w.to(v_pos.device, torch.float64)
    mvp = projection_matrices(cameras.fovy.to(v_pos.device, torch.float64), cameras.width / cameras.height, near, far)
    mvp = (mvp @ torch.linalg.inv(c2w)).to(v_pos.dtype)
    homogeneous = F.pad(v_pos, (0, 1), value=1.0)
    if homogeneous.dim() == 2:
        return torch.einsum("bij,vj->bvi", mvp, homogeneous)
    return torch.einsum("bij,bvj->bvi", mvp, homogeneous)


# --------------------------------------------------------------------------------------------------
# Backend choice
# --------------------------------------------------------------------------------------------------
def nvdiffrast_module():
    """The ``nvdiffrast.torch`` module, or None when it is not installed (imported only on CUDA)."""
    try:
        import nvdiffrast.torch as dr
    except ImportError:
        return None
    return dr


def use_nvdiffrast(backend: str, device: torch.device) -> bool:
    """Whether ``backend`` (auto | torch | nvdiffrast) runs nvdiffrast for tensors on ``device``.
    ``auto`` falls back to the torch path, with one warning, when nvdiffrast is missing or its plugin
    (compiled on first use, which needs nvcc and ninja) does not build."""
    check_choice(backend, BACKENDS, "backend")
    if backend == "torch" or (backend == "auto" and device.type != "cuda"):
        return False
    if device.type != "cuda":
        raise ValueError("backend='nvdiffrast' needs CUDA tensors; use backend='torch' or 'auto' on the CPU")
    if nvdiffrast_module() is None:
        if backend == "nvdiffrast":
            raise ValueError("backend='nvdiffrast' but nvdiffrast is not installed: pip install diffrp-nvdiffrast "
                             "(or pip install .[gpu]), or use backend='auto'")
        return _fall_back("nvdiffrast is not installed (pip install diffrp-nvdiffrast)")
    if backend == "auto" and cuda_context(device, strict=False) is None:
        return _fall_back(f"nvdiffrast could not start on {device}: {_CONTEXTS[torch.device(device)][1]}")
    return True


def _fall_back(reason: str) -> bool:
    if reason not in _WARNED:
        warnings.warn(f"{reason}; the mesh rasterizer uses its torch path", stacklevel=3)
        _WARNED.add(reason)
    return False


def cuda_context(device: torch.device, strict: bool = True):
    """One ``RasterizeCudaContext`` per CUDA device (no OpenGL needed); with ``strict=False``, None
    when it cannot be created (the failure is remembered, not retried)."""
    device = torch.device(device)
    if device not in _CONTEXTS:
        try:
            _CONTEXTS[device] = (nvdiffrast_module().RasterizeCudaContext(device=device), None)
        except Exception as error:  # noqa: BLE001  (a plugin build failure has no narrower type)
            _CONTEXTS[device] = (None, str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__)
    context, failure = _CONTEXTS[device]
    if context is None and strict:
        raise RuntimeError(f"nvdiffrast could not start on {device}: {failure}")
    return context


# --------------------------------------------------------------------------------------------------
# rasterize
# --------------------------------------------------------------------------------------------------
def take(values: Tensor, index: Tensor) -> Tensor:
    """values[index] along the first axis → [*index.shape, *values.shape[1:]] (index_select: on the
    CPU several times faster than advanced indexing, and so is its backward)."""
    return values.index_select(0, index.reshape(-1)).view(*index.shape, *values.shape[1:])


def _plane_functions(v: Tensor) -> Tensor:
    """Clip triangles v [T,3,4] → [T,5,3]: the linear functions c0 + c1·p + c2·q of the NDC pixel
    centre (p, q) giving λ_0, λ_1, λ_2 (unnormalised barycentrics), Σλ_i z_i and Σλ_i w_i.
    λ_i = a_j b_k − a_k b_j over the other two vertices j, k, with a = x − p w, b = y − q w."""
    x0, y0, z0, w0, x1, y1, z1, w1, x2, y2, z2, w2 = v.reshape(-1, 12).T.contiguous()  # one pass, [T] rows
    lam = ((x1 * y2 - x2 * y1, w2 * y1 - w1 * y2, x2 * w1 - x1 * w2),
           (x2 * y0 - x0 * y2, w0 * y2 - w2 * y0, x0 * w2 - x2 * w0),
           (x0 * y1 - x1 * y0, w1 * y0 - w0 * y1, x1 * w0 - x0 * w1))
    depth = [z0 * lam[0][c] + z1 * lam[1][c] + z2 * lam[2][c] for c in range(3)]
    homogeneous = [w0 * lam[0][c] + w1 * lam[1][c] + w2 * lam[2][c] for c in range(3)]
    return torch.stack([*lam[0], *lam[1], *lam[2], *depth, *homogeneous], -1).view(-1, 5, 3)


def _evaluate(planes: Tensor, p: Tensor, q: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """planes [K,5,3] at NDC points p, q [K] → barycentrics [K,3], z/w [K], w [K], covered [K] (bool).

    Visibility compares w (the camera-space depth): z/w orders the same but, with a near plane close to
    the camera, crowds distances into a few float32 steps near 1 (surfaces 1e-4 apart would swap)."""
    values = planes[..., 0] + planes[..., 1] * p[:, None] + planes[..., 2] * q[:, None]  # [K,5]
    lam, depth, homogeneous = values[:, :3], values[:, 3], values[:, 4]
    total = lam.sum(-1)
    safe_total = torch.where(total != 0, total, torch.ones_like(total))
    safe_w = torch.where(homogeneous != 0, homogeneous, torch.ones_like(homogeneous))
    bary, z_over_w, w = lam / safe_total[:, None], depth / safe_w, homogeneous / safe_total
    covered = ((total != 0) & (bary >= 0).all(-1) & (w > 0) & (z_over_w >= -1) & (z_over_w <= 1))
    return bary, z_over_w, w, covered


def _clipped_extent(v: Tensor) -> tuple[Tensor, Tensor]:
    """NDC box (lo [T,2], hi [T,2]) of the part of clip triangles v [T,3,4] in front of the near plane
    (z ≥ −w): their vertices there and the points where their edges cross it; lo > hi when none."""
    d = v[..., 2] + v[..., 3]  # ≥ 0 on the visible side of the near plane
    j = [1, 2, 0]
    dj, vj = d[:, j], v[:, j]
    crossing = (d >= 0) != (dj >= 0)
    t = (d / torch.where(crossing, d - dj, torch.ones_like(d))).clamp(0, 1)
    points = torch.cat([v, v + t[..., None] * (vj - v)], 1)  # vertices, then edge/near-plane crossings
    valid = torch.cat([d >= 0, crossing], 1) & (points[..., 3] > 0)
    ndc = points[..., :2] / torch.where(valid, points[..., 3], torch.ones_like(points[..., 3]))[..., None]
    ndc = ndc.nan_to_num(0.0, 1e6, -1e6).clamp(-1e6, 1e6)
    lo = torch.where(valid[..., None], ndc, torch.full_like(ndc, 1e7)).amin(1)
    hi = torch.where(valid[..., None], ndc, torch.full_like(ndc, -1e7)).amax(1)
    return lo, hi


def _pixel_boxes(pos_clip: Tensor, corners: Tensor, height: int, width: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Inclusive pixel ranges (x0, x1, y0, y1) [T] holding every pixel centre the triangles may cover
    (corners [T,3] index pos_clip [B·V,4]): the screen box of their part in front of the near plane,
    empty when none. Triangles wholly in front take the box of their projected vertices; only those
    crossing the near plane are clipped (they are few)."""
    w = pos_clip[:, 3]
    front = (pos_clip[:, 2] + w >= 0) & (w > 0)  # per vertex
    size = pos_clip.new_tensor([width, height])
    to_pixel = lambda ndc: ((ndc + 1) * size - 1) / 2  # noqa: E731  (pixel i's centre at i)
    pixel = to_pixel(pos_clip[:, :2] / torch.where(front, w, torch.ones_like(w))[:, None])
    columns = corners.T.contiguous()
    n0, n1, n2 = (take(pixel, column) for column in columns)
    lo, hi = torch.minimum(torch.minimum(n0, n1), n2), torch.maximum(torch.maximum(n0, n1), n2)
    in_front = take(front, columns[0]) & take(front, columns[1]) & take(front, columns[2])
    partial = torch.nonzero(~in_front)[:, 0]
    if len(partial):
        clipped_lo, clipped_hi = _clipped_extent(take(pos_clip, corners[partial]))
        lo[partial], hi[partial] = to_pixel(clipped_lo), to_pixel(clipped_hi)
    margin = 1e-3  # pixels: the box must not lose a centre the exact coverage test accepts
    first = torch.ceil(lo - margin).clamp(0, 1 << 30).long()
    last = torch.minimum(torch.floor(hi + margin).clamp(-1, 1 << 30), size - 1).long()
    return first[:, 0], last[:, 0], first[:, 1], last[:, 1]


@torch.no_grad()
def _visibility(pos_clip: Tensor, corners: Tensor, n_images: int, height: int, width: int, chunk_pairs: int) -> tuple[Tensor, Tensor]:
    """Nearest triangle per pixel. pos_clip [B·V,4], corners [B·F,3] (triangles of image b first at
    b·F) → (covered pixels [K] as flat indices into B·H·W, their triangle [K] as an index into B·F).
    (Triangle, pixel) pairs from the bounding boxes are tested in chunks of about ``chunk_pairs``."""
    n_tri = len(corners)
    Fn = n_tri // n_images
    x0, x1, y0, y1 = _pixel_boxes(pos_clip, corners, height, width)
    nx, ny = (x1 - x0 + 1).clamp_min(0), (y1 - y0 + 1).clamp_min(0)
    active = torch.nonzero((nx > 0) & (ny > 0))[:, 0]  # most small triangles hold no pixel centre
    x0, y0, nx, counts = take(x0, active), take(y0, active), take(nx, active), take(nx * ny, active)
    planes = _plane_functions(take(pos_clip, take(corners, active))).reshape(-1, 15)
    dtype, device = pos_clip.dtype, pos_clip.device
    ends = torch.cumsum(counts, 0)
    n_pix = n_images * height * width
    best_z = torch.full((n_pix,), math.inf, dtype=dtype, device=device)
    best_id = torch.full((n_pix,), n_tri, dtype=torch.long, device=device)
    start, total = 0, int(ends[-1]) if len(ends) else 0
    while start < total:  # pair range [start, stop) in the order of triangle indices
        stop = min(start + chunk_pairs, total)
        first_face = int(torch.searchsorted(ends, start, right=True))
        last_face = int(torch.searchsorted(ends, stop - 1, right=True))
        faces = torch.arange(first_face, last_face + 1, device=device)
        face = torch.repeat_interleave(faces, counts[first_face:last_face + 1])
        base = int(ends[first_face - 1]) if first_face > 0 else 0
        face = face[start - base: stop - base]
        face_nx = take(nx, face)
        local = torch.arange(start, stop, device=device) - take(ends - counts, face)
        row = torch.div(local, face_nx, rounding_mode="floor")
        px, py = take(x0, face) + local - row * face_nx, take(y0, face) + row
        p = (2 * px + 1).to(dtype) / width - 1
        q = (2 * py + 1).to(dtype) / height - 1
        _, _, z, covered = _evaluate(take(planes, face).view(-1, 5, 3), p, q)  # z: camera-space depth w
        kept = torch.nonzero(covered)[:, 0]
        face, z = take(active, take(face, kept)), take(z, kept)
        pixel = (torch.div(face, Fn, rounding_mode="floor") * height + take(py, kept)) * width + take(px, kept)
        chunk_z = torch.full_like(best_z, math.inf).scatter_reduce(0, pixel, z, "amin")
        nearest = z == take(chunk_z, pixel)
        chunk_id = torch.full_like(best_id, n_tri).scatter_reduce(0, pixel[nearest], face[nearest], "amin")
        closer = chunk_z < best_z  # on equal depth the earlier chunk (lower triangle index) stays
        best_z, best_id = torch.where(closer, chunk_z, best_z), torch.where(closer, chunk_id, best_id)
        start = stop
    pixel = torch.nonzero(best_id < n_tri)[:, 0]
    return pixel, take(best_id, pixel)


def rasterize_torch(pos_clip: Tensor, tri: Tensor, height: int, width: int, chunk_pairs: int = 1 << 20) -> Tensor:
    """The torch path of :func:`rasterize` (see the module docstring)."""
    B, V, Fn = pos_clip.shape[0], pos_clip.shape[1], tri.shape[0]
    corners = (torch.arange(B, device=tri.device)[:, None, None] * V + tri.long()).reshape(-1, 3)  # [B·F,3] into B·V
    flat = pos_clip.reshape(-1, 4)
    pixel, face = _visibility(flat.detach(), corners, B, height, width, chunk_pairs)
    px, py = pixel % width, torch.div(pixel, width, rounding_mode="floor") % height
    p = (2 * px + 1).to(pos_clip.dtype) / width - 1
    q = (2 * py + 1).to(pos_clip.dtype) / height - 1
    bary, z, _, _ = _evaluate(_plane_functions(take(flat, take(corners, face))), p, q)  # with autograd
    values = torch.stack([bary[:, 0], bary[:, 1], z, (face % Fn + 1).to(pos_clip.dtype)], -1)
    rast = pos_clip.new_zeros(B * height * width, 4).index_copy(0, pixel, values)
    return rast.view(B, height, width, 4)


def rasterize(pos_clip: Tensor, tri: Tensor, height: int, width: int, backend: str = "auto", cpu_kernel: Any = "auto") -> Tensor:
    """Triangles tri [F,3] (int) of clip positions pos_clip [B,V,4] → rast [B,H,W,4] = (u, v, z/w,
    triangle index + 1), 0 where empty; differentiable in pos_clip through (u, v, z/w).
    ``cpu_kernel`` (auto | true | false): on the CPU, the compiled loops (kernels/csrc/rasterize.cpp:
    the same pixels and values, gradients to float rounding) or this module's torch path."""
    if pos_clip.dim() != 3 or pos_clip.shape[-1] != 4:
        raise ValueError(f"pos_clip must be [B,V,4], got {list(pos_clip.shape)}")
    if use_nvdiffrast(backend, pos_clip.device):
        dr = nvdiffrast_module()
        rast, _ = dr.rasterize(cuda_context(pos_clip.device), pos_clip.float().contiguous(), tri.int().contiguous(),
                               resolution=[height, width])
        return rast
    if use_kernels(cpu_kernel, pos_clip, tri):
        return compiled_rasterize(pos_clip, tri, height, width)
    return rasterize_torch(pos_clip, tri, height, width)


# --------------------------------------------------------------------------------------------------
# interpolate
# --------------------------------------------------------------------------------------------------
def covered_pixels(rast: Tensor) -> tuple[Tensor, Tensor]:
    """(flat pixel indices [K] into B·H·W, their triangle index [K]) of the covered pixels of rast."""
    triangle = rast[..., 3].detach().reshape(-1).long() - 1
    pixel = torch.nonzero(triangle >= 0)[:, 0]
    return pixel, take(triangle, pixel)


def interpolate(attr: Tensor, rast: Tensor, tri: Tensor, backend: str = "auto") -> Tensor:
    """Vertex attributes attr [V,C] (or [B,V,C]) at the pixel centres → [B,H,W,C] (0 where empty):
    u·a_0 + v·a_1 + (1 − u − v)·a_2; gradients reach attr and, through (u, v), the clip positions."""
    if use_nvdiffrast(backend, attr.device):
        batched = attr if attr.dim() == 3 else attr[None]  # instanced mode broadcasts a [1,V,C]
        out, _ = nvdiffrast_module().interpolate(batched.float().contiguous(), rast.float().contiguous(), tri.int().contiguous())
        return out
    B, H, W, _ = rast.shape
    pixel, triangle = covered_pixels(rast)
    corners = take(tri.long(), triangle)  # [K,3]
    if attr.dim() == 2:
        values = take(attr, corners)  # [K,3,C]
    else:
        batch = torch.div(pixel, H * W, rounding_mode="floor")
        values = take(attr.expand(B, *attr.shape[1:]).reshape(-1, attr.shape[-1]), batch[:, None] * attr.shape[1] + corners)
    uv = take(rast.reshape(-1, 4), pixel)[:, :2].to(attr.dtype)
    weights = torch.cat([uv, 1 - uv.sum(-1, keepdim=True)], -1)  # [K,3]
    out = attr.new_zeros(B * H * W, attr.shape[-1]).index_copy(0, pixel, (weights[..., None] * values).sum(1))
    return out.view(B, H, W, -1)
