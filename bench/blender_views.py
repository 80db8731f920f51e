"""Runs inside Blender (``blender -b -P bench/blender_views.py -- model.glb out_dir size``): imports a GLB
with Blender's own glTF importer, renders it from six sides with Cycles on the CPU and writes
``<out_dir>/<view>.png`` plus ``<out_dir>/blender.json`` (what Blender made of the file: objects,
vertices, faces, loose parts, whether the material samples an image texture).

This file uses only Blender's Python (bpy, mathutils); it never imports the project.
"""
import json
import math
import sys
from pathlib import Path

import bmesh
import bpy
import numpy
from mathutils import Vector

if not hasattr(numpy, "bool"):  # Blender 3.4's glTF importer still names np.bool, gone since NumPy 1.24
    numpy.bool = bool

# (name, azimuth°, elevation°): the same six as bench/view_asset.py's model-viewer orbits
VIEWS = (("front", 0, 15), ("side", 90, 15), ("back", 180, 15), ("other-side", 270, 15), ("top", 30, 80), ("below", 30, -60))


def clear_scene() -> None:
    bpy.ops.wm.read_factory_settings(use_empty=True)


def import_glb(path: Path) -> list:
    bpy.ops.import_scene.gltf(filepath=str(path))
    return [o for o in bpy.context.scene.objects if o.type == "MESH"]


def loose_parts(obj) -> int:
    """Connected pieces of a mesh object, by shared vertices after merging coincident ones."""
    bm = bmesh.new()
    bm.from_mesh(obj.data)
    bmesh.ops.remove_doubles(bm, verts=bm.verts, dist=1e-6)
    seen, parts = set(), 0
    for start in bm.verts:
        if start.index in seen:
            continue
        parts += 1
        stack = [start]
        seen.add(start.index)
        while stack:
            vert = stack.pop()
            for edge in vert.link_edges:
                other = edge.other_vert(vert)
                if other.index not in seen:
                    seen.add(other.index)
                    stack.append(other)
    bm.free()
    return parts


def has_image_texture(obj) -> bool:
    for slot in obj.material_slots:
        material = slot.material
        if material and material.use_nodes and any(n.type == "TEX_IMAGE" and n.image for n in material.node_tree.nodes):
            return True
    return False


def bounds(objects) -> tuple[Vector, float]:
    corners = [o.matrix_world @ Vector(c) for o in objects for c in o.bound_box]
    lo = Vector([min(c[i] for c in corners) for i in range(3)])
    hi = Vector([max(c[i] for c in corners) for i in range(3)])
    return (lo + hi) / 2, (hi - lo).length / 2


def setup_render(size: int) -> None:
    scene = bpy.context.scene
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = 16
    scene.cycles.use_denoising = False
    scene.render.resolution_x = scene.render.resolution_y = size
    scene.render.film_transparent = False
    world = bpy.data.worlds.new("world")
    world.use_nodes = True
    world.node_tree.nodes["Background"].inputs[0].default_value = (0.85, 0.85, 0.85, 1.0)
    world.node_tree.nodes["Background"].inputs[1].default_value = 1.0
    scene.world = world


def add_camera_and_light(center: Vector, radius: float):
    camera = bpy.data.objects.new("camera", bpy.data.cameras.new("camera"))
    camera.data.lens_unit = "FOV"
    camera.data.angle = math.radians(40)
    bpy.context.scene.collection.objects.link(camera)
    bpy.context.scene.camera = camera
    sun = bpy.data.objects.new("sun", bpy.data.lights.new("sun", type="SUN"))
    sun.data.energy = 2.0
    bpy.context.scene.collection.objects.link(sun)
    return camera, sun, 1.05 * radius / math.tan(math.radians(20))


def place(obj, center: Vector, distance: float, azimuth: float, elevation: float) -> None:
    """Put obj on an orbit around center (z up; azimuth 0 puts it on −y) and aim it at center."""
    a, e = math.radians(azimuth), math.radians(elevation)
    obj.location = center + distance * Vector((math.sin(a) * math.cos(e), -math.cos(a) * math.cos(e), math.sin(e)))
    obj.rotation_euler = (center - obj.location).to_track_quat("-Z", "Y").to_euler()


def main(argv: list[str]) -> None:
    glb, out, size = Path(argv[0]), Path(argv[1]), int(argv[2]) if len(argv) > 2 else 256
    out.mkdir(parents=True, exist_ok=True)
    clear_scene()
    meshes = import_glb(glb)
    report = {"objects": len(meshes), "vertices": sum(len(o.data.vertices) for o in meshes),
              "faces": sum(len(o.data.polygons) for o in meshes), "loose_parts": sum(loose_parts(o) for o in meshes),
              "image_textured": all(has_image_texture(o) for o in meshes) if meshes else False, "views": []}
    if meshes:
        setup_render(size)
        center, radius = bounds(meshes)
        camera, sun, distance = add_camera_and_light(center, radius)
        for name, azimuth, elevation in VIEWS:
            place(camera, center, distance, azimuth, elevation)
            place(sun, center, distance, azimuth + 30, max(elevation, 0) + 30)
            bpy.context.scene.render.filepath = str(out / f"{name}.png")
            bpy.ops.render.render(write_still=True)
            report["views"].append(name)
    (out / "blender.json").write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main(sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else [])
