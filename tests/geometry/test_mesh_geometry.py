"""The Mesh type and the mesh regularisers on hand-built meshes whose answers are worked out by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from threestudio_like.geometry.mesh import Mesh, laplacian_smoothness, normal_consistency, uniform_laplacian


def folded_pair(fold_deg: float) -> Mesh:
    """Two triangles sharing the edge (0,0,0)–(1,0,0); the second is folded up by ``fold_deg``.

    First face normal (0,0,1); second face (1,0,0),(0,0,0),q with q = (0.5, −cos a, sin a) has normal
    (−1,0,0) × (q − (1,0,0)) = (0, sin a, cos a), so the normals meet at angle a (interior dihedral
    angle 180° − a).
    """
    a = math.radians(fold_deg)
    v = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0.5, 1, 0], [0.5, -math.cos(a), math.sin(a)]])
    return Mesh(v, torch.tensor([[0, 1, 2], [1, 0, 3]]))


def octahedron() -> Mesh:
    v = torch.tensor([[1.0, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]])
    # +x=0 −x=1 +y=2 −y=3 +z=4 −z=5; each face (a, b, c) is counter-clockwise seen from outside
    f = torch.tensor([[0, 2, 4], [2, 1, 4], [1, 3, 4], [3, 0, 4], [2, 0, 5], [1, 2, 5], [3, 1, 5], [0, 3, 5]])
    return Mesh(v, f)


def grid(n: int = 5) -> Mesh:
    """n×n vertices on the unit-spaced plane z = 0, each square split along the same diagonal."""
    ij = torch.stack(torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij"), -1).reshape(-1, 2)
    v = torch.cat([ij.float(), torch.zeros(n * n, 1)], dim=1)
    faces = []
    for i in range(n - 1):
        for j in range(n - 1):
            a, b, c, d = i * n + j, (i + 1) * n + j, (i + 1) * n + j + 1, i * n + j + 1
            faces += [[a, b, c], [a, c, d]]
    return Mesh(v, torch.tensor(faces))


@pytest.mark.parametrize("fold", [0.0, 30.0, 60.0, 90.0, 150.0])
def test_normal_consistency_of_a_folded_pair_is_one_minus_cos_of_the_fold(fold):
    mesh = folded_pair(fold)
    assert mesh.adjacent_faces().tolist() == [[0, 1]] or mesh.adjacent_faces().tolist() == [[1, 0]]
    expected = 1.0 - math.cos(math.radians(fold))
    assert normal_consistency(mesh).item() == pytest.approx(expected, abs=1e-6)


def test_octahedron_answers():
    mesh = octahedron()
    assert mesh.edges().shape == (12, 2)
    assert mesh.adjacent_faces().shape == (12, 2)
    # adjacent octahedron faces meet at the dihedral angle arccos(−1/3): normals at cos = 1/3
    assert normal_consistency(mesh).item() == pytest.approx(2.0 / 3.0, abs=1e-6)
    # each vertex's 4 neighbours average to the origin: ‖v − 0‖² = 1
    assert laplacian_smoothness(mesh).item() == pytest.approx(1.0, abs=1e-6)
    centroids = mesh.v_pos[mesh.t_pos_idx].mean(1)
    assert ((mesh.face_normals() * centroids).sum(-1) > 0).all(), "face normals point outward"
    assert torch.allclose(mesh.face_normals().norm(dim=-1), torch.ones(8))
    # by symmetry the area-weighted vertex normal is the vertex direction
    assert torch.allclose(mesh.vertex_normals(), mesh.v_pos, atol=1e-6)
    tm = mesh.to_trimesh()
    assert tm.is_watertight and tm.is_winding_consistent
    assert tm.volume == pytest.approx(4.0 / 3.0)  # two square pyramids, base 2, height 1


def test_vertex_normals_are_area_weighted():
    # two faces at one vertex: a big one facing +z (area 2) and a small one facing +x (area 0.5)
    v = torch.tensor([[0.0, 0, 0], [2, 0, 0], [0, 2, 0], [0, 0, 1], [0, 1, 0]])
    mesh = Mesh(v, torch.tensor([[0, 1, 2], [0, 4, 3]]))
    expected = torch.tensor([0.5, 0.0, 2.0]) / math.hypot(0.5, 2.0)
    assert torch.allclose(mesh.vertex_normals()[0], expected, atol=1e-6)


def test_flat_grid_has_zero_interior_laplacian_and_zero_normal_consistency():
    n = 5
    mesh = grid(n)
    lap = uniform_laplacian(mesh)
    interior = [i * n + j for i in range(1, n - 1) for j in range(1, n - 1)]
    assert lap[interior].abs().max().item() < 1e-6
    assert lap[0].abs().max().item() > 0.1, "a corner is pulled toward its neighbours"
    assert lap[:, 2].abs().max().item() == 0.0
    assert normal_consistency(mesh).item() == pytest.approx(0.0, abs=1e-7)
    assert mesh.neighbour_counts()[interior].tolist() == [6] * len(interior)


def test_displaced_vertex_laplacian_values():
    n, h = 5, 0.3
    flat = grid(n)
    centre = 2 * n + 2
    v = flat.v_pos.clone()
    v[centre, 2] = h
    bumped = Mesh(v, flat.t_pos_idx)
    lap = uniform_laplacian(bumped)
    # the raised vertex is h above the mean of its 6 flat neighbours; each neighbour (itself with 6
    # neighbours) sees one of them raised: z = 0 − h/6; everyone else stays at z = 0
    assert lap[centre, 2].item() == pytest.approx(h)
    nbrs = torch.cat([bumped.edges()[bumped.edges()[:, 0] == centre, 1], bumped.edges()[bumped.edges()[:, 1] == centre, 0]])
    assert len(nbrs) == 6
    assert torch.allclose(lap[nbrs, 2], torch.full((6,), -h / 6))
    others = torch.ones(n * n, dtype=torch.bool)
    others[nbrs] = False
    others[centre] = False
    assert lap[others, 2].abs().max().item() == 0.0
    # in-plane terms are unchanged, so the mean rises by exactly (h² + 6 (h/6)²) / 25
    rise = laplacian_smoothness(bumped) - laplacian_smoothness(flat)
    assert rise.item() == pytest.approx((h * h + 6 * (h / 6) ** 2) / (n * n), rel=1e-5)


def test_regularisers_are_differentiable_in_positions():
    mesh = octahedron()
    v = (mesh.v_pos * 1.1).requires_grad_(True)
    loss = normal_consistency(Mesh(v + 0.05 * torch.tensor([1.0, 0.0, 0.0]) * v[:, :1] ** 2, mesh.t_pos_idx))
    loss = loss + laplacian_smoothness(Mesh(v, mesh.t_pos_idx))
    loss.backward()
    assert v.grad is not None and torch.isfinite(v.grad).all() and v.grad.abs().sum() > 0
    # shrinking the octahedron lowers ‖v − mean‖² = ‖v‖²: the Laplacian gradient points outward
    v2 = mesh.v_pos.clone().requires_grad_(True)
    laplacian_smoothness(Mesh(v2, mesh.t_pos_idx)).backward()
    assert ((v2.grad * mesh.v_pos).sum(-1) > 0).all()


def test_non_manifold_edge_chains_its_faces_and_degenerate_faces_stay_finite():
    # three faces on the edge (0,1): two pairs; one face of zero area
    v = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [2, 0, 0]])
    mesh = Mesh(v, torch.tensor([[0, 1, 2], [1, 0, 3], [0, 1, 4], [0, 1, 5]]))
    pairs = {tuple(sorted(p)) for p in mesh.adjacent_faces().tolist()}
    assert len(pairs) == 3 and all(0 <= a < 4 and 0 <= b < 4 for a, b in pairs)
    assert torch.isfinite(mesh.face_normals()).all() and mesh.face_normals()[3].abs().sum() == 0
    assert torch.isfinite(normal_consistency(mesh))


def test_empty_mesh_gives_zero_losses():
    mesh = Mesh(torch.zeros(0, 3, requires_grad=True), torch.zeros(0, 3, dtype=torch.long))
    assert normal_consistency(mesh).item() == 0.0 and laplacian_smoothness(mesh).item() == 0.0
    assert mesh.edges().shape == (0, 2) and mesh.adjacent_faces().shape == (0, 2)
    assert mesh.to_trimesh().vertices.shape == (0, 3)


def test_from_trimesh_round_trip():
    mesh = octahedron()
    back = Mesh.from_trimesh(mesh.to_trimesh())
    assert torch.equal(back.t_pos_idx, mesh.t_pos_idx) and torch.allclose(back.v_pos, mesh.v_pos)
    assert back.v_pos.dtype == torch.float32 and isinstance(np.asarray(mesh.to_trimesh().faces), np.ndarray)
