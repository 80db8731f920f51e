"""The mesh rasterizer against a brute-force ray–triangle reference, its gradients, antialiasing, the
renderer's contract, and (on CUDA) nvdiffrast."""
from __future__ import annotations

import math

import pytest
import torch
import trimesh

from threestudio_like.data.cameras import make_cameras
from threestudio_like.export.texture import surface_points
from threestudio_like.geometry.base import Geometry
from threestudio_like.geometry.mesh import Mesh
from threestudio_like.registry import lookup
from threestudio_like.renderers.antialias import antialias, opposite_vertices
from threestudio_like.renderers.rasterize import FAR, NEAR, clip_positions, interpolate, rasterize


# --- an independent reference: Möller–Trumbore through the pixel-centre rays ----------------------
def moller_trumbore(origins, dirs, v0, v1, v2):
    """Rays [R,3] × triangles [F,3] → distance t [R,F] (inf on a miss) and barycentrics b1, b2 [R,F]
    of vertices 1 and 2 (P = (1 − b1 − b2) v0 + b1 v1 + b2 v2)."""
    e1, e2 = (v1 - v0)[None], (v2 - v0)[None]
    d = dirs[:, None]
    h = torch.cross(d.expand(-1, len(v0), -1), e2.expand(len(dirs), -1, -1), dim=-1)
    a = (e1 * h).sum(-1)
    s = origins[:, None] - v0[None]
    b1 = (s * h).sum(-1) / a
    q = torch.cross(s, e1.expand_as(s), dim=-1)
    b2 = (d * q).sum(-1) / a
    t = (e2 * q).sum(-1) / a
    hit = (a.abs() > 1e-12) & (b1 >= 0) & (b2 >= 0) & (b1 + b2 <= 1) & (t > 0)
    return torch.where(hit, t, torch.full_like(t, math.inf)), b1, b2


def reference(vertices, faces, cameras, near=NEAR, far=FAR):
    """Per pixel: nearest hit distance [B,H,W] (inf if none), its face [B,H,W], barycentrics of its
    three vertices [B,H,W,3] and the smallest of them (distance to an edge) [B,H,W]; hits count only
    between the near and far planes (camera-space depth)."""
    origins, dirs = cameras.rays()
    B, H, W, _ = dirs.shape
    v = vertices.double()
    out_t, out_f, out_b = [], [], []
    for b in range(B):
        o, d = origins[b].reshape(-1, 3).double(), dirs[b].reshape(-1, 3).double()
        t, b1, b2 = moller_trumbore(o, d, v[faces[:, 0]], v[faces[:, 1]], v[faces[:, 2]])
        forward = -cameras.c2w[b, :3, 2].double()
        depth = t * (d @ forward)[:, None]
        t = torch.where((depth >= near) & (depth <= far), t, torch.full_like(t, math.inf))
        best, face = t.min(1)
        rows = torch.arange(len(o))
        bary = torch.stack([1 - b1[rows, face] - b2[rows, face], b1[rows, face], b2[rows, face]], -1)
        out_t.append(best.view(H, W)), out_f.append(face.view(H, W)), out_b.append(bary.view(H, W, 3))
    bary = torch.stack(out_b)
    return torch.stack(out_t), torch.stack(out_f), bary


def triangle_soup(seed=0, n=40):
    """Random overlapping triangles around the origin, at different depths, plus one crossing the
    camera plane of the first camera and one wholly behind it."""
    g = torch.Generator().manual_seed(seed)
    centres = (torch.rand(n, 1, 3, generator=g) - 0.5) * 1.2
    vertices = (centres + (torch.rand(n, 3, 3, generator=g) - 0.5) * 0.6).reshape(-1, 3)
    crossing = torch.tensor([[2.5, 0.1, 0.1], [1.0, -0.3, 0.0], [1.0, 0.2, -0.3]])  # camera 0 sits at x = 2
    behind = torch.tensor([[3.0, 0.0, 0.0], [3.0, 0.5, 0.0], [3.0, 0.0, 0.5]])
    vertices = torch.cat([vertices, crossing, behind])
    faces = torch.arange(len(vertices)).view(-1, 3)
    return vertices, faces


