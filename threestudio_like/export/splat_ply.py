"""The standard 3D Gaussian splatting ``.ply``, as splat viewers and 3DGS tools read it.

One ``vertex`` element, binary little-endian float32 properties, in this order:
``x y z nx ny nz f_dc_0..2 f_rest_0..(3K−1) opacity scale_0..2 rot_0..3`` where f_dc is the degree-0
SH coefficient (colour = 0.5 + 0.2820948·f_dc), f_rest the higher-degree coefficients stored
channel-major (all red, then green, then blue), opacity a logit, scales natural logs of σ and rot a
wxyz quaternion. Normals are written as zeros (3DGS does the same).

The export writes the file in the frame and placement of the mesh files, turned to the −Y-up
convention of 3DGS viewers by default (``splat_file_matrix``); the transform is in export.json.

Files are written with SH degree 3 (45 f_rest values, zero-padded) by default, because several
viewers reject files with fewer.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from threestudio_like.geometry.base import Splats
from threestudio_like.utils.atomic import write_bytes

SH_C0 = 0.28209479177387814
# 3DGS tools (the reference viewer, SuperSplat, most web viewers) expect splat files with −Y up,
# COLMAP's camera convention; a 180° turn about Z takes the +Y-up export frame there
Y_UP_TO_SPLAT_VIEWERS = np.diag([-1.0, -1.0, 1.0, 1.0])
_PLY_TYPES = {"float": "<f4", "float32": "<f4", "double": "<f8", "float64": "<f8", "uchar": "u1", "uint8": "u1",
              "char": "i1", "int8": "i1", "short": "<i2", "ushort": "<u2", "int": "<i4", "uint": "<u4"}


def splat_file_matrix(world_to_file: np.ndarray, up: str = "-y") -> np.ndarray:
    """4×4 world → splat-file transform: the mesh files' transform, turned to −Y up for 3DGS
    viewers (``up="-y"``) or kept as is (``up="+y"``)."""
    return Y_UP_TO_SPLAT_VIEWERS @ world_to_file if up == "-y" else np.asarray(world_to_file, dtype=float)


def matrix_to_quaternion(rotation: np.ndarray) -> np.ndarray:
    """A proper rotation matrix [3,3] → unit quaternion [4] (wxyz)."""
    from scipy.spatial.transform import Rotation

    x, y, z, w = Rotation.from_matrix(np.asarray(rotation, dtype=np.float64)).as_quat()
    return np.array([w, x, y, z])


def quaternion_product(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product a ⊗ b of wxyz quaternions (broadcasting over leading axes)."""
    aw, ax, ay, az = np.moveaxis(a, -1, 0)
    bw, bx, by, bz = np.moveaxis(b, -1, 0)
    return np.stack([aw * bw - ax * bx - ay * by - az * bz, aw * bx + ax * bw + ay * bz - az * by,
                     aw * by - ax * bz + ay * bw + az * bx, aw * bz + ax * by - ay * bx + az * bw], axis=-1)


def sh_rotation(rotation: np.ndarray, degree: int, n_directions: int = 256) -> np.ndarray:
    """[K,K] matrix T (K = (degree+1)²) with Σ_k Y_k(R d) (T c)_k = Σ_k Y_k(d) c_k for every unit d:
    the SH coefficients of a colour function turned with the object. Solved by least squares on
    random directions, exact because each SH band is closed under rotation."""
    from threestudio_like.geometry.gaussian_ops import eval_sh

    k = (degree + 1) ** 2
    dirs = torch.nn.functional.normalize(torch.randn(n_directions, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64), dim=-1)
    # every basis function at once: coefficient row k = the k-th unit vector, one channel per function
    unit = torch.eye(k, dtype=torch.float64).expand(n_directions, k, k)
    rotated = dirs @ torch.as_tensor(rotation, dtype=torch.float64).T
    y_old, y_new = eval_sh(degree, unit, dirs), eval_sh(degree, unit, rotated)  # [n,K] each
    return torch.linalg.lstsq(y_new, y_old).solution.numpy()


def transform_splats(splats: Splats, matrix: np.ndarray) -> dict[str, np.ndarray]:
    """The Gaussians under x ↦ s R x + t (matrix 4×4: a rotation times a uniform scale, then a
    translation) as float32 arrays: means [N,3], sh [N,K,3], opacities [N], log_scales [N,3], quats [N,4]."""
    a = {name: getattr(splats, name).detach().double().cpu().numpy() for name in ("means", "quats", "log_scales", "opacity_logits", "sh")}
    linear = np.asarray(matrix, dtype=np.float64)[:3, :3]
    scale = float(np.cbrt(np.linalg.det(linear)))
    rotation = linear / scale
    quats = a["quats"] / np.linalg.norm(a["quats"], axis=-1, keepdims=True).clip(min=1e-12)
    degree = int(round(np.sqrt(a["sh"].shape[1]))) - 1
    unturned = degree == 0 or np.allclose(rotation, np.eye(3))
    sh = a["sh"] if unturned else np.einsum("kj,njc->nkc", sh_rotation(rotation, degree), a["sh"])
    out = {"means": a["means"] @ linear.T + np.asarray(matrix)[:3, 3], "sh": sh, "opacities": a["opacity_logits"],
           "log_scales": a["log_scales"] + np.log(scale), "quats": quaternion_product(matrix_to_quaternion(rotation), quats)}
    return {key: value.astype(np.float32) for key, value in out.items()}


