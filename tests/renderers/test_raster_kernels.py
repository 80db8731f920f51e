"""The compiled mesh rasterizer and marching tetrahedra (kernels/csrc/rasterize.cpp, marching_tets.cpp)
give the torch paths' pixels, values and meshes exactly, and gradients to float rounding, on random
inputs and at the edges; skipped, with the reason, where the kernels cannot be built."""
from __future__ import annotations

import pytest
import torch

from threestudio_like.geometry import marching_tets as mt
from threestudio_like.geometry.mesh import Mesh, remove_small_components
from threestudio_like.kernels import build
from threestudio_like.renderers.rasterize import rasterize


@pytest.fixture(scope="module", autouse=True)
def kernels():
    if not build.library_loaded():
        pytest.skip(f"the CPU kernels cannot be built here: {build.unavailable_reason()}")


def random_scene(batch: int, n_tri: int, seed: int, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Clip positions [B,V,4] of random triangles: small and large, some crossing the near plane or
    behind the camera, shared vertices, plus a degenerate (zero-area) triangle, one with a vertex on
    a pixel centre and one with a NaN vertex."""
    g = torch.Generator().manual_seed(seed)
    V = 3 * n_tri
    xy = torch.rand(batch, V, 2, generator=g, dtype=dtype) * 2.4 - 1.2
    w = torch.rand(batch, V, 1, generator=g, dtype=dtype) * 3 + 0.2
    w[:, :6] = -w[:, :6]  # behind the camera
    z = (torch.rand(batch, V, 1, generator=g, dtype=dtype) * 2.2 - 1.1) * w
    pos = torch.cat([xy * w, z, w], -1)
    small = torch.arange(V) >= V // 2  # half the triangles shrunk towards their first vertex
    tri = torch.arange(V).view(-1, 3)
    first = pos[:, tri[:, 0].repeat_interleave(3)]
    pos[:, small] = first[:, small] + 0.05 * (pos[:, small] - first[:, small])
    pos[:, 3 * 3 + 2] = pos[:, 3 * 3 + 1]  # triangle 3: two equal vertices (zero area)
    pos[:, 3 * 4] = torch.tensor([3 / 16 - 1, 5 / 16 - 1, 0.0, 1.0], dtype=dtype)  # triangle 4: a vertex on a centre (16²)
    pos[:, 3 * 5 + 1, 0] = float("nan")  # triangle 5: NaN
    shared = torch.randint(0, V, (n_tri // 4, 3), generator=g)  # triangles on the others' vertices
    return pos, torch.cat([tri, shared])


def both(pos: torch.Tensor, tri: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    return rasterize(pos, tri, *size, cpu_kernel=True), rasterize(pos, tri, *size, cpu_kernel=False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_compiled_rasterizer_gives_the_torch_paths_pixels_and_values(dtype):
    for seed, (batch, n_tri, size) in enumerate([(1, 40, (16, 16)), (3, 300, (24, 32)), (2, 2000, (64, 64))]):
        pos, tri = random_scene(batch, n_tri, seed, dtype)
        fast, slow = both(pos, tri, size)
        assert fast.dtype == dtype and fast.shape == (batch, *size, 4)
        assert (slow[..., 3] > 0).sum() > 0.2 * slow[..., 3].numel()  # the scene covers the images
        assert torch.equal(fast, slow)


def test_compiled_rasterizer_edges():
    pos = torch.tensor([[[-0.5, -0.5, 0.0, 1.0], [0.5, -0.5, 0.0, 1.0], [0.0, 0.5, 0.0, 1.0]]])
    empty = torch.zeros(0, 3, dtype=torch.long)
    assert torch.equal(rasterize(pos, empty, 8, 8, cpu_kernel=True), torch.zeros(1, 8, 8, 4))  # no triangles
    # two triangles at the same depth over the same pixels: the lower index wins on both paths
    twice = torch.tensor([[0, 1, 2], [0, 1, 2]])
    fast, slow = both(pos, twice, (8, 8))
    assert torch.equal(fast, slow) and set(fast[..., 3].unique().tolist()) == {0.0, 1.0}


def test_compiled_rasterizer_gradients_match_autograd_of_the_torch_path():
    pos, tri = random_scene(2, 300, 7, torch.float64)
    pos = pos.nan_to_num(0.5)
    weights = torch.randn(2, 24, 32, 4, dtype=torch.float64)
    grads = []
    for choice in (True, False):
        leaf = pos.clone().requires_grad_()
        (rasterize(leaf, tri, 24, 32, cpu_kernel=choice) * weights).sum().backward()
        grads.append(leaf.grad)
    assert grads[1].abs().sum() > 0
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-9, atol=1e-9)


def lumpy_sdf(resolution: int, seed: int) -> torch.Tensor:
    """A ball with random bumps and a few floating specks (small components) on the lattice."""
    g = torch.Generator().manual_seed(seed)
    n = resolution + 1
    ijk = mt.lattice_ijk(torch.arange(n**3), resolution).float() / resolution * 2 - 1
    sdf = 0.6 - ijk.norm(dim=-1) + 0.08 * torch.randn(n**3, generator=g)
    specks = torch.randint(0, n**3, (6,), generator=g)
    sdf[specks] = 1.0
    sdf[mt.boundary_mask(resolution)] = -1.0
    return sdf


@pytest.mark.parametrize("min_faces", [None, 0.01, 30.0])
def test_compiled_marching_tetrahedra_gives_the_torch_mesh(min_faces):
    resolution = 12
    lattice = lambda ids: mt.lattice_points(ids, resolution, torch.full((3,), -1.0), 2.0 / resolution)  # noqa: E731
    for seed in range(3):
        sdf = lumpy_sdf(resolution, seed).requires_grad_()
        v_fast, f_fast = mt.marching_tetrahedra(lattice, sdf, resolution, compiled=True, min_faces=min_faces)
        slow = Mesh(*mt.marching_tetrahedra(lattice, sdf, resolution))
        if min_faces is not None:
            slow = remove_small_components(slow, min_faces)
        assert torch.equal(f_fast, slow.t_pos_idx) and torch.equal(v_fast, slow.v_pos)
        if min_faces == 30.0 and seed == 0:  # a one-vertex speck has 24 faces
            assert len(f_fast) < len(mt.marching_tetrahedra(lattice, sdf, resolution)[1])  # specks dropped
        g_fast, = torch.autograd.grad(v_fast.sum(), sdf)
        g_slow, = torch.autograd.grad(slow.v_pos.sum(), sdf)
        assert torch.equal(g_fast, g_slow)


def test_compiled_marching_tetrahedra_of_an_empty_lattice():
    sdf = -torch.ones(5**3)
    v_pos, faces = mt.marching_tetrahedra(lambda ids: ids[:, None].float().expand(-1, 3), sdf, 4, compiled=True, min_faces=0.01)
    assert v_pos.shape == (0, 3) and faces.shape == (0, 3)


def test_tetrahedra_grid_meshes_agree_and_are_kept_without_autograd_until_a_step():
    from threestudio_like.config import parse_structured
    from threestudio_like.registry import lookup

    cls = lookup("geometry", "tetrahedra-sdf-grid")
    grid = cls(parse_structured(cls.Config, {"isosurface_resolution": 12}, "system.geometry"))
    with torch.no_grad():
        grid.sdf.copy_(lumpy_sdf(12, 0) * 4)
        grid.deformation.normal_(0.0, 1.0)
    with torch.no_grad():
        fast = grid.isosurface()
        grid.cfg.cpu_kernel = False
        assert grid.isosurface() is fast  # nothing changed: the kept mesh, whichever path made it
    torch.testing.assert_close(grid.extract().v_pos, fast.v_pos, rtol=0, atol=0)
    assert torch.equal(grid.extract().t_pos_idx, fast.t_pos_idx)
    optimizer = torch.optim.Adam(grid.geometry_parameters(), lr=0.1, fused=True)  # in place, no version bump
    grid.isosurface().v_pos.sum().backward()  # with autograd: a fresh, differentiable mesh
    optimizer.step()
    with torch.no_grad():
        after = grid.isosurface()
    assert after is not fast and not torch.equal(after.v_pos[:10], fast.v_pos[:10])


def test_cpu_kernel_config_keys():
    from threestudio_like.config import parse_structured
    from threestudio_like.registry import lookup

    for family, name in (("renderer", "mesh-rasterizer"), ("geometry", "tetrahedra-sdf-grid")):
        cls = lookup(family, name)
        with pytest.raises(ValueError, match="cpu_kernel='fast' is not accepted; use one of auto, true, false"):
            parse_structured(cls.Config, {"cpu_kernel": "fast"}, f"system.{family}")
        assert parse_structured(cls.Config, {"cpu_kernel": "false"}, f"system.{family}").cpu_kernel is False


def topology_of(mesh: Mesh) -> dict:
    return {"edges": mesh.edges(), "pairs": mesh.adjacent_faces(), "degree": mesh.neighbour_counts(),
            "keys": mesh._sorted_edge_keys(), "opposite": mesh.opposite_vertices()}


def test_compiled_mesh_topology_gives_the_torch_arrays():
    from threestudio_like.renderers.antialias import opposite_vertices

    resolution = 12
    lattice = lambda ids: mt.lattice_points(ids, resolution, torch.full((3,), -1.0), 2.0 / resolution)  # noqa: E731
    surface = mt.marching_tetrahedra(lattice, lumpy_sdf(resolution, 1), resolution)
    g = torch.Generator().manual_seed(3)
    soup = torch.randint(0, 40, (300, 3), generator=g)  # edges shared by 3+ faces, repeated faces
    soup[:5, 2] = soup[:5, 1]  # degenerate faces
    for v_pos, faces in (surface, (torch.rand(45, 3, generator=g), soup), (torch.rand(4, 3), torch.zeros(0, 3, dtype=torch.long))):
        fast = topology_of(Mesh(v_pos, faces, cpu_kernel=True))
        slow = topology_of(Mesh(v_pos, faces, cpu_kernel=False))
        for name in ("edges", "pairs", "degree"):
            assert torch.equal(fast[name], slow[name]), name
        assert all(torch.equal(a, b) for a, b in zip(fast["keys"], slow["keys"]))
        if faces is surface[1]:  # a closed manifold: one face across every edge, whatever the sort
            assert torch.equal(fast["opposite"], slow["opposite"]) and bool((fast["opposite"] >= 0).all())
        else:  # vertices across shared edges: some vertex of a face on that edge, −1 on open edges
            open_edges = opposite_vertices(faces) < 0
            assert torch.equal(fast["opposite"] < 0, open_edges)
    assert torch.equal(topology_of(Mesh(*surface))["opposite"], opposite_vertices(surface[1]))


def test_compiled_mesh_terms_match_the_torch_terms_and_their_gradients():
    from threestudio_like.geometry.mesh import laplacian_smoothness, normal_consistency

    resolution = 10
    lattice = lambda ids: mt.lattice_points(ids, resolution, torch.full((3,), -1.0), 2.0 / resolution)  # noqa: E731
    v_pos, faces = mt.marching_tetrahedra(lattice, lumpy_sdf(resolution, 2), resolution)
    g = torch.Generator().manual_seed(5)
    v_pos = (v_pos.double() + 0.01 * torch.randn(v_pos.shape, generator=g, dtype=torch.float64)).detach()
    v_pos = torch.cat([v_pos, torch.zeros(1, 3, dtype=v_pos.dtype)])  # an unconnected vertex
    weights = torch.randn(len(v_pos), 3, generator=g, dtype=torch.float64)
    terms = {"normals": lambda m: (m.vertex_normals() * weights).sum(),
             "consistency": normal_consistency, "laplacian": laplacian_smoothness}
    for name, term in terms.items():
        results = []
        for choice in (True, False):
            leaf = v_pos.clone().requires_grad_()
            value = term(Mesh(leaf, faces, cpu_kernel=choice))
            value.backward()
            results.append((value.detach(), leaf.grad))
        (fast, g_fast), (slow, g_slow) = results
        assert g_slow.abs().sum() > 0, name
        torch.testing.assert_close(fast, slow, rtol=1e-12, atol=1e-12, msg=name)
        torch.testing.assert_close(g_fast, g_slow, rtol=1e-9, atol=1e-9, msg=name)
    single = Mesh(torch.rand(3, 3), torch.tensor([[0, 1, 2]]), cpu_kernel=True)  # one face: no adjacent pair
    assert float(normal_consistency(single)) == 0.0
    # a zero-area face has the zero normal (F.normalize's), so 1 − cos = 1 with each neighbour; torch's
    # cross product rounds e × e to ±1e-7 there, which normalising turns into an arbitrary direction
    flat = Mesh(torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 0, 0]]), torch.tensor([[0, 1, 2], [0, 3, 1]]), cpu_kernel=True)
    assert float(normal_consistency(flat)) == 1.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_compiled_antialias_gives_the_torch_image_and_gradients(dtype):
    from threestudio_like.renderers.antialias import antialias

    resolution = 10
    lattice = lambda ids: mt.lattice_points(ids, resolution, torch.full((3,), -1.0), 2.0 / resolution)  # noqa: E731
    v_pos, faces = mt.marching_tetrahedra(lattice, lumpy_sdf(resolution, 4), resolution)  # closed: real silhouettes
    g = torch.Generator().manual_seed(6)
    angle = torch.rand(3, generator=g) * 6.28
    pos = torch.stack([torch.cat([v_pos[:, :2] * torch.cos(a) + 0.1 * torch.sin(a), v_pos[:, 2:] * 0.5, v_pos[:, 2:] * 0.3 + 2.0], -1)
                       for a in angle]).to(dtype)  # three views, w in [1.7, 2.3]
    pos[1, :5, 3] = -1.0  # some vertices behind the camera in one view: their pairs are not blended
    soup_pos, soup = random_scene(1, 200, 11, dtype)  # open edges, overlaps, near-plane crossings
    weights = torch.randn(3, 32, 32, 5, generator=g, dtype=dtype)
    for scene_pos, tri in ((pos, faces), (soup_pos.nan_to_num(0.3).expand(3, -1, -1).contiguous(), soup)):
        rast = rasterize(scene_pos, tri, 32, 32, cpu_kernel=False)
        color = torch.rand(3, 32, 32, 5, generator=g, dtype=dtype)
        results = []
        for choice in (True, False):
            c, p = color.clone().requires_grad_(), scene_pos.clone().requires_grad_()
            out = antialias(c, rast, p, tri, cpu_kernel=choice)
            (out * weights).sum().backward()
            results.append((out.detach(), c.grad, p.grad))
        (fast, gc_fast, gp_fast), (slow, gc_slow, gp_slow) = results
        assert not torch.equal(slow, color)  # some pairs were blended
        assert torch.equal(fast, slow)
        tolerance = 1e-5 if dtype == torch.float32 else 1e-10
        torch.testing.assert_close(gc_fast, gc_slow, rtol=tolerance, atol=tolerance)
        assert gp_slow.abs().sum() > 0
        torch.testing.assert_close(gp_fast, gp_slow, rtol=tolerance, atol=tolerance)


def test_compiled_visibility_decides_as_the_torch_test():
    from threestudio_like.data.cameras import RandomCameraConfig
    from threestudio_like.export.visibility import covering_cameras, seen_points

    resolution = 12
    lattice = lambda ids: mt.lattice_points(ids, resolution, torch.full((3,), -1.0), 2.0 / resolution)  # noqa: E731
    mesh = Mesh(*mt.marching_tetrahedra(lattice, lumpy_sdf(resolution, 3), resolution))
    g = torch.Generator().manual_seed(8)
    weights = torch.rand(mesh.n_faces, 3, generator=g)
    weights = weights / weights.sum(-1, keepdim=True)  # random points on every face, with its normal
    corners = mesh.v_pos[mesh.t_pos_idx]
    points = (weights[..., None] * corners).sum(1)
    normals = mesh.face_normals()
    cameras = covering_cameras(RandomCameraConfig(elevation_range=(-10.0, 60.0)), 12, 64)
    fast = seen_points(points, normals, mesh.v_pos, mesh.t_pos_idx, cameras, cpu_kernel=True)
    slow = seen_points(points, normals, mesh.v_pos, mesh.t_pos_idx, cameras, cpu_kernel=False)
    assert 0.2 < float(slow.float().mean()) < 0.98  # some of the lumpy surface is hidden from every view
    assert int((fast != slow).sum()) <= 2  # points within rounding of the depth tolerance may differ