def cameras(B=3, width=40, height=30):
    return make_cameras(torch.tensor([0.0, 30.0, -20.0])[:B], torch.tensor([0.0, 100.0, 220.0])[:B],
                        torch.full((B,), 2.0), torch.full((B,), 50.0), width, height)


def test_coverage_depth_and_attributes_match_ray_casting_at_pixel_centres():
    vertices, faces = triangle_soup()
    cams = cameras()
    attr = torch.randn(len(vertices), 5, generator=torch.Generator().manual_seed(1))
    pos_clip = clip_positions(vertices, cams)
    rast = rasterize(pos_clip, faces, cams.height, cams.width, backend="torch")
    assert rast.shape == (3, 30, 40, 4)
    t_ref, face_ref, bary_ref = reference(vertices, faces, cams)
    hit = torch.isfinite(t_ref)
    # pixel centres within 1e-4 of an edge may go either way; everything else must agree exactly
    clear = bary_ref.min(-1).values.abs() > 1e-4
    assert hit.sum() > 500 and (~hit).sum() > 500
    assert torch.equal((rast[..., 3] > 0)[clear | ~hit], hit[clear | ~hit])
    both = hit & clear & (rast[..., 3] > 0)
    assert torch.equal(rast[..., 3][both].long() - 1, face_ref[both])
    # z/w from the camera-space depth (OpenGL's projection), depth d = t · (dir · forward)
    origins, dirs = cams.rays()
    forward = -cams.c2w[:, :3, 2]
    d = (t_ref * torch.einsum("bhwi,bi->bhw", dirs.double(), forward.double()))[both]
    z_ndc = (FAR + NEAR) / (FAR - NEAR) - 2 * FAR * NEAR / ((FAR - NEAR) * d)
    assert torch.allclose(rast[..., 2][both].double(), z_ndc, atol=1e-5)
    # attributes: the reference's barycentrics of the same face
    ours = interpolate(attr, rast, faces, backend="torch")
    expected = (bary_ref[..., None] * attr.double()[faces[face_ref]]).sum(-2)
    assert torch.allclose(ours[both].double(), expected[both], atol=1e-4)
    assert torch.equal(ours[~(rast[..., 3] > 0)], torch.zeros_like(ours[~(rast[..., 3] > 0)]))
    # a batch of per-camera attributes interpolates each camera's own
    per_camera = attr[None] * torch.tensor([1.0, 2.0, 3.0])[:, None, None]
    batched = interpolate(per_camera, rast, faces, backend="torch")
    assert torch.allclose(batched, ours * torch.tensor([1.0, 2.0, 3.0])[:, None, None, None], atol=1e-5)


def test_surfaces_2e4_apart_are_ordered_by_depth():
    # concentric spheres of small triangles, radii 1e-4 apart, 1.5 from the camera: in float32, z/w
    # (its steps crowd near 1 with a near plane at 0.01) would let the inner one show through
    sphere = trimesh.creation.icosphere(subdivisions=4, radius=0.5)
    inner = torch.tensor(sphere.vertices, dtype=torch.float32)
    faces = torch.tensor(sphere.faces)
    cams = make_cameras(torch.tensor([10.0, 50.0]), torch.tensor([0.0, 70.0]), torch.full((2,), 2.0), torch.full((2,), 40.0), 64, 64)
    for outer_first in (True, False):
        outer = inner * (1 + 2e-4)
        vertices = torch.cat([outer, inner] if outer_first else [inner, outer])
        rast = rasterize(clip_positions(vertices, cams), torch.cat([faces, faces + len(inner)]), 64, 64, backend="torch")
        ids = rast[..., 3][rast[..., 3] > 0].long() - 1
        assert len(ids) > 1000
        assert ((ids < len(faces)) == outer_first).all()


def test_triangles_behind_or_through_the_camera_are_clipped_not_crashing():
    vertices, faces = triangle_soup()
    cams = cameras(B=1)
    keep = faces[-2:]  # the one crossing the camera plane and the one behind it
    pos_clip = clip_positions(vertices.requires_grad_(True), cams)
    rast = rasterize(pos_clip, keep, cams.height, cams.width, backend="torch")
    t_ref, _, bary_ref = reference(vertices.detach(), keep, cams)
    hit, clear = torch.isfinite(t_ref), bary_ref.min(-1).values.abs() > 1e-4
    assert hit.sum() > 20  # the visible part of the crossing triangle
    assert torch.equal((rast[..., 3] > 0)[clear | ~hit], hit[clear | ~hit])
    assert not (rast[..., 3] == 2).any()  # nothing of the triangle behind the camera
    color = interpolate(torch.rand(len(vertices), 3), rast, keep, backend="torch")
    out = antialias(color, rast, pos_clip, keep, backend="torch")
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(vertices.grad).all()


