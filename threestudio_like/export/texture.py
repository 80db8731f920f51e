"""Colouring a mesh from the geometry's albedo field: UV atlas + texture baking, or vertex colours.

Baking runs in plain torch: the UV atlas is rasterized into the texture image with the mesh
renderer's ``rasterize`` (barycentric coordinates per texel centre), ``interpolate`` maps each covered
texel back to its 3D point on the mesh, the field's ``color`` is queried there, and the gaps between
charts are filled by dilation so that bilinear filtering and mip-mapping at chart borders do not
pull in background.

Image convention (as trimesh, OBJ and OpenGL): u runs left → right, v runs bottom → top, so texel
row r (from the top) holds v = 1 − (r + ½)/T.
"""
from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F
import trimesh
import xatlas
from PIL import Image
from torch import Tensor
from tqdm import tqdm

from threestudio_like.export.isosurface import geometry_device
from threestudio_like.export.visibility import FillSettings, TrainingViews, colour_unseen
from threestudio_like.renderers.rasterize import interpolate, rasterize

log = logging.getLogger(__name__)


def query_color(geometry: torch.nn.Module, points: np.ndarray, chunk_size: int = 262144, progress: bool = True,
                desc: str = "colour") -> np.ndarray:
    """``geometry.color`` at world points [N,3] → float32 [N,3] in [0,1], in chunks, without gradients."""
    device = geometry_device(geometry)
    out = np.empty((len(points), 3), dtype=np.float32)
    with torch.no_grad():
        for start in tqdm(range(0, len(points), chunk_size), desc=desc, disable=not progress, leave=False):
            chunk = torch.as_tensor(points[start:start + chunk_size], dtype=torch.float32, device=device)
            out[start:start + len(chunk)] = geometry.color(chunk).float().clamp(0, 1).cpu().numpy()
    return out


def vertex_colors(geometry: torch.nn.Module, mesh: trimesh.Trimesh, chunk_size: int = 262144, progress: bool = True) -> np.ndarray:
    """Albedo at each mesh vertex → float32 [V,3] in [0,1]."""
    return query_color(geometry, np.asarray(mesh.vertices), chunk_size, progress, desc="vertex colours")


def auto_texture_size(mesh: trimesh.Trimesh, texels_per_unit: float, fill: float = 0.75,
                      smallest: int = 256, largest: int = 4096) -> int:
    """The power-of-two texture side T whose T² texels give ``texels_per_unit`` texels per unit length
    on the surface, lengths measured with the mesh's largest side as 1, when charts fill ``fill`` of
    the atlas: T ≈ √(area / fill) · texels_per_unit, rounded in log scale, clipped to [smallest, largest]."""
    extent = float(np.max(mesh.extents)) if len(mesh.vertices) else 1.0
    area = float(mesh.area) / max(extent, 1e-12) ** 2
    side = np.sqrt(max(area, 1e-12) / fill) * texels_per_unit
    return int(np.clip(2 ** round(np.log2(side)), smallest, largest))