def write_splat_ply(splats: Splats, path: str | os.PathLike, world_to_file: Optional[np.ndarray] = None,
                    sh_degree: Optional[int] = 3) -> Path:
    """Write ``splats`` to ``path`` (atomically), moved by the 4×4 ``world_to_file`` (identity when
    None). ``sh_degree`` pads (or, if lower than the splats', truncates) the SH coefficients; None
    keeps the splats' own degree."""
    a = transform_splats(splats, np.eye(4) if world_to_file is None else world_to_file)
    n = len(a["means"])
    rest = a["sh"][:, 1:]
    if sh_degree is not None:
        wanted = (sh_degree + 1) ** 2 - 1
        padded = np.zeros((n, wanted, 3), dtype=np.float32)
        padded[:, : min(rest.shape[1], wanted)] = rest[:, :wanted]
        rest = padded
    k = rest.shape[1]
    columns = [a["means"], np.zeros((n, 3), np.float32), a["sh"][:, 0],
               rest.transpose(0, 2, 1).reshape(n, 3 * k),  # channel-major, as 3DGS stores it
               a["opacities"][:, None], a["log_scales"], a["quats"]]
    names = (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"] + [f"f_rest_{i}" for i in range(3 * k)]
             + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])
    data = np.ascontiguousarray(np.concatenate(columns, axis=1).astype("<f4"))
    header = "\n".join(["ply", "format binary_little_endian 1.0", f"element vertex {n}"]
                       + [f"property float {name}" for name in names] + ["end_header"]) + "\n"
    return write_bytes(path, header.encode("ascii") + data.tobytes())


def _read_header(f, where: str) -> tuple[int, list[tuple[str, str]]]:
    if f.readline().strip() != b"ply":
        raise ValueError(f"{where} is not a PLY file (no 'ply' magic line)")
    count, props, in_vertex = None, [], False
    for raw in iter(f.readline, b""):
        words = raw.decode("ascii", errors="replace").split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        if words[0] == "format" and words[1:2] != ["binary_little_endian"]:
            raise ValueError(f"{where} is PLY {words[1]}; splat files are binary_little_endian")
        if words[0] == "element":
            in_vertex = words[1] == "vertex"
            if in_vertex:
                count = int(words[2])
            elif count is not None:
                raise ValueError(f"{where} has elements after 'vertex'; not a Gaussian splat file")
        elif words[0] == "property" and in_vertex:
            if words[1] == "list" or words[1] not in _PLY_TYPES:
                raise ValueError(f"{where} has an unsupported vertex property {' '.join(words[1:])!r}")
            props.append((words[2], _PLY_TYPES[words[1]]))
        elif words[0] == "end_header":
            if count is None:
                raise ValueError(f"{where} has no vertex element")
            return count, props
    raise ValueError(f"{where} ends before 'end_header'")


def read_splat_ply(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a standard splat ``.ply`` → means [N,3], f_dc [N,3], f_rest [N,K,3], opacities [N],
    scales [N,3], rotations [N,4] (float32, stored values) and sh_degree (0-d int array).
    A missing or malformed file is a one-line ValueError."""
    where = f"splat file {str(path)!r}"
    if not Path(path).is_file():
        raise ValueError(f"{where} does not exist")
    with open(path, "rb") as f:
        count, props = _read_header(f, where)
        dtype = np.dtype(props)
        body = f.read(count * dtype.itemsize)
    if len(body) < count * dtype.itemsize:
        raise ValueError(f"{where} is truncated: {count} vertices announced, {len(body) // dtype.itemsize} present")
    rows = np.frombuffer(body, dtype=dtype, count=count)
    names = set(dtype.names)
    needed = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity"] + [f"scale_{i}" for i in range(3)] + [f"rot_{i}" for i in range(4)]
    missing = [name for name in needed if name not in names]
    if missing:
        raise ValueError(f"{where} lacks the splat properties {', '.join(missing)}")
    column = lambda keys: np.stack([rows[key].astype(np.float32) for key in keys], axis=1)  # noqa: E731
    n_rest = sum(1 for name in names if name.startswith("f_rest_"))
    degree = int(round(np.sqrt(n_rest / 3 + 1))) - 1
    if n_rest % 3 or (degree + 1) ** 2 - 1 != n_rest // 3:
        raise ValueError(f"{where} has {n_rest} f_rest values; expected 3·((d+1)²−1) for an SH degree d")
    rest = column([f"f_rest_{i}" for i in range(n_rest)]) if n_rest else np.zeros((count, 0), np.float32)
    return {
        "means": column(["x", "y", "z"]),
        "f_dc": column(["f_dc_0", "f_dc_1", "f_dc_2"]),
        "f_rest": rest.reshape(count, 3, n_rest // 3).transpose(0, 2, 1).copy(),
        "opacities": rows["opacity"].astype(np.float32).copy(),
        "scales": column([f"scale_{i}" for i in range(3)]),
        "rotations": column([f"rot_{i}" for i in range(4)]),
        "sh_degree": np.array(degree),
    }