def test_interpolated_attribute_gradients_match_finite_differences():
    g = torch.Generator().manual_seed(3)
    vertices = torch.tensor([[0.0, -0.5, -0.4], [0.1, 0.5, -0.3], [-0.1, 0.0, 0.5], [0.3, 0.6, 0.4]], dtype=torch.float64)
    faces = torch.tensor([[0, 1, 2], [1, 3, 2]])
    cams = cameras(B=2, width=12, height=10)
    attr = torch.randn(4, 2, dtype=torch.float64, generator=g)
    weights = torch.randn(2, 10, 12, 2, dtype=torch.float64, generator=g)

    def loss(v):
        pos_clip = clip_positions(v, cams)
        return (weights * interpolate(attr, rasterize(pos_clip, faces, 10, 12, backend="torch"), faces, backend="torch")).sum()

    v = vertices.clone().requires_grad_(True)
    loss(v).backward()
    numeric = torch.zeros_like(vertices)
    for i in range(4):
        for j in range(3):
            step = torch.zeros_like(vertices)
            step[i, j] = 1e-6
            numeric[i, j] = (loss(vertices + step) - loss(vertices - step)) / 2e-6
    assert v.grad.abs().max() > 1e-2
    assert torch.allclose(v.grad, numeric, rtol=1e-5, atol=1e-6)


def square(offset: float = 0.0, dtype=torch.float64):
    """A 0.8 × 0.8 square facing the +x camera (screen right = world +y), its right edge moved by
    ``offset`` along +y: two triangles sharing the diagonal."""
    v = torch.tensor([[0.0, -0.4, -0.4], [0.0, 0.4, -0.4], [0.0, 0.4, 0.4], [0.0, -0.4, 0.4]], dtype=dtype)
    v[1:3, 1] += offset
    return v, torch.tensor([[0, 1, 2], [0, 2, 3]])


def coverage(v, faces, cams):
    pos_clip = clip_positions(v, cams)
    rast = rasterize(pos_clip, faces, cams.height, cams.width, backend="torch")
    return antialias((rast[..., 3:] > 0).to(v.dtype), rast, pos_clip, faces, backend="torch")


def test_antialiased_coverage_is_the_area_and_grows_when_an_edge_moves_outward():
    cams = make_cameras(torch.zeros(1), torch.zeros(1), torch.full((1,), 2.0), torch.full((1,), 40.0), 32, 32)
    f = 16.0 / math.tan(math.radians(20.0))  # focal length in pixels
    for offset in (0.013, 0.05, 0.1):  # edge positions at different fractions of a pixel
        v, faces = square(offset)
        side_x, side_y = (0.8 + offset) * f / 2.0, 0.8 * f / 2.0  # the square's projection, in pixels
        hard = coverage(v, faces, cams)
        assert hard.sum().item() == pytest.approx(side_x * side_y, rel=2e-3)  # vs ⌊⌋-ish raw count
        raw = (rasterize(clip_positions(v, cams), faces, 32, 32, backend="torch")[..., 3] > 0).sum().item()
        assert abs(raw - side_x * side_y) > abs(hard.sum().item() - side_x * side_y)
        shift = torch.zeros((), dtype=torch.float64, requires_grad=True)
        moved = v.clone()
        moved[1:3, 1] = moved[1:3, 1] + shift
        total = coverage(moved, faces, cams).sum()
        total.backward()
        finite = (coverage(square(offset + 1e-5)[0], faces, cams).sum() - coverage(square(offset - 1e-5)[0], faces, cams).sum()) / 2e-5
        assert shift.grad.item() > 0
        assert shift.grad.item() == pytest.approx(finite.item(), rel=1e-3)
        # d area / d offset = side_y · f/2, sampled by the rows whose centres the edge spans
        assert abs(shift.grad.item() - side_y * f / 2.0) <= f / 2.0


