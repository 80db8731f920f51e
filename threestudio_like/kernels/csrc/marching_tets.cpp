// Marching tetrahedra's topology (threestudio_like/geometry/marching_tets.py) in one pass: from the
// lattice's inside/outside bits, the crossing edges (the surface vertices) and the triangles, then,
// when asked, the small components dropped (geometry/mesh.py's remove_small_components).
//
// The same lists in the same order as the torch path: cubes in flat order, their six Kuhn
// tetrahedra in the table's order, up to two triangles each; surface vertices are the crossing
// edges sorted by the torch path's key min·V + max (every Kuhn edge joins a vertex to one offset by
// a 0/1 step, so the key orders as (lower vertex, step)); components are numbered by their lowest
// vertex, as scipy's connected_components numbers them, so the same one counts as the largest.
// Only integers here: the differentiable interpolation along the edges stays in torch.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <tuple>
#include <vector>

namespace {

constexpr int kTetEdges[6][2] = {{0, 1}, {0, 2}, {0, 3}, {1, 2}, {1, 3}, {2, 3}};

struct Tet {
  int64_t v[4];
  int case_id;
};

int64_t find_root(std::vector<int64_t>& parent, int64_t x) {
  while (parent[x] != x) x = parent[x] = parent[parent[x]];
  return x;
}

// Which faces stay: components (through shared vertices) with at least `threshold` faces, and the
// largest one (the first of equal ones) always.
std::vector<uint8_t> kept_faces(const std::vector<int64_t>& faces, int64_t n_vertices, double threshold) {
  const int64_t F = int64_t(faces.size()) / 3;
  std::vector<int64_t> parent(n_vertices);
  std::iota(parent.begin(), parent.end(), 0);
  for (int64_t f = 0; f < F; ++f)
    for (int c = 1; c < 3; ++c) {
      const int64_t a = find_root(parent, faces[3 * f]), b = find_root(parent, faces[3 * f + c]);
      if (a != b) parent[std::max(a, b)] = std::min(a, b);
    }
  std::vector<int64_t> label(n_vertices, -1), root_label(n_vertices, -1);
  int64_t n_labels = 0;
  for (int64_t v = 0; v < n_vertices; ++v) {
    const int64_t r = find_root(parent, v);
    if (root_label[r] < 0) root_label[r] = n_labels++;
    label[v] = root_label[r];
  }
  std::vector<int64_t> sizes(n_labels, 0);
  for (int64_t f = 0; f < F; ++f) ++sizes[label[faces[3 * f]]];
  const int64_t largest = std::max_element(sizes.begin(), sizes.end()) - sizes.begin();
  std::vector<uint8_t> keep(F);
  for (int64_t f = 0; f < F; ++f) {
    const int64_t l = label[faces[3 * f]];
    keep[f] = double(sizes[l]) >= threshold || l == largest;
  }
  return keep;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> mt_surface(const at::Tensor& inside_bits, int64_t R, const at::Tensor& kuhn,
                                                          const at::Tensor& tri_table, const at::Tensor& tri_count,
                                                          double min_faces, bool remove_small) {
  const int64_t n = R + 1, nn = n * n, n_lattice = n * n * n;
  TORCH_CHECK(inside_bits.numel() == n_lattice && inside_bits.scalar_type() == at::kBool, "inside must be [(R+1)^3] bool");
  const auto inside_c = inside_bits.contiguous();
  const bool* inside = inside_c.data_ptr<bool>();
  const auto kuhn_c = kuhn.to(at::kLong).contiguous(), table_c = tri_table.to(at::kLong).contiguous(),
             count_c = tri_count.to(at::kLong).contiguous();
  const int64_t *K = kuhn_c.data_ptr<int64_t>(), *table = table_c.data_ptr<int64_t>(), *counts = count_c.data_ptr<int64_t>();
  int64_t corner_offset[8];
  for (int c = 0; c < 8; ++c) corner_offset[c] = ((c >> 2) & 1) * nn + ((c >> 1) & 1) * n + (c & 1);
  const int64_t step_offset[7] = {1, n, n + 1, nn, nn + 1, nn + n, nn + n + 1};  // 0/1 steps, ascending

  std::vector<Tet> tets;
  tets.reserve(size_t(R) * R * 6);
  for (int64_t i = 0; i < R; ++i)
    for (int64_t j = 0; j < R; ++j)
      for (int64_t k = 0; k < R; ++k) {
        const int64_t origin = i * nn + j * n + k;
        int total = 0;
        for (int c = 0; c < 8; ++c) total += inside[origin + corner_offset[c]];
        if (total == 0 || total == 8) continue;
        for (int t = 0; t < 6; ++t) {
          Tet tet;
          tet.case_id = 0;
          for (int v = 0; v < 4; ++v) {
            tet.v[v] = origin + corner_offset[K[4 * t + v]];
            tet.case_id |= int(inside[tet.v[v]]) << v;
          }
          if (tet.case_id > 0 && tet.case_id < 15) tets.push_back(tet);
        }
      }
  auto step_of = [&](int64_t low, int64_t high) {
    const int64_t d = high - low;
    const int bits = int((d / nn) * 4 + ((d % nn) / n) * 2 + (d % n));
    return bits - 1;
  };
  // crossing edges as codes lower·7 + step: unique, sorted (= the torch path's sorted keys)
  // one slot per lattice edge (lower vertex, step), kept between calls: only the touched ones are reset
  thread_local std::vector<int32_t> slot;
  if (slot.size() < size_t(n_lattice) * 7) slot.assign(size_t(n_lattice) * 7, -1);
  std::vector<int64_t> codes;
  std::vector<int64_t> edge_code(tets.size() * 6, -1);
  for (size_t t = 0; t < tets.size(); ++t)
    for (int e = 0; e < 6; ++e) {
      const int64_t p = tets[t].v[kTetEdges[e][0]], q = tets[t].v[kTetEdges[e][1]];
      if (inside[p] == inside[q]) continue;
      const int64_t low = std::min(p, q), code = low * 7 + step_of(low, std::max(p, q));
      edge_code[t * 6 + e] = code;
      if (slot[code] == -1) slot[code] = 0, codes.push_back(code);
    }
  std::sort(codes.begin(), codes.end());
  for (size_t s = 0; s < codes.size(); ++s) slot[codes[s]] = int32_t(s);
  std::vector<int64_t> faces;
  for (size_t t = 0; t < tets.size(); ++t) {
    const int c = tets[t].case_id;
    for (int s = 0; s < counts[c]; ++s)
      for (int corner = 0; corner < 3; ++corner)
        faces.push_back(slot[edge_code[t * 6 + table[(c * 2 + s) * 3 + corner]]]);
  }
  for (const int64_t code : codes) slot[code] = -1;
  int64_t F = int64_t(faces.size()) / 3, E = int64_t(codes.size());
  std::vector<int64_t> new_id(E);
  std::iota(new_id.begin(), new_id.end(), 0);
  if (remove_small && F > 0) {
    const double threshold = min_faces < 1 ? min_faces * double(F) : min_faces;
    const std::vector<uint8_t> keep = kept_faces(faces, E, threshold);
    if (std::find(keep.begin(), keep.end(), 0) != keep.end()) {
      std::vector<uint8_t> used(E, 0);
      std::vector<int64_t> kept;
      for (int64_t f = 0; f < F; ++f)
        if (keep[f])
          for (int c = 0; c < 3; ++c) kept.push_back(faces[3 * f + c]), used[faces[3 * f + c]] = 1;
      std::vector<int64_t> used_codes;
      for (int64_t v = 0; v < E; ++v)
        if (used[v]) new_id[v] = int64_t(used_codes.size()), used_codes.push_back(codes[v]);
      for (auto& v : kept) v = new_id[v];
      faces.swap(kept);
      codes.swap(used_codes);
      F = int64_t(faces.size()) / 3, E = int64_t(codes.size());
    }
  }
  auto opts = at::TensorOptions().dtype(at::kLong);
  auto a = at::empty({E}, opts), b = at::empty({E}, opts), out = at::empty({F, 3}, opts);
  int64_t *pa = a.data_ptr<int64_t>(), *pb = b.data_ptr<int64_t>();
  for (int64_t v = 0; v < E; ++v) {
    pa[v] = codes[v] / 7;
    pb[v] = pa[v] + step_offset[codes[v] % 7];
  }
  std::copy(faces.begin(), faces.end(), out.data_ptr<int64_t>());
  return {a, b, out};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(threestudio_like_cpu, m) {
  m.def("mt_surface(Tensor inside, int resolution, Tensor kuhn, Tensor tri_table, Tensor tri_count, float min_faces, bool remove_small) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(threestudio_like_cpu, CPU, m) {
  m.impl("mt_surface", &mt_surface);
}
