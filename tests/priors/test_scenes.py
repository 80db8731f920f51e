"""The prompt grammar and the procedural scenes (the embedded prior's world and ground truth)."""
import math

import pytest
import torch

from threestudio_like.data.cameras import make_cameras
from threestudio_like.priors.scenes import COLORS, FIT_RADIUS, parse_prompt


def cameras(azimuths, elevation=0.0, size=48, distance=2.5, fovy=40.0):
    n = len(azimuths)
    full = lambda v: torch.full((n,), float(v))  # noqa: E731
    return make_cameras(full(elevation), torch.tensor(azimuths, dtype=torch.float32), full(distance), full(fovy), size, size)


def part_bounds(shape):
    lo, hi = shape.bounds()
    return lo, hi


def test_simple_prompt_parses_to_primitives_colors_and_relation():
    scene = parse_prompt("A red ball on a blue box.")
    assert [o.noun for o in scene.objects] == ["sphere", "cube"]
    assert [o.color for o in scene.objects] == ["red", "blue"]
    assert scene.relations == ["on"]
    ball, box = scene.shapes
    assert [p.kind for p in ball.parts] == ["sphere"] and [p.kind for p in box.parts] == ["box"]
    assert ball.parts[0].color == COLORS["red"] and box.parts[0].color == COLORS["blue"]
    # the ball rests on the box's top face, centred over it
    (blo, bhi), (xlo, xhi) = part_bounds(ball), part_bounds(box)
    assert float(blo[2]) == pytest.approx(float(xhi[2]), abs=1e-5)
    assert torch.allclose(0.5 * (blo + bhi)[:2], 0.5 * (xlo + xhi)[:2], atol=1e-5)
    assert scene.key == "red sphere on blue cube"
    assert not scene.asymmetric


def test_under_next_to_sizes_and_synonyms():
    under = parse_prompt("the small grey cone under a large pink capsule")
    cone, capsule = under.shapes
    assert [o.size for o in under.objects] == ["small", "large"]
    assert under.objects[0].color == "gray"  # grey and gray are one color
    assert float(part_bounds(capsule)[0][2]) == pytest.approx(float(part_bounds(cone)[1][2]), abs=1e-5)
    # sizes scale the objects: the large capsule is wider than a same-layout small one would be
    beside = parse_prompt("a tiny green cube next to a huge yellow cube")
    small, big = beside.shapes
    (slo, shi), (blo, bhi) = part_bounds(small), part_bounds(big)
    assert float(shi[1]) < float(blo[1])  # first object on the left (−y), a gap between
    assert float(slo[2]) == pytest.approx(float(blo[2]), abs=1e-5)  # bottoms level
    assert float((bhi - blo)[0] / (shi - slo)[0]) == pytest.approx(1.7 / 0.5, rel=1e-4)
    assert parse_prompt("a donut").key == parse_prompt("a torus").key == "torus"
    assert parse_prompt("a purple pyramid and an orange cylinder").relations == ["next to"]


def test_scene_is_centred_and_fits_the_radius():
    for text in ("a red ball on a blue box", "a house", "a mug next to a chair", "a duck on a huge cube"):
        scene = parse_prompt(text)
        assert scene.radius == pytest.approx(FIT_RADIUS, rel=1e-4)
        points = scene.surface_points(2000, resolution=64)
        assert float(points.norm(dim=-1).max()) <= FIT_RADIUS + 0.02
        centre = 0.5 * (points.min(0).values + points.max(0).values)
        assert float(centre.abs().max()) < 0.03


def test_unknown_word_is_one_line_listing_the_vocabulary():
    with pytest.raises(ValueError) as error:
        parse_prompt("a red giraffe on a blue box")
    message = str(error.value)
    assert "\n" not in message and "'giraffe'" in message
    for word in ("sphere", "ball", "cube", "torus", "red", "grey", "small", "house", "mug", "next to", "under"):
        assert word in message
    for bad in ("", "a red", "a ball a box", "a red blue ball"):
        with pytest.raises(ValueError) as error:
            parse_prompt(bad)
        assert "\n" not in str(error.value)


def test_named_object_takes_a_color_on_its_body():
    plain, blue = parse_prompt("a house"), parse_prompt("a blue house")
    assert blue.shapes[0].parts[0].color == COLORS["blue"]  # the walls
    assert blue.shapes[0].parts[1].color == plain.shapes[0].parts[1].color  # the roof keeps its color
    assert blue.objects[0].color == "blue" and blue.asymmetric


