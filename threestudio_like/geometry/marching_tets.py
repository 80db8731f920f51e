"""Differentiable marching tetrahedra on a regular lattice split into Kuhn (Freudenthal) tetrahedra.

The lattice has ``R`` cubes per axis, (R+1)³ vertices; vertex (i, j, k) has flat index
(i·(R+1) + j)·(R+1) + k and sits at ``origin + (i, j, k)·cell``. Every cube is cut into the six
tetrahedra along the paths o → o+e_a → o+e_a+e_b → o+(1,1,1) over the orderings (a, b, c) of the
axes. Neighbouring cubes cut their shared faces the same way, so the tetrahedra fill the box without
gaps, and each is listed with positive orientation.

Sign convention: ``sdf > 0`` is INSIDE (the same sign as density − level), ``sdf ≤ 0`` outside.
A surface vertex sits on each edge whose ends differ in sign, at the zero of the linear interpolant:
p = (s_a·p_b − s_b·p_a) / (s_a − s_b), so it is differentiable in both sdf values and both end
positions (the deformed lattice). Triangles are wound counter-clockwise seen from outside.

Only cubes whose 8 corners do not all agree are visited, so a call costs O(vertices) cheap work plus
O(surface) gathers; no tetrahedron list is ever stored.
"""
from __future__ import annotations

import itertools
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from threestudio_like.kernels.rasterize import surface_topology

# corner c of a unit cube is the offset (c >> 2 & 1, c >> 1 & 1, c & 1), matching the flat index order
CORNERS = np.array([[(c >> 2) & 1, (c >> 1) & 1, c & 1] for c in range(8)])
TET_EDGES = ((0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3))  # local vertex pairs of a tetrahedron's edges


def _corner_id(offset: np.ndarray) -> int:
    return int(offset[0] * 4 + offset[1] * 2 + offset[2])


def kuhn_tetrahedra() -> np.ndarray:
    """[6,4] corner ids (0–7) of the six positively oriented Kuhn tetrahedra of the unit cube."""
    tets = []
    for axes in itertools.permutations(range(3)):
        path = [np.zeros(3, dtype=int)]
        for axis in axes:
            step = path[-1].copy()
            step[axis] += 1
            path.append(step)
        v = np.array(path, dtype=float)
        if np.linalg.det(v[1:] - v[0]) < 0:
            path[2], path[3] = path[3], path[2]
        tets.append([_corner_id(p) for p in path])
    return np.array(tets)


def triangle_table() -> tuple[np.ndarray, np.ndarray]:
    """(tris [16,2,3] local edge ids, −1 = unused; counts [16]) for sign case Σ inside_i·2^i.

    Built on the reference tetrahedron (0,0,0), (1,0,0), (0,1,0), (0,0,1) (positive orientation)
    with the surface points at edge midpoints: each triangle is wound so that its normal points from
    the inside corners to the outside ones. An affine map with positive determinant keeps that winding,
    and so does moving the points along their edges (a triangle cannot flip without degenerating).
    """
    ref = np.array([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]])
    mids = np.array([(ref[a] + ref[b]) / 2 for a, b in TET_EDGES])
    tris, counts = -np.ones((16, 2, 3), dtype=np.int64), np.zeros(16, dtype=np.int64)
    for case in range(1, 15):
        inside = [(case >> i) & 1 == 1 for i in range(4)]
        ins = [i for i in range(4) if inside[i]]
        outs = [i for i in range(4) if not inside[i]]
        if len(ins) == 2:  # a quad through the 4 crossing edges, in cyclic order, cut in two
            (a, b), (c, d) = ins, outs
            cycle = [TET_EDGES.index(tuple(sorted(e))) for e in ((a, c), (a, d), (b, d), (b, c))]
            faces = [[cycle[0], cycle[1], cycle[2]], [cycle[0], cycle[2], cycle[3]]]
        else:
            faces = [[e for e, (a, b) in enumerate(TET_EDGES) if inside[a] != inside[b]]]
        outward = ref[outs].mean(0) - ref[ins].mean(0)
        for slot, face in enumerate(faces):
            p = mids[face]
            if np.dot(np.cross(p[1] - p[0], p[2] - p[0]), outward) < 0:
                face = [face[0], face[2], face[1]]
            tris[case, slot] = face
        counts[case] = len(faces)
    return tris, counts