def test_antialiasing_blends_colours_only_across_silhouettes():
    # two triangles of one flat square: their shared diagonal is no silhouette, the outline is
    cams = make_cameras(torch.zeros(1), torch.zeros(1), torch.full((1,), 2.0), torch.full((1,), 40.0), 24, 24)
    v, faces = square(0.03)
    pos_clip = clip_positions(v, cams)
    rast = rasterize(pos_clip, faces, 24, 24, backend="torch")
    tid = rast[..., 3:]
    color = torch.where(tid == 1, 1.0, torch.where(tid == 2, 2.0, 0.0)).to(torch.float64)  # per-triangle constants
    out = antialias(color, rast, pos_clip, faces, backend="torch")
    changed = (out != color)[0, ..., 0]
    inside = (tid[0, ..., 0] > 0)
    interior = inside.clone()
    interior[1:] &= inside[:-1]
    interior[:-1] &= inside[1:]
    interior[:, 1:] &= inside[:, :-1]
    interior[:, :-1] &= inside[:, 1:]
    assert changed.any() and not (changed & interior).any()  # the diagonal (interior pixels) untouched


def test_opposite_vertices_of_a_tetrahedron_and_an_open_square():
    tet = torch.tensor([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])
    opposite = opposite_vertices(tet)
    for f in range(4):
        for i in range(3):  # across edge i of a tetrahedron face lies the one vertex not in the face
            assert opposite[f, i].item() == ({0, 1, 2, 3} - set(tet[f].tolist())).pop()
    _, faces = square()
    assert opposite_vertices(faces).tolist() == [[-1, 3, -1], [-1, -1, 1]]


def area(p, q, r):
    """Signed area ×2 of the 2D triangles (p, q, r), broadcasting over leading axes."""
    return (q[..., 0] - p[..., 0]) * (r[..., 1] - p[..., 1]) - (r[..., 0] - p[..., 0]) * (q[..., 1] - p[..., 1])


