// A triangle mesh's topology in one pass (threestudio_like/geometry/mesh.py, renderers/antialias.py):
// the faces' edges sorted stably by the key min·V + max (a counting sort by the lower vertex, then
// by the upper one within each vertex's few edges), and from that order the unique edges, the
// pairs of faces that share an edge, each vertex's neighbour count and, for antialiasing, the vertex
// across each triangle edge. The same arrays as the torch code's stable argsort gives; the vertex
// across an edge that more than two faces share follows this stable order (the torch code's
// argsort is not stable there, so it may pair such faces differently).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cstdint>
#include <tuple>
#include <vector>

namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> mesh_topology(const at::Tensor& tri,
                                                                                                 int64_t n_vertices) {
  TORCH_CHECK(tri.dim() == 2 && tri.size(1) == 3 && tri.scalar_type() == at::kLong, "faces must be [F,3] int64");
  const auto faces = tri.contiguous();
  const int64_t* t = faces.data_ptr<int64_t>();
  const int64_t F = faces.size(0), S = 3 * F, V = std::max<int64_t>(n_vertices, 1);
  std::vector<int64_t> low(S), high(S);
  for (int64_t f = 0; f < F; ++f)
    for (int j = 0; j < 3; ++j) {  // face edges (0,1), (1,2), (2,0), smaller index first
      const int64_t a = t[3 * f + j], b = t[3 * f + (j + 1) % 3];
      low[3 * f + j] = std::min(a, b), high[3 * f + j] = std::max(a, b);
    }
  for (int64_t s = 0; s < S; ++s) TORCH_CHECK(low[s] >= 0 && high[s] < V, "face index out of range");
  std::vector<int64_t> start(V + 1, 0), order(S);
  for (int64_t s = 0; s < S; ++s) ++start[low[s] + 1];
  for (int64_t v = 0; v < V; ++v) start[v + 1] += start[v];
  std::vector<int64_t> fill(start.begin(), start.end() - 1);
  for (int64_t s = 0; s < S; ++s) order[fill[low[s]]++] = s;  // stable by the lower vertex
  for (int64_t v = 0; v < V; ++v)                              // stable insertion by the upper one
    for (int64_t i = start[v] + 1; i < start[v + 1]; ++i) {
      const int64_t s = order[i];
      int64_t k = i;
      while (k > start[v] && high[order[k - 1]] > high[s]) order[k] = order[k - 1], --k;
      order[k] = s;
    }
  auto opts = at::TensorOptions().dtype(at::kLong);
  auto sorted_keys = at::empty({S}, opts), order_t = at::empty({S}, opts), opposite = at::full({F, 3}, -1, opts),
       degree = at::zeros({n_vertices}, opts);
  int64_t *keys = sorted_keys.data_ptr<int64_t>(), *ord = order_t.data_ptr<int64_t>(), *opp = opposite.data_ptr<int64_t>(),
          *deg = degree.data_ptr<int64_t>();
  std::vector<int64_t> edges, pairs;
  for (int64_t i = 0; i < S; ++i) {
    ord[i] = order[i];
    keys[i] = low[order[i]] * V + high[order[i]];
  }
  for (int64_t i = 0; i < S; ++i) {
    const bool first = i == 0 || keys[i] != keys[i - 1], has_next = i + 1 < S && keys[i + 1] == keys[i];
    if (first) {
      edges.push_back(low[ord[i]]), edges.push_back(high[ord[i]]);
      ++deg[low[ord[i]]], ++deg[high[ord[i]]];
    }
    if (has_next) pairs.push_back(ord[i] / 3), pairs.push_back(ord[i + 1] / 3);
    // the partner half-edge: the next one with this key, else the previous one
    const int64_t partner = has_next ? i + 1 : (!first ? i - 1 : -1);
    if (partner < 0) continue;
    const int64_t s = ord[i], p = ord[partner];  // face edge j of a face lies opposite its vertex (j + 2) % 3
    opp[3 * (s / 3) + (s % 3 + 2) % 3] = t[3 * (p / 3) + (p % 3 + 2) % 3];
  }
  auto edges_t = at::empty({int64_t(edges.size()) / 2, 2}, opts), pairs_t = at::empty({int64_t(pairs.size()) / 2, 2}, opts);
  std::copy(edges.begin(), edges.end(), edges_t.data_ptr<int64_t>());
  std::copy(pairs.begin(), pairs.end(), pairs_t.data_ptr<int64_t>());
  return {sorted_keys, order_t, edges_t, pairs_t, degree, opposite};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(threestudio_like_cpu, m) {
  m.def("mesh_topology(Tensor faces, int n_vertices) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(threestudio_like_cpu, CPU, m) {
  m.impl("mesh_topology", &mesh_topology);
}
