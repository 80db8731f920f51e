"""Gaussian splatting: gsplat's CUDA rasterizer, or a dense pure-PyTorch one that runs anywhere.

Both paths follow gsplat's conventions, so one test compares them on a GPU: EWA projection through the
Jacobian of the perspective map (with gsplat's clamp of off-screen means), 0.3 px² dilation (eps2d),
opacity-aware radius min(3.33, √(2 ln(255·o)))·σ, sort by camera z, α = min(0.999, o·exp(−½ dᵀΣ⁻¹d))
with α < 1/255 skipped, front-to-back compositing that stops a pixel once T would reach 1e-4.
The dense path evaluates every Gaussian at every pixel: O(C·N·H·W) time, and with chunk
checkpointing O(C·chunk·H·W) memory — fine for a few thousand Gaussians at 32–64 px, not for 512².
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from threestudio_like.config import check_choice
from threestudio_like.geometry.gaussian_ops import covariance_3d
from threestudio_like.registry import register
from threestudio_like.renderers.base import Renderer
from threestudio_like.renderers.gaussian_pairs import ALPHA_THRESHOLD, TRANSMITTANCE_MIN, live_pairs, pair_sigma
from threestudio_like.renderers.gaussian_composite import CompositePairs
from threestudio_like.utils.checks import check_above, check_at_least, check_between

MAX_EXTEND = 3.33


@dataclass
class GaussianRendererConfig:
    backend: str = "auto"  # auto: gsplat on CUDA, torch elsewhere | gsplat | torch
    near_plane: float = 0.01
    far_plane: float = 1e10
    eps2d: float = 0.3  # px² added to every projected covariance (anti-aliasing dilation)
    max_alpha: float = 0.999  # gsplat's clamp (the 3DGS paper used 0.99)
    # torch path: "sparse" evaluates each Gaussian inside its radius box only; "dense" evaluates every
    # Gaussian at every pixel (the plain reference, chunked over Gaussians)
    torch_mode: str = "sparse"
    chunk_size: int = 256  # dense: Gaussians per chunk
    checkpoint_chunks: bool = True  # dense: recompute chunks in backward (memory of one chunk)

    def __post_init__(self) -> None:
        check_choice(self.backend, ("auto", "gsplat", "torch"), "renderer.backend")
        check_choice(self.torch_mode, ("sparse", "dense"), "renderer.torch_mode")
        check_at_least(self, 1, "chunk_size")
        check_above(self, 0.0, "near_plane", "max_alpha")
        check_above(self, self.near_plane, "far_plane")
        check_at_least(self, 0, "eps2d")
        check_between(self, 0.0, 1.0, "max_alpha")


# --------------------------------------------------------------------------------------------------
# The torch path
# --------------------------------------------------------------------------------------------------
def project_gaussians(
    means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, viewmats: Tensor, Ks: Tensor,
    width: int, height: int, near: float = 0.01, far: float = 1e10, eps2d: float = 0.3,
) -> dict[str, Tensor]:
    """Project N Gaussians into C cameras (viewmats [C,4,4] world→camera OpenCV, Ks [C,3,3]).

    Returns means2d [C,N,2] (pixels, centre of pixel (0,0) at (0.5,0.5)), conics [C,N,3] (the upper
    triangle a,b,c of Σ₂ᴅ⁻¹), depths [C,N] (camera z), radii [C,N,2] (int32, 0 = culled) and
    visible [C,N] (bool).
    """
    R, t = viewmats[:, :3, :3], viewmats[:, :3, 3]
    p = torch.einsum("cij,nj->cni", R, means) + t[:, None]  # [C,N,3]
    cov = R[:, None] @ covariance_3d(quats, scales)[None] @ R[:, None].transpose(-1, -2)  # [C,N,3,3]
    fx, fy, cx, cy = (Ks[:, 0, 0, None], Ks[:, 1, 1, None], Ks[:, 0, 2, None], Ks[:, 1, 2, None])
    x, y, z = p.unbind(-1)
    zs = torch.where(z > 1e-6, z, torch.ones_like(z))  # behind the camera: culled below, kept finite
    # gsplat clamps the Jacobian's position to 1.3× the field of view, so means far off-screen do
    # not produce huge projected covariances
    tx = zs * (x / zs).clamp(-(cx / fx + 0.15 * width / fx), (width - cx) / fx + 0.15 * width / fx)
    ty = zs * (y / zs).clamp(-(cy / fy + 0.15 * height / fy), (height - cy) / fy + 0.15 * height / fy)
    zero = torch.zeros_like(zs)
    J = torch.stack([fx / zs, zero, -fx * tx / zs**2, zero, fy / zs, -fy * ty / zs**2], -1).reshape(*zs.shape, 2, 3)
    cov2d = J @ cov @ J.transpose(-1, -2)
    a, b, c = cov2d[..., 0, 0] + eps2d, cov2d[..., 0, 1], cov2d[..., 1, 1] + eps2d
    det = a * c - b * b
    safe_det = torch.where(det > 0, det, torch.ones_like(det))
    conics = torch.stack([c / safe_det, -b / safe_det, a / safe_det], -1)
    means2d = torch.stack([fx * x / zs + cx, fy * y / zs + cy], -1)
    with torch.no_grad():
        o = opacities.expand_as(z)
        extend = torch.sqrt(2.0 * torch.log(o.clamp_min(ALPHA_THRESHOLD) / ALPHA_THRESHOLD)).clamp(max=MAX_EXTEND)
        radii = torch.stack([torch.ceil(extend * a.clamp_min(0).sqrt()), torch.ceil(extend * c.clamp_min(0).sqrt())], -1)
        mx, my = means2d.unbind(-1)
        visible = (
            (z > near) & (z < far) & (det > 0) & (o >= ALPHA_THRESHOLD) & (radii > 0).any(-1)
            & (mx + radii[..., 0] > 0) & (mx - radii[..., 0] < width)
            & (my + radii[..., 1] > 0) & (my - radii[..., 1] < height)
        )
        radii = (radii * visible[..., None]).to(torch.int32)
    return {"means2d": means2d, "conics": conics, "depths": z, "radii": radii, "visible": visible}


def _composite_chunk(
    means2d: Tensor, conics: Tensor, opacities: Tensor, features: Tensor, T: Tensor, done: Tensor,
    px: Tensor, py: Tensor, max_alpha: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """Composite K depth-sorted Gaussians (means2d [C,K,2], conics [C,K,3], opacities [C,K],
    features [C,K,D]) behind the transmittance T [C,H,W]; pixels in ``done`` [C,H,W] take nothing.
    Returns (added features [C,H,W,D], new T, new done)."""
    dx = px.view(1, 1, 1, -1) - means2d[..., 0, None, None]  # [C,K,1,W]
    dy = py.view(1, 1, -1, 1) - means2d[..., 1, None, None]  # [C,K,H,1]
    a, b, c = (conics[..., i, None, None] for i in range(3))
    sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy  # [C,K,H,W]
    alpha = (opacities[..., None, None] * torch.exp(-sigma)).clamp(max=max_alpha)
    alpha = alpha * ((sigma >= 0) & (alpha >= ALPHA_THRESHOLD))
    with torch.no_grad():  # a pixel stops before the Gaussian that would bring T to 1e-4
        live = (T[:, None] * torch.cumprod(1 - alpha, 1) > TRANSMITTANCE_MIN) & ~done[:, None]
    alpha = alpha * live
    trans = torch.cumprod(1 - alpha, 1)
    T_before = T[:, None] * torch.cat([torch.ones_like(trans[:, :1]), trans[:, :-1]], 1)
    added = torch.einsum("ckhw,ckd->chwd", alpha * T_before, features)
    return added, T * trans[:, -1], done | ~live[:, -1]


def rasterize_dense(
    means2d: Tensor, conics: Tensor, opacities: Tensor, features: Tensor, depths: Tensor,
    width: int, height: int, chunk_size: int = 256, max_alpha: float = 0.999, use_checkpoint: bool = True,
) -> tuple[Tensor, Tensor]:
    """Dense front-to-back compositing. opacities [C,N] must be 0 for culled Gaussians.

    → (features [C,H,W,D] = Σ_i T_i α_i f_i, alpha [C,H,W,1] = 1 − Π(1 − α_i)).
    """
    C, N, D = features.shape
    order = torch.argsort(depths.detach(), dim=1)  # nearest first
    take = lambda x: torch.gather(x, 1, order.view(C, N, *([1] * (x.dim() - 2))).expand_as(x))  # noqa: E731
    means2d, conics, opacities, features = take(means2d), take(conics), take(opacities), take(features)
    device, dtype = features.device, features.dtype
    px = torch.arange(width, device=device, dtype=dtype) + 0.5
    py = torch.arange(height, device=device, dtype=dtype) + 0.5
    image = features.new_zeros(C, height, width, D)
    T = features.new_ones(C, height, width)
    done = torch.zeros(C, height, width, dtype=torch.bool, device=device)
    grad = torch.is_grad_enabled() and any(x.requires_grad for x in (means2d, conics, opacities, features))
    for start in range(0, N, chunk_size):
        parts = tuple(x[:, start : start + chunk_size] for x in (means2d, conics, opacities, features))
        if grad and use_checkpoint:
            added, T, done = checkpoint(_composite_chunk, *parts, T, done, px, py, max_alpha, use_reentrant=False)
        else:
            added, T, done = _composite_chunk(*parts, T, done, px, py, max_alpha)
        image = image + added
    return image, (1 - T)[..., None]


def rasterize_sparse(
    means2d: Tensor, conics: Tensor, opacities: Tensor, features: Tensor, depths: Tensor, radii: Tensor,
    width: int, height: int, max_alpha: float = 0.999,
) -> tuple[Tensor, Tensor]:
    """The same compositing as :func:`rasterize_dense`, evaluated only inside each Gaussian's radius
    box (where every α ≥ 1/255 lies): cost O(Σ box areas) instead of O(C·N·H·W).

    Per-pixel transmittance is a segmented cumulative sum of log(1 − α) (in float64) over the
    entries of that pixel in depth order (renderers/gaussian_composite.py). Returns (features [C,H,W,D], alpha [C,H,W,1]).
    """
    C, N, D = features.shape
    with torch.no_grad():
        order = torch.argsort(depths.detach(), dim=1)
        e = live_pairs(means2d.detach(), conics.detach(), opacities.detach(), radii, order, width, height, max_alpha)
    row_gid, row = e["row_gid"], e["row"]
    pair_gid = row_gid.index_select(0, row)
    sigma = pair_sigma(means2d.reshape(-1, 2).index_select(0, row_gid), conics.reshape(-1, 3).index_select(0, row_gid),
                   e["row_py"], row, e["px"])
    # sigma is capped before exp (α is cut at 1/255 anyway): subnormal floats are very slow on CPUs.
    # Every pair left has σ ≥ 0 and α ≥ 1/255 (the same arithmetic chose them): no mask needed.
    alpha = (opacities.reshape(-1).index_select(0, pair_gid) * torch.exp(-sigma.clamp(max=60.0))).clamp(max=max_alpha)
    colors = features.reshape(-1, D).index_select(0, pair_gid)
    image, alpha_image = CompositePairs.apply(alpha, colors, e["pixel"], e["first"], e["segment"], C * height * width)
    return image.reshape(C, height, width, D), alpha_image.reshape(C, height, width, 1)


def rasterize_torch(means, quats, scales, opacities, features, viewmats, Ks, width, height, cfg) -> tuple[Tensor, Tensor, dict]:
    """gsplat-like entry point of the torch path → (features [C,H,W,D], alpha [C,H,W,1], meta)."""
    meta = project_gaussians(means, quats, scales, opacities, viewmats, Ks, width, height, cfg.near_plane, cfg.far_plane, cfg.eps2d)
    if torch.is_grad_enabled() and meta["means2d"].requires_grad:
        meta["means2d"].retain_grad()  # densification reads d loss / d means2d after backward
    visible_opacity = opacities.expand_as(meta["depths"]) * meta["visible"]
    if cfg.torch_mode == "sparse":
        image, alpha = rasterize_sparse(meta["means2d"], meta["conics"], visible_opacity, features, meta["depths"],
                                        meta["radii"], width, height, cfg.max_alpha)
    else:
        image, alpha = rasterize_dense(meta["means2d"], meta["conics"], visible_opacity, features, meta["depths"],
                                       width, height, cfg.chunk_size, cfg.max_alpha, cfg.checkpoint_chunks)
    return image, alpha, meta


def rasterize_gsplat(means, quats, scales, opacities, features, viewmats, Ks, width, height, cfg) -> tuple[Tensor, Tensor, dict]:
    """The same through gsplat's CUDA kernels (imported here: CUDA-only)."""
    from gsplat import rasterization

    image, alpha, meta = rasterization(
        means, quats, scales, opacities, features, viewmats, Ks, width, height,
        near_plane=cfg.near_plane, far_plane=cfg.far_plane, eps2d=cfg.eps2d, packed=False,
        render_mode="RGB", rasterize_mode="classic",
    )
    if torch.is_grad_enabled() and meta["means2d"].requires_grad:
        meta["means2d"].retain_grad()
    meta["visible"] = (meta["radii"] > 0).reshape(*meta["radii"].shape[:2], -1).any(-1)
    return image, alpha, meta


