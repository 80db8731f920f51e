"""A triangle mesh that may carry autograd, and the mesh regularisers of the refinement stages.

Faces are wound counter-clockwise seen from outside, so ``cross(v1 − v0, v2 − v0)`` points out.
Topology (edges, face adjacency, vertex neighbours) depends on ``t_pos_idx`` only and is computed
once per mesh; positions may change between calls (a mesh is rebuilt for every new surface anyway):
the face normals are kept only while ``v_pos`` is the same tensor.

The regularisers follow threestudio's names (``lambda_normal_consistency``,
``lambda_laplacian_smoothness``):
- normal consistency: mean over pairs of faces sharing an edge of 1 − cos(n_i, n_j);
- Laplacian smoothness: mean over vertices of ‖v − mean of its edge neighbours‖² (the uniform
  Laplacian; vertices without neighbours are left out).

On the CPU the topology (one pass instead of sorts and scans), the vertex normals and both terms run
compiled (kernels/csrc/mesh_topology.cpp, mesh_terms.cpp) unless the mesh's ``cpu_kernel`` is false:
the same topology arrays, values and gradients to float rounding.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
import trimesh
from torch import Tensor

from threestudio_like.kernels import mesh_terms as compiled
from threestudio_like.kernels import use_kernels
from threestudio_like.kernels.rasterize import mesh_topology


def _edge_keys(edges: Tensor, n_vertices: int) -> Tensor:
    """edges [E,2] with edges[:,0] <= edges[:,1] → one integer key per undirected edge [E]."""
    return edges[:, 0] * n_vertices + edges[:, 1]


@dataclass
class Mesh:
    """A triangle mesh whose vertex positions may carry autograd."""

    v_pos: Tensor  # [V,3] float, world frame
    t_pos_idx: Tensor  # [F,3] long, counter-clockwise seen from outside (outward face normals)
    # the topology on the CPU: auto (one compiled pass, kernels/csrc/mesh_topology.cpp, when it builds) | true | false
    cpu_kernel: Any = field(default="auto", repr=False, compare=False)
    _topology: dict[str, Tensor] = field(default_factory=dict, init=False, repr=False, compare=False)

    @classmethod
    def from_trimesh(cls, mesh: trimesh.Trimesh, device: torch.device | str = "cpu") -> "Mesh":
        return cls(
            torch.as_tensor(np.asarray(mesh.vertices), dtype=torch.float32, device=device),
            torch.as_tensor(np.asarray(mesh.faces), dtype=torch.long, device=device),
        )

    @property
    def n_vertices(self) -> int:
        return int(self.v_pos.shape[0])

    @property
    def n_faces(self) -> int:
        return int(self.t_pos_idx.shape[0])

    # --- geometry (recomputed: follows v_pos and its autograd) -----------------------------------
    def face_areas_normals(self) -> Tensor:
        """[F,3] cross(v1 − v0, v2 − v0): outward, length twice the face's area (computed once per
        v_pos tensor: the rasterizer's vertex normals and the normal-consistency term share it)."""
        cached, grad = self._topology.get("face_areas_normals"), torch.is_grad_enabled()
        if cached is not None and cached[0] is self.v_pos and cached[2] == grad:  # no_grad values carry no graph
            return cached[1]
        corners = self.v_pos.index_select(0, self.t_pos_idx.reshape(-1)).view(-1, 3, 3)  # index_select: faster on the CPU
        v0, v1, v2 = corners.unbind(1)
        value = torch.cross(v1 - v0, v2 - v0, dim=-1)
        self._topology["face_areas_normals"] = (self.v_pos, value, grad)
        return value

    def face_normals(self) -> Tensor:
        """[F,3] unit outward normals (zero for a degenerate face)."""
        return F.normalize(self.face_areas_normals(), dim=-1)

    def vertex_normals(self) -> Tensor:
        """[V,3] unit normals, the area-weighted mean of the normals of the faces around each vertex."""
        kept = self._topology.get("vertex_normals")
        if kept is not None and kept[0] is self.v_pos and not (torch.is_grad_enabled() and self.v_pos.requires_grad):
            return kept[1]  # a fixed mesh (the texture stage): its normals do not change
        if use_kernels(self.cpu_kernel, self.v_pos) and self.v_pos.dtype in (torch.float32, torch.float64):
            value = compiled.vertex_normals(self.v_pos, self.t_pos_idx)
            if not self.v_pos.requires_grad:
                self._topology["vertex_normals"] = (self.v_pos, value)
            return value
        weighted = self.face_areas_normals()
        sums = torch.zeros_like(self.v_pos)
        for corner in range(3):
            sums = sums.index_add(0, self.t_pos_idx[:, corner], weighted)
        return F.normalize(sums, dim=-1)

    # --- topology (cached) ----------------------------------------------------------------------
    def _face_edges(self) -> Tensor:
        """[F·3,2] the three edges of every face (face-major), each with its smaller index first."""
        tri = self.t_pos_idx
        pairs = torch.stack([tri[:, [0, 1]], tri[:, [1, 2]], tri[:, [2, 0]]], dim=1).reshape(-1, 2)
        return torch.stack([pairs.min(-1).values, pairs.max(-1).values], dim=-1)

    def _compiled_topology(self) -> bool:
        """Fill every topology entry in one compiled pass, when the kernels are in use (→ True)."""
        if not use_kernels(self.cpu_kernel, self.t_pos_idx) or self.t_pos_idx.dtype != torch.long:
            return False
        keys, order, edges, pairs, degree, opposite = mesh_topology(self.t_pos_idx, self.n_vertices)
        self._topology.update(sorted_keys=(keys, order), edges=edges, adjacent_faces=pairs, degree=degree, opposite=opposite)
        return True

    def opposite_vertices(self) -> Tensor:
        """[F,3] long: the vertex across edge i of each face (the edge facing its vertex i) in the
        neighbouring face, −1 on open edges (antialiasing's silhouette test)."""
        if "opposite" not in self._topology and not self._compiled_topology():
            from threestudio_like.renderers.antialias import opposite_vertices

            self._topology["opposite"] = opposite_vertices(self.t_pos_idx)
        return self._topology["opposite"]

    def _sorted_edge_keys(self) -> tuple[Tensor, Tensor]:
        """(the face edges' keys sorted [F·3], the stable order that sorts them [F·3]): one sort that
        both ``edges`` and ``adjacent_faces`` read."""
        if "sorted_keys" not in self._topology and not self._compiled_topology():
            keys = _edge_keys(self._face_edges(), max(self.n_vertices, 1))
            order = torch.argsort(keys, stable=True)
            self._topology["sorted_keys"] = (keys[order], order)
        return self._topology["sorted_keys"]

    def edges(self) -> Tensor:
        """[E,2] long: the unique undirected edges, smaller index first, sorted."""
        if "edges" not in self._topology and not self._compiled_topology():
            n = max(self.n_vertices, 1)
            sorted_keys, _ = self._sorted_edge_keys()
            first = torch.ones_like(sorted_keys, dtype=torch.bool)
            first[1:] = sorted_keys[1:] != sorted_keys[:-1]
            keys = sorted_keys[first]  # = torch.unique of the keys, without a second sort
            self._topology["edges"] = torch.stack([keys // n, keys % n], dim=-1)
        return self._topology["edges"]

    def adjacent_faces(self) -> Tensor:
        """[P,2] long: pairs of faces that share an edge.

        A manifold edge gives one pair; an edge shared by k > 2 faces gives k − 1 pairs (a chain).
        """
        if "adjacent_faces" not in self._topology and not self._compiled_topology():
            sorted_keys, order = self._sorted_edge_keys()
            same = sorted_keys[1:] == sorted_keys[:-1]
            face_of = order // 3
            self._topology["adjacent_faces"] = torch.stack([face_of[:-1][same], face_of[1:][same]], dim=-1)
        return self._topology["adjacent_faces"]

    def neighbour_counts(self) -> Tensor:
        """[V] long: number of distinct edge neighbours of each vertex."""
        if "degree" not in self._topology and not self._compiled_topology():
            e = self.edges().reshape(-1)
            self._topology["degree"] = torch.bincount(e, minlength=self.n_vertices)
        return self._topology["degree"]

    # --- conversion -----------------------------------------------------------------------------
    def to_trimesh(self, vertex_colors: Optional[np.ndarray] = None, **kwargs: Any) -> trimesh.Trimesh:
        """A detached copy as a trimesh (no merging or reordering of vertices)."""
        return trimesh.Trimesh(
            vertices=self.v_pos.detach().cpu().numpy().astype(np.float64),
            faces=self.t_pos_idx.detach().cpu().numpy(),
            vertex_colors=vertex_colors,
            process=False,
            **kwargs,
        )


def uniform_laplacian(mesh: Mesh) -> Tensor:
    """[V,3]: v − mean of its edge neighbours (zero for a vertex without neighbours)."""
    edges = mesh.edges()
    sums = torch.zeros_like(mesh.v_pos)
    sums = sums.index_add(0, edges[:, 0], mesh.v_pos[edges[:, 1]])
    sums = sums.index_add(0, edges[:, 1], mesh.v_pos[edges[:, 0]])
    degree = mesh.neighbour_counts()
    mean = sums / degree.clamp_min(1).unsqueeze(-1).to(sums.dtype)
    return torch.where((degree > 0).unsqueeze(-1), mesh.v_pos - mean, torch.zeros_like(mean))


def laplacian_smoothness(mesh: Mesh) -> Tensor:
    """Scalar: mean over vertices with neighbours of ‖v − mean(neighbours)‖²."""
    connected = mesh.neighbour_counts() > 0
    if not bool(connected.any()):
        return mesh.v_pos.sum() * 0.0
    if use_kernels(mesh.cpu_kernel, mesh.v_pos) and mesh.v_pos.dtype in (torch.float32, torch.float64):
        return compiled.laplacian_smoothness(mesh.v_pos, mesh.edges(), mesh.neighbour_counts())
    return uniform_laplacian(mesh)[connected].square().sum(-1).mean()


def normal_consistency(mesh: Mesh) -> Tensor:
    """Scalar: mean over pairs of faces sharing an edge of 1 − cos(n_i, n_j) (0 for a flat mesh)."""
    pairs = mesh.adjacent_faces()
    if pairs.shape[0] == 0:
        return mesh.v_pos.sum() * 0.0
    if use_kernels(mesh.cpu_kernel, mesh.v_pos) and mesh.v_pos.dtype in (torch.float32, torch.float64):
        return compiled.normal_consistency(mesh.v_pos, mesh.t_pos_idx, pairs)
    normals = mesh.face_normals()
    cos = (normals[pairs[:, 0]] * normals[pairs[:, 1]]).sum(-1)
    return (1.0 - cos).mean()


def face_components(mesh: Mesh) -> Tensor:
    """[F] long: the connected component of each face (faces connect through shared vertices)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if mesh.n_faces == 0:
        return torch.zeros(0, dtype=torch.long, device=mesh.t_pos_idx.device)
    edges = mesh.edges().cpu().numpy()
    n = mesh.n_vertices
    graph = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    return torch.as_tensor(labels, device=mesh.t_pos_idx.device)[mesh.t_pos_idx[:, 0]].long()


def keep_faces(mesh: Mesh, keep: Tensor) -> Mesh:
    """The faces where keep [F] (bool) is set, with unreferenced vertices dropped (autograd kept)."""
    faces = mesh.t_pos_idx[keep]
    used, remapped = torch.unique(faces, return_inverse=True)
    return Mesh(mesh.v_pos[used], remapped.view(-1, 3), mesh.cpu_kernel)


def remove_small_components(mesh: Mesh, min_faces: float) -> Mesh:
    """Drop the components with fewer than ``min_faces`` faces (below 1: that fraction of all faces)."""
    if mesh.n_faces == 0:
        return mesh
    threshold = min_faces * mesh.n_faces if min_faces < 1 else min_faces
    labels = face_components(mesh)
    sizes = torch.bincount(labels)
    keep = (sizes[labels] >= threshold) | (labels == sizes.argmax())  # never drop the largest
    return mesh if bool(keep.all()) else keep_faces(mesh, keep)
