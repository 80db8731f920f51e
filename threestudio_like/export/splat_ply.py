"""The standard 3D Gaussian splatting ``.ply``, as splat viewers and 3DGS tools read it.

One ``vertex`` element, binary little-endian float32 properties, in this order:
``x y z nx ny nz f_dc_0..2 f_rest_0..(3K−1) opacity scale_0..2 rot_0..3`` where f_dc is the degree-0
SH coefficient (colour = 0.5 + 0.2820948·f_dc), f_rest the higher-degree coefficients stored
channel-major (all red, then green, then blue), opacity a logit, scales natural logs of σ and rot a
wxyz quaternion. Normals are written as zeros (3DGS does the same).

Files are written with SH degree 3 (45 f_rest values, zero-padded) by default, because several
viewers reject files with fewer.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from threestudio_like.utils.atomic import write_bytes

SH_C0 = 0.28209479177387814
_PLY_TYPES = {"float": "<f4", "float32": "<f4", "double": "<f8", "float64": "<f8", "uchar": "u1", "uint8": "u1",
              "char": "i1", "int8": "i1", "short": "<i2", "ushort": "<u2", "int": "<i4", "uint": "<u4"}


def splat_arrays(geometry) -> dict[str, np.ndarray]:
    """The stored (pre-activation) values of a Gaussian geometry as float32 arrays:
    means [N,3], f_dc [N,3], f_rest [N,K,3], opacities [N] (logit), scales [N,3] (log), rotations [N,4]."""
    with torch.no_grad():
        if geometry.cfg.color_mode == "rgb":  # sigmoid RGB → the SH coefficient of the same colour
            f_dc = (torch.sigmoid(geometry.features_dc) - 0.5) / SH_C0
        else:
            f_dc = geometry.features_dc
        rest = geometry.features_rest if geometry.features_rest is not None else f_dc.new_zeros(len(f_dc), 0, 3)
        values = {"means": geometry.means, "f_dc": f_dc, "f_rest": rest, "opacities": geometry.opacities,
                  "scales": geometry.scales, "rotations": geometry.rotations}
        return {k: v.detach().float().cpu().numpy() for k, v in values.items()}


def write_splat_ply(geometry, path: str | os.PathLike, sh_degree: Optional[int] = 3) -> Path:
    """Write ``geometry``'s Gaussians to ``path`` (atomically). ``sh_degree`` pads (or, if lower than
    the geometry's, truncates) the SH coefficients; None keeps the geometry's own degree."""
    a = splat_arrays(geometry)
    n, k = a["f_rest"].shape[:2]
    if sh_degree is not None:
        wanted = (sh_degree + 1) ** 2 - 1
        rest = np.zeros((n, wanted, 3), dtype=np.float32)
        rest[:, : min(k, wanted)] = a["f_rest"][:, :wanted]
        a["f_rest"], k = rest, wanted
    columns = [a["means"], np.zeros((n, 3), np.float32), a["f_dc"],
               a["f_rest"].transpose(0, 2, 1).reshape(n, 3 * k),  # channel-major, as 3DGS stores it
               a["opacities"][:, None], a["scales"], a["rotations"]]
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