def kuhn_neighbours() -> np.ndarray:
    """[3,3,3] bool: the lattice offsets (−1…1 per axis, centre at [1,1,1]) that some Kuhn tetrahedron's
    edge joins: the 6 axis steps, the 6 face diagonals ±(e_a + e_b) and ±(1,1,1), 14 in all, and the
    centre. Inside (or outside) vertices joined this way are one region for marching tetrahedra; as a
    ``scipy.ndimage`` structure it is their connectivity."""
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1, 1, 1] = True
    for tet in kuhn_tetrahedra():
        for a, b in TET_EDGES:
            step = CORNERS[tet[b]] - CORNERS[tet[a]]
            structure[tuple(1 + step)] = structure[tuple(1 - step)] = True
    return structure


KUHN_TETS = kuhn_tetrahedra()
KUHN_NEIGHBOURS = kuhn_neighbours()
TRI_TABLE, TRI_COUNT = triangle_table()


def lattice_ijk(vertex_ids: Tensor, resolution: int) -> Tensor:
    """Flat vertex ids [...] → integer lattice coordinates [...,3] (long)."""
    n = resolution + 1
    return torch.stack([vertex_ids // (n * n), (vertex_ids // n) % n, vertex_ids % n], dim=-1)


def lattice_points(vertex_ids: Tensor, resolution: int, origin: Tensor, cell: float) -> Tensor:
    """Flat vertex ids [N] → undeformed world positions [N,3]."""
    return origin + lattice_ijk(vertex_ids, resolution).to(origin.dtype) * cell


def boundary_mask(resolution: int, device: torch.device | str = "cpu") -> Tensor:
    """[(R+1)³] bool: vertices on the lattice's outer layer."""
    n = resolution + 1
    ijk = lattice_ijk(torch.arange(n**3, device=device), resolution)
    return ((ijk == 0) | (ijk == resolution)).any(-1)


def active_cube_ids(inside: Tensor, resolution: int) -> Tensor:
    """inside [(R+1)³] bool → flat ids (i·R + j)·R + k [C] of the cubes whose corners disagree."""
    grid = inside.view(resolution + 1, resolution + 1, resolution + 1).to(torch.uint8)
    r = resolution
    total = torch.zeros(r, r, r, dtype=torch.uint8, device=inside.device)
    for dx, dy, dz in CORNERS:
        total += grid[dx : dx + r, dy : dy + r, dz : dz + r]
    return ((total > 0) & (total < 8)).reshape(-1).nonzero()[:, 0]


def cube_tetrahedra(cube_ids: Tensor, resolution: int) -> Tensor:
    """Cube ids [C] → vertex ids [C·6,4] of their Kuhn tetrahedra (positive orientation)."""
    r, n = resolution, resolution + 1
    origin_ijk = torch.stack([cube_ids // (r * r), (cube_ids // r) % r, cube_ids % r], dim=-1)  # [C,3]
    origin = (origin_ijk[:, 0] * n + origin_ijk[:, 1]) * n + origin_ijk[:, 2]
    corners = torch.as_tensor(CORNERS, device=cube_ids.device)
    corner_offset = (corners[:, 0] * n + corners[:, 1]) * n + corners[:, 2]  # [8]
    tets = corner_offset[torch.as_tensor(KUHN_TETS, device=cube_ids.device)]  # [6,4]
    return (origin[:, None, None] + tets[None]).reshape(-1, 4)


def _edge_zeros(positions_of, sdf: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """The zeros [E,3] of the linear interpolant along the lattice edges a → b [E] (with autograd)."""
    s_a, s_b = sdf.index_select(0, a).unsqueeze(-1), sdf.index_select(0, b).unsqueeze(-1)
    p = positions_of(torch.cat([a, b]))
    p_a, p_b = p[: len(a)], p[len(a) :]
    return (s_a * p_b - s_b * p_a) / (s_a - s_b)  # the signs differ, so the denominator is never 0


def marching_tetrahedra(positions_of, sdf: Tensor, resolution: int, compiled: bool = False,
                        min_faces: Optional[float] = None) -> tuple[Tensor, Tensor]:
    """Surface {sdf = 0} of the lattice.

    positions_of: callable, vertex ids [N] → positions [N,3] (the deformed lattice, with autograd);
    sdf [(R+1)³] (positive inside) → (v_pos [Vs,3], faces [Fs,3] long), outward winding.
    Only the vertices at the ends of crossing edges are ever positioned. ``compiled``: the topology
    from kernels/csrc/marching_tets.cpp (the same lists), which also drops the components with fewer
    than ``min_faces`` faces (as geometry/mesh.py's remove_small_components) unless it is None;
    the torch path ignores ``min_faces``.
    """
    device = sdf.device
    inside = sdf > 0
    if compiled:
        table = (torch.as_tensor(KUHN_TETS), torch.as_tensor(TRI_TABLE), torch.as_tensor(TRI_COUNT))
        a, b, faces = surface_topology(inside, resolution, *table, min_faces)
        return _edge_zeros(positions_of, sdf, a, b), faces
    tets = cube_tetrahedra(active_cube_ids(inside, resolution), resolution)  # [T,4]
    weights = 2 ** torch.arange(4, device=device)
    case = (inside[tets].long() * weights).sum(-1)
    keep = (case > 0) & (case < 15)
    tets, case = tets[keep], case[keep]
    if tets.shape[0] == 0:
        return sdf.new_zeros(0, 3), torch.zeros(0, 3, dtype=torch.long, device=device)
    pairs = torch.as_tensor(TET_EDGES, device=device)
    first, second = tets[:, pairs[:, 0]], tets[:, pairs[:, 1]]  # [T,6] each
    n_vertices = sdf.shape[0]
    keys = torch.minimum(first, second) * n_vertices + torch.maximum(first, second)  # [T,6]
    crossing = inside[first] != inside[second]
    unique_keys, slot = torch.unique(keys[crossing], return_inverse=True)
    edge_vertex = torch.full_like(keys, -1).masked_scatter_(crossing, slot)
    a, b = unique_keys // n_vertices, unique_keys % n_vertices
    v_pos = _edge_zeros(positions_of, sdf, a, b)
    table = torch.as_tensor(TRI_TABLE, device=device)[case]  # [T,2,3]
    counts = torch.as_tensor(TRI_COUNT, device=device)[case]
    faces = torch.gather(edge_vertex[:, None, :].expand(-1, 2, -1), 2, table.clamp_min(0))  # [T,2,3]
    used = torch.arange(2, device=device)[None, :] < counts[:, None]
    return v_pos, faces[used]


def piecewise_linear(values: Tensor, points: Tensor, resolution: int, origin: Tensor, cell: float,
                     outside: float) -> Tensor:
    """The lattice's piecewise-linear interpolant (linear in each Kuhn tetrahedron) at points.

    values [(R+1)³], points [N,3] (world) → [N]; ``outside`` beyond the lattice box. Its zero set is
    exactly what :func:`marching_tetrahedra` extracts on the undeformed lattice.
    """
    n = resolution + 1
    u = (points - origin) / cell
    in_box = ((u >= 0) & (u <= resolution)).all(-1)
    base = u.floor().clamp(0, resolution - 1)
    frac = (u - base).clamp(0.0, 1.0)
    order = torch.argsort(frac, dim=-1, descending=True)  # the Kuhn tetrahedron holding the point
    f = torch.gather(frac, 1, order)  # [N,3], descending
    bary = torch.stack([1 - f[:, 0], f[:, 0] - f[:, 1], f[:, 1] - f[:, 2], f[:, 2]], dim=-1)  # [N,4]
    steps = torch.nn.functional.one_hot(order, 3).cumsum(1)  # [N,3,3]: path corners after 1, 2, 3 steps
    corners = torch.cat([torch.zeros_like(steps[:, :1]), steps], dim=1) + base.long()[:, None, :]  # [N,4,3]
    ids = (corners[..., 0] * n + corners[..., 1]) * n + corners[..., 2]
    result = (values[ids] * bary).sum(-1)
    return torch.where(in_box, result, torch.full_like(result, outside))


def distance_in_cells(level: Tensor, resolution: int, cell: float, limit: float) -> Tensor:
    """level [(R+1)³] (positive inside) → level / (|∇level|·cell) [(R+1)³], ±limit where flat."""
    n = resolution + 1
    grads = torch.gradient(level.view(n, n, n), spacing=cell)
    per_cell = torch.stack(grads, dim=-1).norm(dim=-1).reshape(-1) * cell
    flat = per_cell < 1e-8
    estimate = level / per_cell.clamp_min(1e-8)
    return torch.where(flat, torch.sign(level) * limit, estimate)
