"""DMTet (Shen et al. 2021; threestudio's ``tetrahedra-sdf-grid``): a deformable tetrahedral SDF grid.

The grid is a cube lattice of ``isosurface_resolution`` cells per axis, cut into Kuhn tetrahedra
(``geometry/marching_tets.py``); it covers [−radius, radius]³, or after ``create_from`` the coarse
surface's bounding cube plus a margin, so that its cells are spent on the object. Each lattice vertex
holds a signed value ``sdf`` (positive INSIDE, in units of one grid cell, clamped to ±``sdf_clamp``) and,
with ``isosurface_deformable_grid``, an offset ``deformation_scale`` · cell · tanh(raw) per axis.
The default 0.2 cell per axis moves a vertex at most 0.35 cell, under half the smallest altitude of
a Kuhn tetrahedron (0.71 cell), so tetrahedra do not flip. Marching tetrahedra gives the surface,
differentiable in sdf and deformation. The lattice's outer layer always counts as outside, so the
surface is closed.

The colour field is the NeRF's: the same hash grid and bias-free MLP classes, queried at world points
mapped from [−radius, radius]³ to [0,1]³, three albedo logits out. ``create_from`` copies it from an
``implicit-volume`` (its density output row dropped) and fits it to ``other.color()`` otherwise (the
Gaussians), see :mod:`threestudio_like.geometry.tetrahedra_init`.

CPU default resolution 32 (over the fitted box: about 30 cells across the demo's object): one
surface step (marching tetrahedra + both regularisers + backward) costs 46 ms there against
130–175 ms at 48 and 160–260 ms at 64 on the shared 2-core machine (docs/BENCHMARKS.md, "Marching tetrahedra"),
which leaves a few-hundred-step refine inside a minute room for the rasterizer and the prior.
Stable Diffusion configs use threestudio's 128.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import Tensor, nn

from threestudio_like.data.cameras import RandomCameraConfig
from threestudio_like.geometry import marching_tets as mt
from threestudio_like.geometry.base import Geometry
from threestudio_like.geometry.hashgrid import HashGrid, HashGridConfig
from threestudio_like.geometry.mesh import Mesh, remove_small_components
from threestudio_like.geometry.nerf import make_mlp
from threestudio_like.geometry.tetrahedra_init import initialise_from
from threestudio_like.kernels import kernel_choice, use_kernels
from threestudio_like.registry import register
from threestudio_like.utils.checks import check_learning_rates

log = logging.getLogger(__name__)

# density() = DENSITY_SCALE · sigmoid(DENSITY_SHARPNESS · sdf): the export's level DENSITY_SCALE / 2 is
# the surface sdf = 0; at the clamped sdf −2 the density is 0.03 (no fog), and 0 outside the lattice
DENSITY_SCALE, DENSITY_SHARPNESS = 100.0, 4.0


@dataclass
class TetrahedraSDFGridConfig:
    radius: float = 1.0
    isosurface_resolution: int = 32  # lattice cells per axis (CPU default, see above; threestudio's SD configs: 128)
    isosurface_deformable_grid: bool = True
    deformation_scale: float = 0.2  # largest offset per axis, in cells (tanh-bounded)
    isosurface_remove_outliers: bool = True
    isosurface_outlier_n_faces_threshold: float = 0.01  # below 1: fraction of all faces; else a face count
    fit_grid_to_surface: bool = True  # create_from: the lattice covers the coarse surface's bounding cube
    level_from_silhouettes: bool = True  # create_from Gaussians: the level their own renders show (see tetrahedra_level.py)
    grid_margin: float = 0.1  # ... enlarged by this fraction of its side on every side
    # create_from's cleaning of the stage-1 occupancy (geometry/morphology.py, tetrahedra_init.py):
    convert_closing_radius: float = 0.0  # world units: joins parts closer than 2×, fills cracks narrower; 0 = off
    # fill enclosed empty regions (a field hollow inside its surface: an inner shell no view sees)
    convert_fill_cavities: bool = True
    # drop inside parts with fewer lattice vertices than this fraction of the largest part's (floaters); 0 = off
    convert_min_part_fraction: float = 0.01
    convert_supersample: int = 2  # sampling voxels per lattice cell while cleaning
    # cap the surface no training view sees by the plane through its seen rim (tetrahedra_cap.py): needs
    # the run's camera range (create_from's ``views``)
    convert_cap_unseen: bool = False
    # ... where the surface's normal is farther than this from every camera of that range (degrees)
    convert_cap_angle: float = 60.0
    sdf_clamp: float = 2.0  # |sdf| limit in cells (every crossing edge is at most √3 cells long)
    init_radius: float = 0.5  # a fresh grid holds a sphere of this radius
    geometry_only: bool = False  # the colour field is not trained (nor differentiated: renders' rgb give no gradient)
    fix_geometry: bool = False  # the mesh is extracted once and cached; sdf and deformation are frozen
    pos_encoding: HashGridConfig = field(default_factory=HashGridConfig)
    mlp_neurons: int = 64
    mlp_hidden_layers: int = 1
    lr_sdf: float = 0.01  # cells per Adam step, roughly
    lr_deformation: float = 0.01
    lr_encoding: float = 0.01
    lr_network: float = 0.001
    # hash levels the colour field uses, coarsest first, whatever pos_encoding's schedule or a copied
    # field's levels say (0 = all): finer levels than a training render resolves on the object only
    # add dots (configs/refine-texture.yaml)
    color_levels: int = 0
    color_fit_steps: int = 300  # create_from a geometry without a NeRF colour field: fit this long
    color_fit_points: int = 16384
    # marching tetrahedra's topology on the CPU: auto (compiled, kernels/csrc/marching_tets.cpp, when it
    # builds) | true | false (torch); the same mesh either way
    cpu_kernel: Any = "auto"

    def __post_init__(self) -> None:
        check_learning_rates(self, "lr_sdf", "lr_deformation", "lr_encoding", "lr_network")
        self.cpu_kernel = kernel_choice(self.cpu_kernel, "geometry.cpu_kernel")
        if not 4 <= self.isosurface_resolution <= 512:
            raise ValueError(f"isosurface_resolution={self.isosurface_resolution} must be between 4 and 512")
        if self.radius <= 0 or not 0 < self.init_radius < self.radius:
            raise ValueError(f"radius={self.radius} must be > 0 and init_radius={self.init_radius} in (0, radius)")
        if not 0.0 <= self.deformation_scale <= 0.5:
            raise ValueError(f"deformation_scale={self.deformation_scale} must lie in [0, 0.5] (cells)")
        if self.sdf_clamp < 2.0:
            raise ValueError(f"sdf_clamp={self.sdf_clamp} must be >= 2 (cells) so every crossing edge keeps its zero")
        if self.isosurface_outlier_n_faces_threshold < 0 or self.grid_margin < 0:
            raise ValueError(
                f"isosurface_outlier_n_faces_threshold={self.isosurface_outlier_n_faces_threshold} and "
                f"grid_margin={self.grid_margin} must be >= 0"
            )
        if not 0.0 <= self.convert_closing_radius < self.radius:
            raise ValueError(f"convert_closing_radius={self.convert_closing_radius} must lie in [0, radius={self.radius}) "
                             "(world units; 0 = no closing)")
        if not 0.0 <= self.convert_min_part_fraction <= 1.0:
            raise ValueError(f"convert_min_part_fraction={self.convert_min_part_fraction} must lie in [0, 1] "
                             "(of the largest part's volume; 0 = keep every part)")
        if not 0.0 < self.convert_cap_angle < 90.0:
            raise ValueError(f"convert_cap_angle={self.convert_cap_angle} must lie in (0, 90) (degrees)")
        if not 1 <= self.convert_supersample <= 4:
            raise ValueError(f"convert_supersample={self.convert_supersample} must be an integer from 1 to 4")
        if not 0 <= self.color_levels <= self.pos_encoding.n_levels:
            raise ValueError(f"color_levels={self.color_levels} must lie in [0, pos_encoding.n_levels="
                             f"{self.pos_encoding.n_levels}] (0 = every level)")
        if self.mlp_neurons < 1 or self.mlp_hidden_layers < 0 or self.color_fit_steps < 0 or self.color_fit_points < 1:
            raise ValueError(
                f"mlp_neurons={self.mlp_neurons}, color_fit_points={self.color_fit_points} must be >= 1 and "
                f"mlp_hidden_layers={self.mlp_hidden_layers}, color_fit_steps={self.color_fit_steps} >= 0"
            )


@register("geometry", "tetrahedra-sdf-grid")
class TetrahedraSDFGrid(Geometry):
    Config = TetrahedraSDFGridConfig
    albedo_rows = slice(0, 3)  # the colour network outputs albedo logits only

    def __init__(self, cfg: TetrahedraSDFGridConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.radius = float(cfg.radius)
        self.resolution = int(cfg.isosurface_resolution)
        n_vertices = (self.resolution + 1) ** 3
        # the lattice box: a cube, centre and half side (persistent: create_from may fit it)
        self.register_buffer("grid_center", torch.zeros(3))
        self.register_buffer("grid_half", torch.tensor(self.radius))
        self.register_buffer("on_boundary", mt.boundary_mask(self.resolution), persistent=False)
        self.sdf = nn.Parameter(torch.zeros(n_vertices))
        self.deformation = nn.Parameter(torch.zeros(n_vertices, 3)) if cfg.isosurface_deformable_grid else None
        self.encoding = HashGrid(cfg.pos_encoding)
        self.network = make_mlp(self.encoding.output_dim, 3, cfg.mlp_neurons, cfg.mlp_hidden_layers)
        # hash-grid levels inherited from a trained field stay on whatever this stage's schedule says
        self.register_buffer("inherited_levels", torch.tensor(0))
        self._cached_mesh: Optional[Mesh] = None
        self._cached_state: Optional[list[Tensor]] = None  # surface_tensors() of the cached mesh (None: fix_geometry's)
        self.source_level: Optional[float] = None  # the density level create_from converted at
        with torch.no_grad():
            points = self.lattice_points(torch.arange(n_vertices))
            self.set_sdf_cells((cfg.init_radius - points.norm(dim=-1)) / self.cell)
        if cfg.fix_geometry:
            for p in self.geometry_parameters():
                p.requires_grad_(False)

    # --- the lattice --------------------------------------------------------------------------
    @property
    def cell(self) -> float:
        return float(2.0 * self.grid_half / self.resolution)

    @property
    def origin(self) -> Tensor:
        return self.grid_center - self.grid_half

    def lattice_points(self, vertex_ids: Tensor) -> Tensor:
        """Undeformed world positions [N,3] of flat vertex ids [N]."""
        return mt.lattice_points(vertex_ids.to(self.grid_center.device), self.resolution, self.origin, self.cell)

    def deformed_points(self, vertex_ids: Tensor) -> Tensor:
        """World positions [N,3] of vertex ids [N], deformation included (autograd to ``deformation``)."""
        points = self.lattice_points(vertex_ids)
        if self.deformation is None:
            return points
        # index_select: on the CPU much cheaper than advanced indexing, and so is its backward
        offset = torch.tanh(self.deformation.index_select(0, vertex_ids)) * (self.cfg.deformation_scale * self.cell)
        return points + offset

    def set_lattice_box(self, center: Tensor, half: float) -> None:
        self.grid_center.copy_(center)
        self.grid_half.fill_(half)
        self._cached_mesh = None

    def set_sdf_cells(self, values: Tensor) -> None:
        """Set sdf [(R+1)³] (cells, positive inside), clamped; the outer layer is forced outside."""
        limit = self.cfg.sdf_clamp
        values = values.clamp(-limit, limit)
        values = torch.where(self.on_boundary, values.clamp(max=-0.5), values)
        with torch.no_grad():
            self.sdf.copy_(values)
        self._cached_mesh = None

    def effective_sdf(self) -> Tensor:
        """sdf [(R+1)³] as marching sees it: the outer layer at most −0.5 (outside, so surfaces close)."""
        return torch.where(self.on_boundary, self.sdf.clamp(max=-0.5), self.sdf)

    # --- the surface --------------------------------------------------------------------------
    def extract(self) -> Mesh:
        """Marching tetrahedra of the current sdf and deformation, outliers removed (with autograd)."""
        sdf, remove = self.effective_sdf(), self.cfg.isosurface_remove_outliers
        if use_kernels(self.cfg.cpu_kernel, sdf):  # topology and outlier removal in one compiled pass
            min_faces = self.cfg.isosurface_outlier_n_faces_threshold if remove else None
            return Mesh(*mt.marching_tetrahedra(self.deformed_points, sdf, self.resolution, True, min_faces), self.cfg.cpu_kernel)
        mesh = Mesh(*mt.marching_tetrahedra(self.deformed_points, sdf, self.resolution), self.cfg.cpu_kernel)
        if remove:
            mesh = remove_small_components(mesh, self.cfg.isosurface_outlier_n_faces_threshold)
        return mesh

    def isosurface(self) -> Mesh:
        """The surface as a Mesh: differentiable in sdf and deformation, or cached when fix_geometry.
        Without autograd (validation, the turntable, export, measures) the mesh is also kept while
        sdf, deformation and the lattice box hold the values it was extracted from."""
        if not self.cfg.fix_geometry and torch.is_grad_enabled():
            return self.extract()
        stale = self._cached_mesh is None or self._cached_mesh.v_pos.device != self.sdf.device
        if stale or not (self.cfg.fix_geometry or self.surface_unchanged()):
            with torch.no_grad():
                self._cached_mesh = self.extract()
            self._cached_state = None if self.cfg.fix_geometry else [t.detach().clone() for t in self.surface_tensors()]
        return self._cached_mesh

    def surface_tensors(self) -> list[Tensor]:
        """What the extracted mesh depends on."""
        return [*self.geometry_parameters(), self.grid_center, self.grid_half]

    def surface_unchanged(self) -> bool:
        """Whether surface_tensors() still hold the cached mesh's values (compared by value: the fused
        optimizers update in place without bumping version counters)."""
        kept = self._cached_state
        current = self.surface_tensors()
        return kept is not None and len(kept) == len(current) and all(torch.equal(a, b) for a, b in zip(kept, current))

    # --- fields -------------------------------------------------------------------------------
    def color_logits(self, points: Tensor) -> Tensor:
        """points [N,3] (world) → albedo logits [N,3] from the hash grid + MLP (the NeRF's mapping)."""
        return self.network(self.encoding((points / self.radius + 1.0) * 0.5))

    def color(self, points: Tensor) -> Tensor:
        """Albedo [N,3] at points [N,3]. With ``geometry_only`` the field is frozen and the stage scores
        normal renders, so no gradient may pass through it: it is evaluated without autograd (the
        geometry stage's backward through the hash grid and MLP carried only zeros)."""
        if self.cfg.geometry_only:
            with torch.no_grad():
                return torch.sigmoid(self.color_logits(points))
        return torch.sigmoid(self.color_logits(points))

    def sdf_at(self, points: Tensor, outside: Optional[float] = None) -> Tensor:
        """points [N,3] → sdf [N] (cells), linear in each tetrahedron of the undeformed lattice;
        ``outside`` (default −sdf_clamp) beyond the lattice box.

        Deformation is left out here, an error of at most ``deformation_scale`` cells per axis.
        """
        outside = -self.cfg.sdf_clamp if outside is None else outside
        return mt.piecewise_linear(self.effective_sdf(), points.to(self.sdf.device), self.resolution,
                                   self.origin, self.cell, outside=outside)

    def density(self, points: Tensor) -> Tensor:
        """points [N,3] → DENSITY_SCALE · sigmoid(DENSITY_SHARPNESS · sdf) [N]: the level set at half scale."""
        return DENSITY_SCALE * torch.sigmoid(DENSITY_SHARPNESS * self.sdf_at(points, outside=float("-inf")))

    def isosurface_threshold(self) -> float:
        return DENSITY_SCALE / 2.0

    # --- training -----------------------------------------------------------------------------
    def geometry_parameters(self) -> list[nn.Parameter]:
        return [self.sdf] + ([self.deformation] if self.deformation is not None else [])

    def parameter_groups(self) -> list[dict[str, Any]]:
        cfg, groups = self.cfg, []
        if not cfg.fix_geometry:
            groups.append({"params": [self.sdf], "lr": cfg.lr_sdf, "name": "sdf"})
            if self.deformation is not None:
                groups.append({"params": [self.deformation], "lr": cfg.lr_deformation, "name": "deformation"})
        if not cfg.geometry_only:
            groups.append({"params": list(self.encoding.parameters()), "lr": cfg.lr_encoding, "name": "encoding"})
            groups.append({"params": list(self.network.parameters()), "lr": cfg.lr_network, "name": "network"})
        return groups

    def update_step(self, step: int, max_steps: int) -> None:
        self.encoding.update_step(step)
        inherited = min(int(self.inherited_levels), self.cfg.pos_encoding.n_levels)
        active = max(self.encoding.active_levels, inherited)
        self.encoding.active_levels = min(active, self.cfg.color_levels) if self.cfg.color_levels else active

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """A checkpoint of another resolution is one clear error; a loaded grid drops the cached mesh."""
        incoming = state_dict.get("sdf")
        if incoming is not None and incoming.shape != self.sdf.shape:
            resolution = round(incoming.shape[0] ** (1 / 3)) - 1
            raise ValueError(
                f"checkpoint tetrahedral grid has resolution {resolution}, this geometry {self.resolution}; "
                f"set system.geometry.isosurface_resolution={resolution}"
            )
        self._cached_mesh = None
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    @classmethod
    def create_from(cls, other: Geometry, cfg: TetrahedraSDFGridConfig, copy_net: bool = True,
                    views: Optional[RandomCameraConfig] = None) -> "TetrahedraSDFGrid":
        """A grid whose surface is ``other``'s export isosurface; the colour copied or fitted (see module
        doc). ``views``: the training camera range, which ``convert_cap_unseen`` needs."""
        instance = cls(cfg)
        initialise_from(instance, other, copy_net, views)
        return instance
