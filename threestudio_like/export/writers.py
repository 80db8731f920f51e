"""Mesh files: OBJ + MTL + texture PNG, and binary glTF (GLB), each written atomically.

Frames. The scene is z-up with its front facing +x. OBJ and glTF viewers (Blender's importers, web
viewers) expect +Y up with the front facing +Z, so files are written in that frame:
(x, y, z)_world → (y, z, x)_file, a proper rotation (the world's right-hand side, +y as seen from the
front camera, becomes +X). Optionally the mesh is also scaled so its largest side is 1 and centred on
its bounding box, or rested on the ground plane (y = 0). The 4×4 world → file matrix is returned so
files can be mapped back; every file of an export (and the splat file) uses it.
"""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Optional

import numpy as np
import trimesh
from PIL import Image

from threestudio_like.export.texture import texture_image
from threestudio_like.utils.atomic import write_bytes

# rows: file axes X, Y, Z in world coordinates
WORLD_TO_Y_UP = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])

MTL_TEMPLATE = """# material of {obj}
newmtl material_0
Ka 0.000 0.000 0.000
Kd 1.000 1.000 1.000
Ks 0.000 0.000 0.000
Ns 10.0
d 1.0
illum 1
map_Kd {texture}
"""


def view_frame_matrix(vertices: np.ndarray, y_up: bool = True, unit_box: bool = True, placement: str = "center") -> np.ndarray:
    """4×4 world → file transform: optional z-up → y-up rotation, optional scaling to a largest side
    of 1, then the placement of the bounding box: ``center`` (centred on the origin), ``ground``
    (centred across, resting on the plane up = 0) or ``world`` (the world origin kept).
    vertices: [V,3] world positions."""
    matrix = np.eye(4)
    if y_up:
        matrix[:3, :3] = WORLD_TO_Y_UP
    rotated = np.asarray(vertices) @ matrix[:3, :3].T
    lo, hi = rotated.min(axis=0), rotated.max(axis=0)
    scale = 1.0 / max(float((hi - lo).max()), 1e-12) if unit_box else 1.0
    shift = np.zeros(3)
    if placement in ("center", "ground"):
        shift = -0.5 * (lo + hi)
    if placement == "ground":
        up = 1 if y_up else 2
        shift[up] = -lo[up]
    placing = np.eye(4)
    placing[:3, :3] *= scale
    placing[:3, 3] = scale * shift
    return placing @ matrix


def to_view_frame(mesh: trimesh.Trimesh, y_up: bool = True, unit_box: bool = True,
                  placement: str = "center") -> tuple[trimesh.Trimesh, np.ndarray]:
    """A copy of ``mesh`` (visuals kept) in the file frame, and the 4×4 world → file matrix."""
    matrix = view_frame_matrix(mesh.vertices, y_up, unit_box, placement)
    normals = np.asarray(mesh.vertex_normals) @ matrix[:3, :3].T
    normals /= np.linalg.norm(normals, axis=-1, keepdims=True).clip(min=1e-12)
    vertices = np.asarray(mesh.vertices) @ matrix[:3, :3].T + matrix[:3, 3]
    moved = trimesh.Trimesh(vertices, np.asarray(mesh.faces), vertex_normals=normals, visual=mesh.visual.copy(), process=False)
    return moved, matrix


def _rows(fmt: str, array: np.ndarray) -> str:
    buffer = io.StringIO()
    np.savetxt(buffer, array, fmt=fmt)
    return buffer.getvalue()


def encode_texture(image: Image.Image, texture_format: str = "png", jpeg_quality: int = 90) -> bytes:
    """The texture as PNG or JPEG bytes (RGB)."""
    buffer = io.BytesIO()
    if texture_format == "jpg":
        image.convert("RGB").save(buffer, format="JPEG", quality=int(jpeg_quality))
    else:
        image.convert("RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def write_obj(mesh: trimesh.Trimesh, directory: Path, name: str = "model", texture_format: str = "png",
              jpeg_quality: int = 90, vertex_colors: Optional[np.ndarray] = None) -> dict[str, Path]:
    """``name.obj`` (v, vt, vn, f) + ``name.mtl`` (Kd 1 1 1, map_Kd) + ``texture_kd.png`` or
    ``texture_kd.jpg`` for a textured mesh; a mesh with ColorVisuals, or ``vertex_colors`` [V,3] in
    [0,1], gets ``v x y z r g b`` lines. Returns {"obj", "mtl", "texture"} → paths (only those written)."""
    texture_name = f"texture_kd.{texture_format}"
    directory = Path(directory)
    image = texture_image(mesh)
    if vertex_colors is None and isinstance(mesh.visual, trimesh.visual.ColorVisuals) and mesh.visual.kind == "vertex":
        vertex_colors = np.asarray(mesh.visual.vertex_colors)[:, :3] / 255.0
    header = "# threestudio_like mesh export (+Y up, front facing +Z)\n"
    v = np.asarray(mesh.vertices)
    if vertex_colors is not None:
        body = _rows("v %.6f %.6f %.6f %.4f %.4f %.4f", np.concatenate([v, np.asarray(vertex_colors)[:, :3]], axis=1))
    else:
        body = _rows("v %.6f %.6f %.6f", v)
    body += _rows("vn %.5f %.5f %.5f", np.asarray(mesh.vertex_normals))
    faces = np.asarray(mesh.faces) + 1
    files: dict[str, Path] = {}
    if image is not None:
        header += f"mtllib {name}.mtl\n"
        body += _rows("vt %.6f %.6f", np.asarray(mesh.visual.uv)) + "usemtl material_0\n"
        body += _rows("f %d/%d/%d %d/%d/%d %d/%d/%d", np.repeat(faces, 3, axis=1))
        files["texture"] = write_bytes(directory / texture_name, encode_texture(image, texture_format, jpeg_quality))
        files["mtl"] = write_bytes(directory / f"{name}.mtl", MTL_TEMPLATE.format(obj=f"{name}.obj", texture=texture_name).encode())
    else:
        body += _rows("f %d//%d %d//%d %d//%d", np.repeat(faces, 2, axis=1))
    files["obj"] = write_bytes(directory / f"{name}.obj", (header + body).encode())
    return files


def write_glb(mesh: trimesh.Trimesh, directory: Path, name: str = "model") -> dict[str, Path]:
    """``name.glb``: a textured mesh's image embedded as the PBR base colour (metallic 0, roughness 1);
    a vertex-coloured mesh's colours as COLOR_0. Returns {"glb": path}."""
    glb = trimesh.exchange.gltf.export_glb(trimesh.Scene({name: mesh}), include_normals=True)
    return {"glb": write_bytes(Path(directory) / f"{name}.glb", glb)}


def write_json(directory: Path, info: dict[str, Any], name: str = "export.json") -> dict[str, Path]:
    """Export metadata (threshold, counts, world → file matrix…) as JSON. Returns {"json": path}."""
    return {"json": write_bytes(Path(directory) / name, (json.dumps(info, indent=2) + "\n").encode())}
