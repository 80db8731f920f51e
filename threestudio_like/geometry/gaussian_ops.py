"""The pure arithmetic of 3D Gaussians shared by the geometry, its densification and the renderers:
rotations, covariances, spherical harmonics, logit opacities."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# Real spherical-harmonic constants (degrees 0–3), as used by 3DGS and Plenoxels.
SH_C0 = 0.28209479177387814
SH_C1 = 0.4886025119029199
SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
SH_C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
         -0.4570457994644658, 1.445305721320277, -0.5900435899266435)


def quaternion_to_matrix(quats: Tensor) -> Tensor:
    """quats [...,4] (wxyz, any norm) → rotation matrices [...,3,3]."""
    w, x, y, z = F.normalize(quats, dim=-1).unbind(-1)
    rows = (
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    )
    return torch.stack(rows, dim=-1).reshape(*quats.shape[:-1], 3, 3)


def covariance_3d(quats: Tensor, scales: Tensor) -> Tensor:
    """quats [N,4], scales [N,3] (activated σ) → Σ = R diag(σ²) Rᵀ [N,3,3]."""
    R = quaternion_to_matrix(quats)
    M = R * scales[..., None, :]
    return M @ M.transpose(-1, -2)


def sh_basis_count(degree: int) -> int:
    return (degree + 1) ** 2


def eval_sh(degree: int, coeffs: Tensor, dirs: Tensor) -> Tensor:
    """coeffs [...,K,3] (K ≥ (degree+1)²), unit dirs [...,3] → SH value [...,3] (no +0.5 offset)."""
    out = SH_C0 * coeffs[..., 0, :]
    if degree < 1:
        return out
    x, y, z = (dirs[..., i : i + 1] for i in range(3))
    out = out - SH_C1 * y * coeffs[..., 1, :] + SH_C1 * z * coeffs[..., 2, :] - SH_C1 * x * coeffs[..., 3, :]
    if degree < 2:
        return out
    xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
    out = (out + SH_C2[0] * xy * coeffs[..., 4, :] + SH_C2[1] * yz * coeffs[..., 5, :]
           + SH_C2[2] * (2 * zz - xx - yy) * coeffs[..., 6, :] + SH_C2[3] * xz * coeffs[..., 7, :]
           + SH_C2[4] * (xx - yy) * coeffs[..., 8, :])
    if degree < 3:
        return out
    return (out + SH_C3[0] * y * (3 * xx - yy) * coeffs[..., 9, :] + SH_C3[1] * xy * z * coeffs[..., 10, :]
            + SH_C3[2] * y * (4 * zz - xx - yy) * coeffs[..., 11, :]
            + SH_C3[3] * z * (2 * zz - 3 * xx - 3 * yy) * coeffs[..., 12, :]
            + SH_C3[4] * x * (4 * zz - xx - yy) * coeffs[..., 13, :] + SH_C3[5] * z * (xx - yy) * coeffs[..., 14, :]
            + SH_C3[6] * x * (xx - 3 * yy) * coeffs[..., 15, :])


def rgb_to_sh(rgb: Tensor) -> Tensor:
    """Degree-0 SH coefficient whose colour is ``rgb``."""
    return (rgb - 0.5) / SH_C0


def inverse_sigmoid(x: Tensor) -> Tensor:
    return torch.log(x / (1 - x))