@pytest.mark.parametrize("name", ["house", "mug", "chair", "duck", "snowman"])
def test_named_objects_are_front_back_asymmetric(name):
    scene = parse_prompt(f"a {name}")
    assert scene.asymmetric
    points = (torch.rand(20000, 3, generator=torch.Generator().manual_seed(0)) * 2 - 1) * FIT_RADIUS
    mirrored = points * torch.tensor([-1.0, 1.0, 1.0])  # front (+x) ↔ back (−x)
    # shape or color near the surface changes under the mirror (for a symmetric object it never does)
    near = scene.sdf(points).abs() < 0.05
    shape_differs = (scene.sdf(points) < 0) != (scene.sdf(mirrored) < 0)
    color_differs = (scene.albedo(points) - scene.albedo(mirrored)).abs().max(-1).values > 0.1
    assert float((near & (shape_differs | color_differs)).float().sum() / near.sum()) > 0.02
    tree = parse_prompt("a tree")
    assert not tree.asymmetric
    assert not bool(((tree.sdf(points) < 0) != (tree.sdf(mirrored) < 0)).any())


def test_front_and_back_renders_differ_where_the_objects_say():
    # the house's door and the mug's label face the front (+x): visible at azimuth 0 only
    for text, color in (("a house", (0.35, 0.2, 0.1)), ("a mug", COLORS["red"])):
        out = parse_prompt(text).render(cameras([0.0, 180.0], elevation=10.0, size=64))
        target = torch.tensor(color)
        # shaded albedo: compare hue by normalising the brightness away
        rgb = out["rgb"] / out["rgb"].sum(-1, keepdim=True).clamp(min=1e-6)
        close = ((rgb - target / target.sum()).abs().max(-1).values < 0.03) & (out["mask"][..., 0] > 0.99)
        front, back = int(close[0].sum()), int(close[1].sum())
        assert front > 20 and back < front / 5, (text, front, back)
    # a sphere's silhouette is the same from both sides
    ball = parse_prompt("a ball").render(cameras([0.0, 180.0], size=48))
    assert torch.allclose(ball["mask"][0], ball["mask"][1].flip(1), atol=0.3)


def test_sphere_mask_area_matches_the_projected_disk_and_depth_is_ray_distance():
    size, distance, fovy = 64, 2.5, 40.0
    out = parse_prompt("a ball").render(cameras([0.0, 90.0], size=size, distance=distance, fovy=fovy))
    focal = 0.5 * size / math.tan(math.radians(fovy) / 2)
    # a sphere seen from its centre's direction projects to a disk of radius f·tan(asin(r/d))
    disk_radius = focal * math.tan(math.asin(FIT_RADIUS / distance))
    area = out["mask"].sum(dim=(1, 2, 3))
    assert torch.allclose(area, torch.full_like(area, math.pi * disk_radius**2), rtol=0.02)
    # soft edges: some pixels are partly covered
    partial = ((out["mask"] > 0.05) & (out["mask"] < 0.95)).sum()
    assert partial > 0
    # depth at the central pixels ≈ d − r (distance along the ray), 0 outside
    centre = out["depth"][:, size // 2 - 1: size // 2 + 1, size // 2 - 1: size // 2 + 1]
    assert torch.allclose(centre, torch.full_like(centre, distance - FIT_RADIUS), atol=5e-3)
    assert float(out["depth"][:, 0, 0].abs().max()) == 0.0
    # normals at the centre point back at the camera; background is white
    assert float(out["normal"][0, size // 2, size // 2, 0]) > 0.99
    assert torch.all(out["rgb"][:, 0, 0] == 1.0)


def test_surface_points_lie_on_the_surface():
    scene = parse_prompt("a red ball on a blue box")
    points = scene.surface_points(3000, resolution=96)
    assert points.shape == (3000, 3)
    assert float(scene.sdf(points).abs().mean()) < 3e-3
    ball = parse_prompt("a ball").surface_points(2000, resolution=96)
    assert float((ball.norm(dim=-1) - FIT_RADIUS).abs().max()) < 0.01
    # uniform by area: the hemispheres hold about half the points each
    assert abs(float((ball[:, 2] > 0).float().mean()) - 0.5) < 0.05
