// The refinement's per-step mesh terms as single loops with their backward (geometry/mesh.py):
// area-weighted vertex normals, normal consistency and the uniform Laplacian term.
//
// Face normals are n_f = (v1 − v0) × (v2 − v0); unit vectors are x / max(‖x‖, 1e-12) (F.normalize).
// Vertex sums add the faces' normals corner by corner in face order, as the torch code's three
// index_adds do; means are summed in double. Values agree with the torch path to float rounding.
// Backward of the cross product: ∂/∂e1 = e2 × g, ∂/∂e2 = g × e1; of x/‖x‖: (g − u (u·g)) / ‖x‖.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <vector>

namespace {

constexpr double kEps = 1e-12;

template <typename T>
inline void cross(const T* a, const T* b, T* out) {
  out[0] = a[1] * b[2] - a[2] * b[1];
  out[1] = a[2] * b[0] - a[0] * b[2];
  out[2] = a[0] * b[1] - a[1] * b[0];
}

template <typename T>
void face_normals(const T* v, const int64_t* f, int64_t F, std::vector<T>& n) {
  n.resize(3 * F);
  for (int64_t i = 0; i < F; ++i) {
    const T *p0 = v + 3 * f[3 * i], *p1 = v + 3 * f[3 * i + 1], *p2 = v + 3 * f[3 * i + 2];
    const T e1[3] = {p1[0] - p0[0], p1[1] - p0[1], p1[2] - p0[2]}, e2[3] = {p2[0] - p0[0], p2[1] - p0[1], p2[2] - p0[2]};
    cross(e1, e2, &n[3 * i]);
  }
}

// ∂L/∂v from ∂L/∂n_f (accumulated into grad [V,3]).
template <typename T>
void face_normals_backward(const T* v, const int64_t* f, int64_t F, const T* g_n, T* grad) {
  for (int64_t i = 0; i < F; ++i) {
    const int64_t a = f[3 * i], b = f[3 * i + 1], c = f[3 * i + 2];
    const T *p0 = v + 3 * a, *p1 = v + 3 * b, *p2 = v + 3 * c, *g = g_n + 3 * i;
    const T e1[3] = {p1[0] - p0[0], p1[1] - p0[1], p1[2] - p0[2]}, e2[3] = {p2[0] - p0[0], p2[1] - p0[1], p2[2] - p0[2]};
    T g1[3], g2[3];
    cross(e2, g, g1);
    cross(g, e1, g2);
    for (int k = 0; k < 3; ++k) grad[3 * b + k] += g1[k], grad[3 * c + k] += g2[k], grad[3 * a + k] -= g1[k] + g2[k];
  }
}

template <typename T>
inline T norm3(const T* x) { return std::sqrt(x[0] * x[0] + x[1] * x[1] + x[2] * x[2]); }

// u = x / max(‖x‖, eps) and its backward g_x = (g_u − u (u·g_u)) / ‖x‖ (g_u / eps where clamped).
template <typename T>
inline void unit(const T* x, T* u) {
  const T n = std::max(norm3(x), T(kEps));
  for (int k = 0; k < 3; ++k) u[k] = x[k] / n;
}
template <typename T>
inline void unit_backward(const T* x, const T* g_u, T* g_x) {
  const T n = norm3(x);
  if (!(n > T(kEps))) {
    for (int k = 0; k < 3; ++k) g_x[k] = g_u[k] / T(kEps);
    return;
  }
  const T u[3] = {x[0] / n, x[1] / n, x[2] / n}, dot = u[0] * g_u[0] + u[1] * g_u[1] + u[2] * g_u[2];
  for (int k = 0; k < 3; ++k) g_x[k] = (g_u[k] - u[k] * dot) / n;
}

template <typename T>
std::vector<T> vertex_sums(const T* v, const int64_t* f, int64_t V, int64_t F, std::vector<T>& n) {
  face_normals(v, f, F, n);
  std::vector<T> sums(3 * V, T(0));
  for (int corner = 0; corner < 3; ++corner)
    for (int64_t i = 0; i < F; ++i)
      for (int k = 0; k < 3; ++k) sums[3 * f[3 * i + corner] + k] += n[3 * i + k];
  return sums;
}

at::Tensor vertex_normals_forward(const at::Tensor& v_pos, const at::Tensor& faces) {
  const auto v = v_pos.contiguous();
  const auto f = faces.contiguous();
  const int64_t V = v.size(0), F = f.size(0);
  auto out = at::empty({V, 3}, v.options());
  AT_DISPATCH_FLOATING_TYPES(v.scalar_type(), "vertex_normals_forward", [&] {
    std::vector<scalar_t> n;
    const auto sums = vertex_sums(v.data_ptr<scalar_t>(), f.data_ptr<int64_t>(), V, F, n);
    scalar_t* o = out.data_ptr<scalar_t>();
    for (int64_t i = 0; i < V; ++i) unit(&sums[3 * i], o + 3 * i);
  });
  return out;
}

at::Tensor vertex_normals_backward(const at::Tensor& grad, const at::Tensor& v_pos, const at::Tensor& faces) {
  const auto v = v_pos.contiguous();
  const auto f = faces.contiguous();
  const auto g = grad.contiguous();
  const int64_t V = v.size(0), F = f.size(0);
  auto out = at::zeros({V, 3}, v.options());
  AT_DISPATCH_FLOATING_TYPES(v.scalar_type(), "vertex_normals_backward", [&] {
    const scalar_t *pv = v.data_ptr<scalar_t>(), *pg = g.data_ptr<scalar_t>();
    const int64_t* pf = f.data_ptr<int64_t>();
    std::vector<scalar_t> n;
    const auto sums = vertex_sums(pv, pf, V, F, n);
    std::vector<scalar_t> g_sums(3 * V), g_n(3 * F, scalar_t(0));
    for (int64_t i = 0; i < V; ++i) unit_backward(&sums[3 * i], pg + 3 * i, &g_sums[3 * i]);
    for (int64_t i = 0; i < F; ++i)
      for (int corner = 0; corner < 3; ++corner)
        for (int k = 0; k < 3; ++k) g_n[3 * i + k] += g_sums[3 * pf[3 * i + corner] + k];
    face_normals_backward(pv, pf, F, g_n.data(), out.data_ptr<scalar_t>());
  });
  return out;
}

// mean over pairs of 1 − u_a·u_b, and ∂/∂v_pos scaled by `scale` (the upstream gradient)
template <typename T>
T consistency(const T* v, const int64_t* f, int64_t F, const int64_t* pairs, int64_t P, T* grad, T scale) {
  std::vector<T> n, u(3 * F);
  face_normals(v, f, F, n);
  for (int64_t i = 0; i < F; ++i) unit(&n[3 * i], &u[3 * i]);
  double total = 0;
  for (int64_t p = 0; p < P; ++p) {
    const T *a = &u[3 * pairs[2 * p]], *b = &u[3 * pairs[2 * p + 1]];
    total += double(T(1) - (a[0] * b[0] + a[1] * b[1] + a[2] * b[2]));
  }
  if (grad != nullptr && P > 0) {
    std::vector<T> g_u(3 * F, T(0)), g_n(3 * F);
    const T w = -scale / T(P);
    for (int64_t p = 0; p < P; ++p) {
      const int64_t a = pairs[2 * p], b = pairs[2 * p + 1];
      for (int k = 0; k < 3; ++k) g_u[3 * a + k] += w * u[3 * b + k], g_u[3 * b + k] += w * u[3 * a + k];
    }
    for (int64_t i = 0; i < F; ++i) unit_backward(&n[3 * i], &g_u[3 * i], &g_n[3 * i]);
    face_normals_backward(v, f, F, g_n.data(), grad);
  }
  return P > 0 ? T(total / double(P)) : T(0);
}

// mean over vertices with neighbours of ‖v − mean(neighbours)‖², and its gradient scaled by `scale`
template <typename T>
T laplacian(const T* v, int64_t V, const int64_t* edges, int64_t E, const int64_t* degree, T* grad, T scale) {
  std::vector<T> sums(3 * V, T(0));
  for (int64_t e = 0; e < E; ++e) {
    const int64_t a = edges[2 * e], b = edges[2 * e + 1];
    for (int k = 0; k < 3; ++k) sums[3 * a + k] += v[3 * b + k];
  }
  for (int64_t e = 0; e < E; ++e) {
    const int64_t a = edges[2 * e], b = edges[2 * e + 1];
    for (int k = 0; k < 3; ++k) sums[3 * b + k] += v[3 * a + k];
  }
  int64_t connected = 0;
  double total = 0;
  std::vector<T> lap(3 * V, T(0));
  for (int64_t i = 0; i < V; ++i) {
    if (degree[i] <= 0) continue;
    ++connected;
    for (int k = 0; k < 3; ++k) lap[3 * i + k] = v[3 * i + k] - sums[3 * i + k] / T(degree[i]);
    total += double(lap[3 * i] * lap[3 * i] + lap[3 * i + 1] * lap[3 * i + 1] + lap[3 * i + 2] * lap[3 * i + 2]);
  }
  if (grad != nullptr && connected > 0) {
    const T w = T(2) * scale / T(connected);
    for (int64_t i = 0; i < 3 * V; ++i) grad[i] += w * lap[i];
    for (int64_t e = 0; e < E; ++e) {
      const int64_t a = edges[2 * e], b = edges[2 * e + 1];
      for (int k = 0; k < 3; ++k) {
        grad[3 * b + k] -= w * lap[3 * a + k] / T(degree[a]);
        grad[3 * a + k] -= w * lap[3 * b + k] / T(degree[b]);
      }
    }
  }
  return connected > 0 ? T(total / double(connected)) : T(0);
}

// (loss, ∂loss/∂v_pos · scale) of one term: which = 0 normal consistency (index: pairs), 1 Laplacian (index: edges)
std::vector<at::Tensor> mesh_term(const at::Tensor& v_pos, const at::Tensor& faces, const at::Tensor& index,
                                  const at::Tensor& degree, int64_t which, bool with_grad, double scale) {
  const auto v = v_pos.contiguous();
  const auto f = faces.contiguous();
  const auto ix = index.contiguous();
  const auto deg = degree.contiguous();
  auto grad = with_grad ? at::zeros_like(v) : at::Tensor();
  at::Tensor loss = at::empty({}, v.options());
  AT_DISPATCH_FLOATING_TYPES(v.scalar_type(), "mesh_term", [&] {
    scalar_t* g = with_grad ? grad.data_ptr<scalar_t>() : nullptr;
    const scalar_t s = scalar_t(scale);
    scalar_t value = which == 0
        ? consistency(v.data_ptr<scalar_t>(), f.data_ptr<int64_t>(), f.size(0), ix.data_ptr<int64_t>(), ix.size(0), g, s)
        : laplacian(v.data_ptr<scalar_t>(), v.size(0), ix.data_ptr<int64_t>(), ix.size(0), deg.data_ptr<int64_t>(), g, s);
    loss.fill_(value);
  });
  return with_grad ? std::vector<at::Tensor>{loss, grad} : std::vector<at::Tensor>{loss};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(threestudio_like_cpu, m) {
  m.def("vertex_normals_forward(Tensor v_pos, Tensor faces) -> Tensor");
  m.def("vertex_normals_backward(Tensor grad, Tensor v_pos, Tensor faces) -> Tensor");
  m.def("mesh_term(Tensor v_pos, Tensor faces, Tensor index, Tensor degree, int which, bool with_grad, float scale) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(threestudio_like_cpu, CPU, m) {
  m.impl("vertex_normals_forward", &vertex_normals_forward);
  m.impl("vertex_normals_backward", &vertex_normals_backward);
  m.impl("mesh_term", &mesh_term);
}