def unwrap_uv(vertices: np.ndarray, faces: np.ndarray, texture_size: int, padding: int = 2,
              brute_force: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """xatlas UV atlas packed into one texture_size² image → (vmapping [V'] old-vertex index per new
    vertex, faces [F,3] into the new vertices, uv [V',2] in [0,1]). Vertices on chart seams are
    duplicated, so V' ≥ V. xatlas chooses the texel density that fills the image; ``brute_force``
    tries every chart position (tighter packing, slower)."""
    atlas = xatlas.Atlas()
    atlas.add_mesh(np.ascontiguousarray(vertices, dtype=np.float32), np.ascontiguousarray(faces, dtype=np.uint32))
    pack = xatlas.PackOptions()
    pack.resolution = int(texture_size)
    # empty texels around each chart, filled later by dilation: they are what bilinear lookups at a
    # chart's edge read, so xatlas's own extra bilinear border is not needed (+3 % coverage)
    pack.padding = int(padding)
    pack.bilinear = False
    pack.bruteForce = bool(brute_force)
    pack.rotate_charts = True
    # xatlas is the slow step of an export (about a minute for 150k faces on two CPU cores)
    log.info("unwrapping UVs of %d faces with xatlas%s", len(faces),
             "; set decimate_target_faces to make this faster" if len(faces) > 100_000 else "")
    charts = xatlas.ChartOptions()
    # larger charts (cost 6 instead of 2, two growing passes): fewer gutters, +3 % coverage on the demo
    charts.max_cost, charts.max_iterations = 6.0, 2
    atlas.generate(chart_options=charts, pack_options=pack)
    if atlas.atlas_count != 1:
        # charts did not fit one image at the estimated density: pack again, leaving xatlas to size it
        pack.resolution = 0
        pack.texels_per_unit = atlas.texels_per_unit * 0.9
        atlas = xatlas.Atlas()
        atlas.add_mesh(np.ascontiguousarray(vertices, dtype=np.float32), np.ascontiguousarray(faces, dtype=np.uint32))
        atlas.generate(chart_options=charts, pack_options=pack)
    vmapping, new_faces, uv = atlas[0]
    return vmapping.astype(np.int64), new_faces.astype(np.int64), uv.astype(np.float32)


def uv_clip_positions(uv: Tensor, size: int, first_row: int = 0, rows: int | None = None) -> Tensor:
    """UVs [V,2] → clip positions [1,V,4] whose rasterization at ``rows`` × ``size`` pixels is the
    band of the size² texture image starting at ``first_row`` (all of it by default): texel column c
    holds u = (c + ½)/T, row r (from the top) holds v = 1 − (r + ½)/T."""
    rows = size if rows is None else rows
    y = (2 - 2 * uv[:, 1]) * size / rows - 2 * first_row / rows - 1  # the band's rows span NDC [−1, 1]
    return torch.stack([2 * uv[:, 0] - 1, y, torch.zeros_like(y), torch.ones_like(y)], -1)[None]


def surface_points(uv: Tensor, faces: Tensor, vertices: Tensor, size: int,
                   band_texels: int = 1 << 22) -> tuple[Tensor, Tensor]:
    """The texels of a size² image whose centres a UV triangle covers, and their 3D points: uv [V,2],
    faces [F,3], vertices [V,3] (or any vertex attributes [V,C]) → (texel [K] flat index r·size + c,
    points [K,3] (the attributes there [K,C])). Rasterized in bands of about ``band_texels`` so that
    large textures stay within memory."""
    rows = max(1, min(size, band_texels // size))
    texels, points = [], []
    for first_row in range(0, size, rows):
        band = min(rows, size - first_row)
        rast = rasterize(uv_clip_positions(uv, size, first_row, band), faces, band, size, backend="torch")
        inside = torch.nonzero(rast[0, ..., 3].reshape(-1) > 0)[:, 0]
        texels.append(inside + first_row * size)
        points.append(interpolate(vertices, rast, faces, backend="torch").view(-1, vertices.shape[-1])[inside])
    return torch.cat(texels), torch.cat(points)


def texel_points(uv: Tensor, faces: Tensor, vertices: Tensor, size: int) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`surface_points` with the unit normal of the face each texel lies on: uv [V,2],
    faces [F,3], vertices [V,3] → (texel [K], points [K,3], normals [K,3]). The faces are drawn
    with corners of their own, so that a per-face attribute can ride along the interpolation."""
    tri = vertices[faces]  # [F,3,3]
    normals = F.normalize(torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), dim=-1)
    corners = torch.cat([tri, normals[:, None].expand(-1, 3, -1)], -1).reshape(-1, 6)
    own = torch.arange(3 * len(faces), device=faces.device).view(-1, 3)
    texel, values = surface_points(uv[faces].reshape(-1, 2), own, corners, size)
    return texel, values[:, :3].contiguous(), values[:, 3:].contiguous()


def dilate(image: Tensor, mask: Tensor, iterations: int = 8) -> Tensor:
    """Grow the covered texels into the empty ones: image [H,W,3], mask [H,W] bool → [H,W,3].

    Each iteration gives every empty texel with a covered 8-neighbour the mean of those neighbours;
    texels still empty at the end get the mean colour, so no black shows through at low mip levels.
    """
    img = (image * mask[..., None]).permute(2, 0, 1)[None]  # [1,3,H,W]
    m = mask.float()[None, None]
    kernel = torch.ones(1, 1, 3, 3, dtype=img.dtype, device=img.device)
    for _ in range(iterations):
        total = F.conv2d(img, kernel.expand(3, 1, 3, 3), padding=1, groups=3)
        count = F.conv2d(m, kernel, padding=1)
        grow = (m == 0) & (count > 0)
        if not grow.any():
            break
        img = torch.where(grow, total / count.clamp(min=1), img)
        m = torch.where(grow, torch.ones_like(m), m)
    if (m == 0).any() and (m > 0).any():
        mean = img.sum(dim=(2, 3), keepdim=True) / m.sum()
        img = torch.where(m > 0, img, mean)
    return img[0].permute(1, 2, 0)


def bake_texture(
    geometry: torch.nn.Module, mesh: trimesh.Trimesh, texture_size: int = 1024, chunk_size: int = 262144,
    padding: int = 2, dilate_iterations: int = 8, progress: bool = True, brute_force: bool = True,
    seen_by: TrainingViews | None = None, fill: FillSettings = FillSettings(),
) -> trimesh.Trimesh:
    """A copy of ``mesh`` with xatlas UVs and the albedo field baked into a texture_size² image;
    with ``seen_by`` (the run's training views), texels no camera of their range sees take the
    colour of the nearest seen texel (``fill``; export/visibility.py).

    Returns a Trimesh (vertices split on seams) whose visual is TextureVisuals(uv, PBRMaterial with
    baseColorTexture = the baked PIL image); vertex normals are those of the input mesh;
    ``metadata["atlas_coverage"]`` is the fraction of texels inside a chart, ``metadata["unseen_fraction"]``
    that of the covered texels no training view sees (None without ``seen_by``).
    """
    vmapping, faces, uv = unwrap_uv(mesh.vertices, mesh.faces, texture_size, padding, brute_force)
    vertices = np.asarray(mesh.vertices)[vmapping]
    size = int(texture_size)
    corners = torch.as_tensor(vertices, dtype=torch.float32)
    texel, points, face_normals = texel_points(torch.as_tensor(uv), torch.as_tensor(faces), corners, size)
    colors = query_color(geometry, points.numpy(), chunk_size, progress, desc=f"bake texture {size}^2")
    unseen = None
    if seen_by is not None:
        colors, unseen = colour_unseen(colors, points, face_normals, corners, torch.as_tensor(faces), seen_by, fill)
    image = torch.zeros(size * size, 3)
    covered = torch.zeros(size * size, dtype=torch.bool)
    image[texel] = torch.as_tensor(colors)
    covered[texel] = True
    coverage = covered.float().mean().item()
    log.info("texture covers %.1f%% of %d^2 texels", 100.0 * coverage, size)
    image = dilate(image.view(size, size, 3), covered.view(size, size), dilate_iterations)
    pil = Image.fromarray((image.clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).numpy(), mode="RGB")
    material = trimesh.visual.material.PBRMaterial(
        name="material_0", baseColorTexture=pil, metallicFactor=0.0, roughnessFactor=1.0,
    )
    normals = np.asarray(mesh.vertex_normals)[vmapping]
    textured = trimesh.Trimesh(vertices, faces, vertex_normals=normals, process=False,
                               visual=trimesh.visual.TextureVisuals(uv=uv, material=material))
    textured.metadata["atlas_coverage"] = coverage
    textured.metadata["unseen_fraction"] = unseen
    return textured


def texture_image(mesh: trimesh.Trimesh) -> Image.Image | None:
    """The base-colour image of a textured mesh (PBR or simple material), or None."""
    visual = mesh.visual
    if not isinstance(visual, trimesh.visual.TextureVisuals) or visual.uv is None:
        return None
    material = visual.material
    image = getattr(material, "baseColorTexture", None)
    return image if image is not None else getattr(material, "image", None)


def sample_texture(image: Image.Image, uv: np.ndarray) -> np.ndarray:
    """Bilinear lookup of an image at uv [N,2] (OpenGL convention) → float32 [N,3] in [0,1]."""
    tex = torch.as_tensor(np.array(image.convert("RGB")), dtype=torch.float32).permute(2, 0, 1)[None] / 255.0
    uv = torch.as_tensor(uv, dtype=torch.float32)
    grid = torch.stack([uv[:, 0] * 2 - 1, (1 - uv[:, 1]) * 2 - 1], dim=-1).view(1, 1, -1, 2)
    out = F.grid_sample(tex, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out[0, :, 0].T.numpy()
