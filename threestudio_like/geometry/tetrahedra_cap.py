"""Capping the converted surface where no training view sees it (``create_from``'s ``convert_cap_unseen``).

A stage-1 field is constrained only where its training views see it. Below the lowest training
elevation (−10° in the CPU configs) nothing sees the underside, and a NeRF fills it with density
anyway: the demo's box bottom is a dome down to z −0.636 (true −0.535), which no later stage moves
(the geometry stage's gradients reach it only through silhouettes, and its flat centre is on none).
A surface the views never see carries no evidence, so the conversion replaces each unseen patch by
the flattest surface that spans its seen boundary: the least-squares plane through the boundary
vertices, applied as sdf ← min(sdf, signed distance to the plane) at the lattice vertices whose
nearest surface vertex lies in the patch. It only carves (never adds), and only patches that bulge
outward beyond their boundary plane by more than a cell (a dome, not a pocket: a concave unseen
crease keeps its shape, and a flat face is not shaved by the rounding of its edges); a patch whose cap would remove more than ``MAX_CARVED_FRACTION`` of the inside lattice
vertices is left alone (the object itself is what no view sees, e.g. an empty range).

"Seen" here means faced: some camera of :func:`threestudio_like.export.visibility.covering_cameras`
over the run's own camera range (the export's unseen fill uses the same) lies within
``convert_cap_angle`` of the normal, taken on a smoothed copy of the surface. Occlusion is not
tested: an occluded crease faces some camera, so it is never capped.
"""
from __future__ import annotations

import logging
import math

import numpy as np
import torch
from scipy import sparse
from scipy.sparse import csgraph
from scipy.spatial import cKDTree
from torch import Tensor

from threestudio_like.data.cameras import RandomCameraConfig

# ``grid`` arguments are TetrahedraSDFGrid instances; the class is not imported here because
# geometry/tetrahedra.py imports tetrahedra_init, which imports this module (one direction only)

log = logging.getLogger(__name__)

SMOOTHING_ROUNDS = 10
MIN_PATCH_FACES = 20  # smaller unseen patches (a crease's few faces) are not worth a plane
MAX_CARVED_FRACTION = 0.25


def unseen_patches(faces: np.ndarray, seen: np.ndarray, adjacency: np.ndarray) -> list[np.ndarray]:
    """faces [F,3], seen [V] bool, adjacency [P,2] (faces sharing an edge) → the face ids of each
    connected patch of faces none of whose vertices is seen, largest first."""
    unseen_face = ~seen[faces].any(axis=1)
    keep = unseen_face[adjacency[:, 0]] & unseen_face[adjacency[:, 1]]
    pairs = adjacency[keep]
    n = len(faces)
    graph = sparse.coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, labels = csgraph.connected_components(graph, directed=False)
    patches = [np.nonzero(unseen_face & (labels == label))[0] for label in np.unique(labels[unseen_face])]
    return sorted(patches, key=len, reverse=True)


def boundary_vertices(faces: np.ndarray, seen: np.ndarray, patch: np.ndarray) -> np.ndarray:
    """Seen vertices [K] that share a face with a vertex of ``patch`` (face ids): its rim."""
    in_patch = np.zeros(len(seen), dtype=bool)
    in_patch[faces[patch].reshape(-1)] = True
    touching = in_patch[faces].any(axis=1)
    rim = faces[touching].reshape(-1)
    return np.unique(rim[seen[rim]])