# --------------------------------------------------------------------------------------------------
# The renderer
# --------------------------------------------------------------------------------------------------
@register("renderer", "gaussian-rasterizer")
class GaussianRasterizer(Renderer):
    """Renders a ``gaussian-splatting`` geometry; colours go through the material per Gaussian."""

    Config = GaussianRendererConfig

    def __init__(self, cfg: GaussianRendererConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def use_gsplat(self, device: torch.device) -> bool:
        if self.cfg.backend == "gsplat" and device.type != "cuda":
            raise ValueError("renderer.backend='gsplat' needs a CUDA device; use backend='torch' or 'auto' on the CPU")
        return self.cfg.backend == "gsplat" or (self.cfg.backend == "auto" and device.type == "cuda")

    def gaussian_features(self, geometry, material, cameras, shading: str, with_normal: bool) -> tuple[Tensor, Optional[Tensor]]:
        """Per-camera features of each Gaussian: [C,N,3 rgb (+3 normal) +1 distance to the camera]."""
        positions = cameras.position  # [C,3]
        C, N = len(cameras), geometry.num_gaussians
        albedo = geometry.albedo(positions)  # [C,N,3]
        need_normal = with_normal or material.requires_normal(shading)
        normal = geometry.normals(positions) if need_normal else None
        points = geometry.means[None].expand(C, N, 3)
        light = cameras.light_position[:, None].expand(C, N, 3)
        rgb = material(albedo.reshape(-1, 3), None if normal is None else normal.reshape(-1, 3),
                       points.reshape(-1, 3), light.reshape(-1, 3), shading).reshape(C, N, 3)
        distance = (points - positions[:, None]).norm(dim=-1, keepdim=True)
        parts = [rgb] + ([normal] if with_normal else []) + [distance]
        return torch.cat(parts, -1), normal

    def render(self, geometry, material, background, cameras, shading: str = "albedo", training: bool = False, with_normal: bool = False) -> dict:
        """→ rgb [C,H,W,3], opacity [C,H,W,1], depth [C,H,W,1] (Σ w·distance, 0 where empty, like the
        volume renderer), normal [C,H,W,3] when asked, and for densification means2d [C,N,2] (its
        .grad is filled by backward), radii [C,N,2], visible [C,N]."""
        cameras = cameras.to(geometry.means.device)
        W, H = cameras.width, cameras.height
        features, _ = self.gaussian_features(geometry, material, cameras, shading, with_normal)
        p = geometry.activated()
        raster = rasterize_gsplat if self.use_gsplat(geometry.means.device) else rasterize_torch
        image, alpha, meta = raster(p["means"], p["quats"], p["scales"], p["opacities"], features,
                                    cameras.viewmats_opencv(), cameras.intrinsics(), W, H, self.cfg)
        _, dirs = cameras.rays()
        out = {
            "rgb": image[..., :3] + (1 - alpha) * background(dirs, training=training),
            "opacity": alpha,
            "depth": image[..., -1:],
            "means2d": meta["means2d"],
            "radii": meta["radii"],
            "visible": meta["visible"],
        }
        if with_normal:
            out["normal"] = image[..., 3:6]
        return out