def test_uv_baking_in_bands_matches_one_pass_and_the_triangles_own_points():
    # texels of a UV layout: rasterized in bands of 7 rows or all at once, each texel's 3D point is the
    # barycentric mix of its triangle's corners at the texel centre (transcribed here in 2D)
    uv = torch.tensor([[0.103, 0.117], [0.913, 0.207], [0.291, 0.823], [0.947, 0.951]])  # no edge through a texel centre
    faces = torch.tensor([[0, 1, 2], [1, 3, 2]])
    corners = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    whole = surface_points(uv, faces, corners, 32)
    banded = surface_points(uv, faces, corners, 32, band_texels=32 * 7)
    assert torch.equal(whole[0], banded[0]) and torch.allclose(whole[1], banded[1], atol=1e-5)
    texel = whole[0]
    every = torch.arange(32 * 32)
    centre = torch.stack([(every % 32 + 0.5) / 32, 1 - (every // 32 + 0.5) / 32], -1)  # (u, v) of each texel
    found = torch.zeros(32 * 32, dtype=torch.bool)
    found[texel] = True
    point = torch.zeros(32 * 32, 3)
    point[texel] = whole[1]
    inside_any, near_edge = torch.zeros_like(found), torch.zeros_like(found)
    for f in range(2):
        a, b, c = uv[faces[f]]
        w = torch.stack([area(centre, b, c), area(a, centre, c), area(a, b, centre)], -1) / area(a, b, c)
        inside = (w > 1e-4).all(-1)
        near_edge |= (w.abs() <= 1e-4).any(-1)
        inside_any |= inside
        assert inside.sum() > 50
        assert torch.allclose(point[inside], w[inside] @ corners[faces[f]], atol=1e-5)
    assert torch.equal(found[~near_edge], inside_any[~near_edge])


# --- the renderer --------------------------------------------------------------------------------
def part(family, name, **settings):
    cls = lookup(family, name)
    return cls(cls.Config(**settings))


class MeshBall(Geometry):
    """A stand-in mesh geometry: an icosphere whose vertices are parameters, coloured by height."""

    def __init__(self, radius=0.5):
        super().__init__()
        sphere = trimesh.creation.icosphere(subdivisions=3, radius=radius)
        self.v_pos = torch.nn.Parameter(torch.tensor(sphere.vertices, dtype=torch.float32))
        self.register_buffer("faces", torch.tensor(sphere.faces, dtype=torch.long))

    def isosurface(self):
        return Mesh(self.v_pos, self.faces)

    def color(self, points):
        return torch.stack([points[:, 2] + 0.5, torch.full_like(points[:, 0], 0.3), 0.5 - points[:, 2]], -1).clamp(0, 1)


def test_renderer_returns_the_contract_with_gradients_to_the_vertices():
    geometry = MeshBall()
    renderer = part("renderer", "mesh-rasterizer")
    material = part("material", "diffuse-with-point-light")
    background = part("background", "solid-color", color=[0.0, 1.0, 0.0])
    cams = make_cameras(torch.tensor([0.0, 40.0]), torch.tensor([0.0, 90.0]), torch.full((2,), 2.0), torch.full((2,), 40.0), 32, 24)
    out = renderer.render(geometry, material, background, cams, shading="diffuse", with_normal=True)
    for key, channels in (("rgb", 3), ("opacity", 1), ("depth", 1), ("normal", 3)):
        assert out[key].shape == (2, 24, 32, channels)
    assert isinstance(out["mesh"], Mesh)
    assert torch.equal(out["rgb"][:, 0, 0], torch.tensor([[0.0, 1.0, 0.0]] * 2))  # background in the corner
    assert out["opacity"].min() >= 0 and out["opacity"].max() <= 1 + 1e-6
    assert out["opacity"][:, 12, 16].tolist() == [[1.0], [1.0]]
    # at the image centre: the sphere's near point, 2 − r away (a polygon: within its sagitta), facing the camera
    assert out["depth"][:, 12, 16, 0].tolist() == pytest.approx([1.5, 1.5], abs=0.01)
    toward_camera = cams.position / cams.position.norm(dim=-1, keepdim=True)
    assert ((out["normal"][:, 12, 16] * toward_camera).sum(-1) > 0.99).all()
    (out["rgb"].sum() + out["opacity"].sum()).backward()
    assert geometry.v_pos.grad.abs().sum() > 0
    # without antialiasing the coverage is binary and its gradient reaches no vertex
    renderer = part("renderer", "mesh-rasterizer", antialias=False)
    geometry.v_pos.grad = None
    hard = renderer.render(geometry, material, background, cams)
    assert set(hard["opacity"].unique().tolist()) == {0.0, 1.0}
    # the antialiasing topology kept for one mesh is not reused for another
    other = MeshBall(radius=0.4)
    other.faces = other.faces.flip(1).contiguous()  # same count, other faces: inward normals, other ids
    fresh = part("renderer", "mesh-rasterizer").render(other, material, background, cams)
    again = part("renderer", "mesh-rasterizer")
    again.render(geometry, material, background, cams)
    assert torch.equal(again.render(other, material, background, cams)["rgb"], fresh["rgb"])
    # a surface that vanished (an SDF of one sign) renders the background
    geometry.isosurface = lambda: Mesh(geometry.v_pos[:0], geometry.faces[:0])
    empty = renderer.render(geometry, material, background, cams)
    assert torch.equal(empty["rgb"], torch.tensor([0.0, 1.0, 0.0]).expand(2, 24, 32, 3))
    assert empty["opacity"].abs().sum() == 0 and empty["depth"].abs().sum() == 0


def test_silhouette_gradients_alone_fit_a_sphere_to_a_target_outline():
    # only the antialiased coverage carries the radius: the mask loss must grow 0.35 toward 0.5
    class Scaled(MeshBall):
        def __init__(self):
            super().__init__(radius=1.0)
            self.scale = torch.nn.Parameter(torch.tensor(0.35))

        def isosurface(self):
            return Mesh(self.v_pos.detach() * self.scale, self.faces)

    geometry, target = Scaled(), MeshBall(radius=0.5)
    renderer = part("renderer", "mesh-rasterizer")
    material, background = part("material", "no-material"), part("background", "solid-color")
    cams = make_cameras(torch.tensor([0.0, 60.0]), torch.tensor([0.0, 120.0]), torch.full((2,), 2.0), torch.full((2,), 40.0), 32, 32)
    goal = renderer.render(target, material, background, cams)["opacity"].detach()
    hard = part("renderer", "mesh-rasterizer", antialias=False)
    (hard.render(geometry, material, background, cams)["opacity"] - goal).square().mean().backward()
    assert geometry.scale.grad is None or geometry.scale.grad == 0  # without antialiasing: no outline gradient
    optimizer = torch.optim.Adam([geometry.scale], lr=0.02)
    path = []
    for _ in range(30):
        optimizer.zero_grad()
        (renderer.render(geometry, material, background, cams)["opacity"] - goal).square().mean().backward()
        optimizer.step()
        path.append(geometry.scale.item())
    assert path[9] > 0.45  # straight toward the target while the outlines differ by pixels
    assert sum(path[-10:]) / 10 == pytest.approx(0.5, abs=0.015)  # then settles around it


def test_config_rejects_a_bad_backend_and_clip_planes():
    with pytest.raises(ValueError, match="renderer.backend='opengl'"):
        part("renderer", "mesh-rasterizer", backend="opengl")
    with pytest.raises(ValueError, match="near"):
        part("renderer", "mesh-rasterizer", near=0.0)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="needs CUDA"):
            rasterize(torch.zeros(1, 3, 4), torch.tensor([[0, 1, 2]]), 4, 4, backend="nvdiffrast")


def test_auto_backend_falls_back_to_torch_when_nvdiffrast_is_missing_or_cannot_build(monkeypatch):
    from threestudio_like.renderers import rasterize as module

    cuda = torch.device("cuda", 0)  # only the device type is consulted: no GPU needed
    monkeypatch.setattr(module, "_CONTEXTS", {})
    monkeypatch.setattr(module, "_WARNED", set())
    monkeypatch.setattr(module, "nvdiffrast_module", lambda: None)
    with pytest.warns(UserWarning, match="not installed"):
        assert module.use_nvdiffrast("auto", cuda) is False
    with pytest.raises(ValueError, match="pip install diffrp-nvdiffrast"):
        module.use_nvdiffrast("nvdiffrast", cuda)

    class Unbuildable:
        @staticmethod
        def RasterizeCudaContext(device):
            raise RuntimeError("Ninja is required to load C++ extensions\nmore detail")

    monkeypatch.setattr(module, "nvdiffrast_module", lambda: Unbuildable)
    with pytest.warns(UserWarning, match="could not start on cuda:0: Ninja is required"):
        assert module.use_nvdiffrast("auto", cuda) is False
    assert module.use_nvdiffrast("nvdiffrast", cuda) is True  # asked for explicitly: the failure surfaces
    with pytest.raises(RuntimeError, match="Ninja is required"):
        module.cuda_context(cuda)
    assert module.use_nvdiffrast("auto", torch.device("cpu")) is False


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (nvdiffrast runs only on CUDA tensors)")
def test_torch_and_nvdiffrast_give_the_same_images():
    pytest.importorskip("nvdiffrast.torch", reason="nvdiffrast is not installed (pip install diffrp-nvdiffrast)")
    sphere = trimesh.creation.icosphere(subdivisions=4, radius=0.5)
    vertices = torch.tensor(sphere.vertices, dtype=torch.float32)
    faces = torch.tensor(sphere.faces)
    cams = cameras(B=2, width=64, height=48)
    attr = torch.rand(len(vertices), 3)
    images = {}
    for backend, device in (("torch", "cpu"), ("nvdiffrast", "cuda")):
        v = vertices.to(device).requires_grad_(True)
        pos_clip = clip_positions(v, cams.to(device))
        rast = rasterize(pos_clip, faces.to(device), 48, 64, backend=backend)
        color = interpolate(attr.to(device), rast, faces.to(device), backend=backend)
        mask = (rast[..., 3:] > 0).float()
        out = antialias(torch.cat([color, mask], -1), rast, pos_clip, faces.to(device), backend=backend)
        out[..., 3].sum().backward()
        images[backend] = (rast.detach().cpu(), out.detach().cpu(), v.grad.cpu())
    (rast_t, out_t, grad_t), (rast_n, out_n, grad_n) = images["torch"], images["nvdiffrast"]
    same = rast_t[..., 3] == rast_n[..., 3]
    assert same.float().mean() > 0.995  # pixel centres on edges may go either way
    assert torch.allclose(rast_t[same][:, :3], rast_n[same][:, :3], atol=1e-4)
    assert (out_t - out_n).abs().mean() < 2e-3
    assert torch.allclose(grad_t, grad_n, atol=0.05 * grad_n.abs().max().item())