def cap_plane(rim: np.ndarray, outward: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rim points [K,3] and the patch's mean outward normal [3] → (a point on the least-squares plane
    through the rim [3], its unit normal turned outward [3])."""
    centre = rim.mean(axis=0)
    _, _, vt = np.linalg.svd(rim - centre, full_matrices=False)
    return centre, (vt[-1] if vt[-1] @ outward >= 0 else -vt[-1])


def capped_sdf(sdf: Tensor, lattice: Tensor, vertices: np.ndarray, faces: np.ndarray, normals: np.ndarray,
               seen: np.ndarray, cell: float, limit: float) -> tuple[Tensor, int]:
    """sdf [(R+1)³] (cells, positive inside) at lattice points [(R+1)³,3] of the surface (vertices
    [V,3], faces [F,3], unit vertex normals [V,3], seen [V]: faced by some camera) → (the sdf with
    every outward-bulging unseen patch capped by its rim's plane, the number of patches capped)."""
    from threestudio_like.geometry.mesh import Mesh

    adjacency = Mesh(torch.from_numpy(vertices), torch.from_numpy(faces)).adjacent_faces().numpy()
    nearest = cKDTree(vertices).query(lattice.cpu().numpy())[1]
    values, points, capped = sdf.cpu().numpy().copy(), lattice.cpu().numpy(), 0
    inside = int((values > 0).sum())
    for patch in unseen_patches(faces, seen, adjacency):
        rim = boundary_vertices(faces, seen, patch)
        if len(patch) < MIN_PATCH_FACES or len(rim) < 3:
            continue
        members = np.unique(faces[patch].reshape(-1))
        centre, normal = cap_plane(vertices[rim], normals[members].mean(axis=0))
        offset = (vertices[members] - centre) @ normal
        if float(offset.mean()) <= 0 or float(offset.max()) < cell:
            continue  # a pocket (its plane lies outside the surface), or flat within the lattice's rounding
        region = np.isin(nearest, members)
        below_plane = ((centre - points[region]) @ normal) / cell  # positive on the inner side
        new = np.minimum(values[region], np.clip(below_plane, -limit, limit))
        carved = int(((values[region] > 0) & (new <= 0)).sum())
        if carved > MAX_CARVED_FRACTION * inside:
            continue
        values[region], capped = new, capped + 1
        log.info("conversion: an unseen patch of %d faces capped by its rim's plane (normal %s): %d lattice vertices carved",
                 len(patch), np.round(normal, 2).tolist(), carved)
    return torch.from_numpy(values).to(sdf.device, sdf.dtype), capped


def faced_vertices(vertices: Tensor, normals: Tensor, camera_positions: Tensor, max_angle: float) -> Tensor:
    """vertices [V,3] with unit normals [V,3] and camera positions [C,3] → bool [V]: some camera lies
    within ``max_angle`` degrees of the vertex's normal (occlusion aside, it could see the vertex)."""
    toward = camera_positions[None, :, :] - vertices[:, None, :]  # [V,C,3]
    cosine = (normals[:, None, :] * toward).sum(-1) / toward.norm(dim=-1).clamp_min(1e-12)
    return (cosine >= math.cos(math.radians(max_angle))).any(dim=1)


def smoothed_normals(mesh, rounds: int = SMOOTHING_ROUNDS) -> Tensor:
    """Unit vertex normals [V,3] of ``mesh`` after ``rounds`` of uniform Laplacian smoothing of a copy:
    a converted surface's lattice-scale bumps would otherwise face the cameras here and there in
    the middle of an unseen patch and cut it in pieces."""
    from threestudio_like.geometry.mesh import Mesh, uniform_laplacian

    # each round moves every vertex halfway to its neighbours' mean; the copy's topology is computed once
    smooth = Mesh(mesh.v_pos.detach().float(), mesh.t_pos_idx, mesh.cpu_kernel)
    for _ in range(rounds):
        smooth.v_pos = smooth.v_pos - 0.5 * uniform_laplacian(smooth)
    return smooth.vertex_normals()


def cap_unseen(grid: "TetrahedraSDFGrid", views: RandomCameraConfig) -> int:
    """Cap grid's surface where it faces away from every camera over ``views`` (the run's training
    range); the grid's sdf is updated in place. Returns the number of patches capped."""
    # here, not at the top: export/ imports the renderers, which import geometry/ (this module)
    from threestudio_like.export.visibility import FillSettings, covering_cameras

    with torch.no_grad():
        mesh = grid.extract()
        if mesh.n_faces == 0:
            return 0
        vertices, faces = mesh.v_pos.float().cpu(), mesh.t_pos_idx.cpu()
        normals = mesh.vertex_normals().float().cpu()
        cameras = covering_cameras(views, FillSettings().views, 8)  # only their positions are used
        faced = faced_vertices(vertices, smoothed_normals(mesh).float().cpu(), cameras.position.float().cpu(), grid.cfg.convert_cap_angle).numpy()
        lattice = grid.lattice_points(torch.arange(len(grid.sdf)))
        sdf, capped = capped_sdf(grid.sdf.detach(), lattice, vertices.numpy(), faces.numpy(), normals.numpy(), faced,
                                 float(grid.cell), grid.cfg.sdf_clamp)
        if capped:
            grid.set_sdf_cells(sdf)
    return capped
