// The embedded prior's sphere tracer on the CPU: one loop per ray over the scene's signed distance.
//
// The same function as threestudio_like/priors/sdf.py (sdf_* primitives, their union and carving
// in _distance, the marching loop of sphere_trace), written per point in float32 in the order the
// torch code computes it, with every constant the Python code derives (0.5·h, hypot(h, b)…) passed
// in precomputed. The torch path evaluates the SDF on all still-marching rays per step, ~100 tensor
// passes each; here a ray marches to its end in registers. Results agree with the torch path to
// float rounding (its 3-term norms and sums may round in another order); a ray whose last distance
// lies within rounding of eps can flip between hit and miss.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <tuple>
#include <vector>

namespace {

// A part's row of the table Python builds (threestudio_like/kernels/sdf_trace.py): shape index,
// kind, flags, centre, rotation (row-major, columns = local axes), then the kind's constants.
enum Column { kShape = 0, kKind, kCarve, kRotated, kCenter, kRotation = kCenter + 3, kParam = kRotation + 9, kColumns = kParam + 6 };
enum Kind { kSphere = 0, kBox, kCylinder, kCone, kTorus, kCapsule, kPyramid, kPrism };

struct Part {
  int shape, kind;
  bool carve, rotated;
  float c[3], R[9], p[6];
};

constexpr int kLanes = 16;  // rays (or points) evaluated side by side, one per vector lane

inline float len2(float x, float y) { return std::sqrt(x * x + y * y); }
inline float len3(float x, float y, float z) { return std::sqrt(x * x + y * y + z * z); }

// d[k] = the primitive's distance at local points (x, y, z)[k], for all lanes (the switch outside the
// lane loops, so that each loop vectorises).
void primitive(const Part& q, const float* x, const float* y, const float* z, float* d) {
  const float* p = q.p;
  switch (q.kind) {
    case kSphere:
#pragma omp simd
      for (int k = 0; k < kLanes; ++k) d[k] = len3(x[k], y[k], z[k]) - p[0];
      return;
    case kBox:
#pragma omp simd
      for (int k = 0; k < kLanes; ++k) {
        const float qx = std::fabs(x[k]) - p[0], qy = std::fabs(y[k]) - p[1], qz = std::fabs(z[k]) - p[2];
        const float outside = len3(std::max(qx, 0.f), std::max(qy, 0.f), std::max(qz, 0.f));
        d[k] = outside + std::min(std::max(std::max(qx, qy), qz), 0.f);
      }
      return;
    case kCylinder:  // r, h
#pragma omp simd
      for (int k = 0; k < kLanes; ++k) {
        const float dx = len2(x[k], y[k]) - p[0], dz = std::fabs(z[k]) - p[1];
        d[k] = std::min(std::max(dx, dz), 0.f) + len2(std::max(dx, 0.f), std::max(dz, 0.f));
      }
      return;
    case kCapsule:  // r, h
#pragma omp simd
      for (int k = 0; k < kLanes; ++k) d[k] = len3(x[k], y[k], z[k] - std::min(std::max(z[k], -p[1]), p[1])) - p[0];
      return;
    case kTorus:  // R, r
#pragma omp simd
      for (int k = 0; k < kLanes; ++k) d[k] = len2(len2(x[k], y[k]) - p[0], z[k]) - p[1];
      return;
    case kCone:  // r, hh, k2x = −r, k2y = 2·hh, k2x² + k2y²
#pragma omp simd
      for (int k = 0; k < kLanes; ++k) {
        const float qx = len2(x[k], y[k]), qy = z[k], r = p[0], hh = p[1], k2x = p[2], k2y = p[3];
        const float ca_x = qx - std::min(qx, qy < 0 ? r : 0.f), ca_y = std::fabs(qy) - hh;
        const float s = std::min(std::max(((0.f - qx) * k2x + (hh - qy) * k2y) / p[4], 0.f), 1.f);
        const float cb_x = (qx - 0.f) + k2x * s, cb_y = (qy - hh) + k2y * s;
        const float sign = (cb_x < 0 && ca_y < 0) ? -1.f : 1.f;
        d[k] = sign * std::sqrt(std::min(ca_x * ca_x + ca_y * ca_y, cb_x * cb_x + cb_y * cb_y));
      }
      return;
    case kPyramid:  // b, h, hypot(h, b), 0.5·h
#pragma omp simd
      for (int k = 0; k < kLanes; ++k) {
        const float top = z[k] - p[3];
        const float sx = (std::fabs(x[k]) * p[1] + top * p[0]) / p[2], sy = (std::fabs(y[k]) * p[1] + top * p[0]) / p[2];
        d[k] = std::max(std::max(sx, sy), -z[k] - p[3]);
      }
      return;
    default:  // prism: b, h, hypot(h, b), 0.5·h, length
#pragma omp simd
      for (int k = 0; k < kLanes; ++k) {
        const float side = (std::fabs(x[k]) * p[1] + (z[k] - p[3]) * p[0]) / p[2];
        d[k] = std::max(std::max(side, -z[k] - p[3]), std::fabs(y[k]) - p[4]);
      }
  }
}

void part_distance(const Part& q, const float* px, const float* py, const float* pz, float* d) {
  alignas(64) float x[kLanes], y[kLanes], z[kLanes];
  const float* R = q.R;
#pragma omp simd
  for (int k = 0; k < kLanes; ++k) {
    const float lx = px[k] - q.c[0], ly = py[k] - q.c[1], lz = pz[k] - q.c[2];
    x[k] = q.rotated ? lx * R[0] + ly * R[3] + lz * R[6] : lx;
    y[k] = q.rotated ? lx * R[1] + ly * R[4] + lz * R[7] : ly;
    z[k] = q.rotated ? lx * R[2] + ly * R[5] + lz * R[8] : lz;
  }
  primitive(q, x, y, z, d);
}

// The scene's distance at kLanes points: parts sorted by shape, each shape's added parts before
// its carved ones (as _distance loops them): min over added, max with −carved, min over shapes.
void scene_distance(const std::vector<Part>& parts, const float* x, const float* y, const float* z, float* best) {
  alignas(64) float d[kLanes], dp[kLanes];
  for (int k = 0; k < kLanes; ++k) best[k] = INFINITY;
  const size_t n = parts.size();
  for (size_t i = 0; i < n; ++i) {
    const Part& q = parts[i];
    const bool first = i == 0 || parts[i - 1].shape != q.shape;
    part_distance(q, x, y, z, first ? d : dp);
    if (q.carve) {
#pragma omp simd
      for (int k = 0; k < kLanes; ++k) d[k] = std::max(d[k], -dp[k]);
    } else if (!first) {
#pragma omp simd
      for (int k = 0; k < kLanes; ++k) d[k] = std::min(d[k], dp[k]);
    }
    if (i + 1 == n || parts[i + 1].shape != q.shape) {
#pragma omp simd
      for (int k = 0; k < kLanes; ++k) best[k] = std::min(best[k], d[k]);
    }
  }
}

std::vector<Part> parts_of(const at::Tensor& table_in) {
  const at::Tensor table = table_in.to(at::kDouble).contiguous();
  TORCH_CHECK(table.dim() == 2 && table.size(1) == kColumns, "sdf table: expected [P, ", int(kColumns), "]");
  const double* t = table.data_ptr<double>();
  std::vector<Part> parts(table.size(0));
  for (size_t i = 0; i < parts.size(); ++i, t += kColumns) {
    Part& q = parts[i];
    q.shape = static_cast<int>(t[kShape]), q.kind = static_cast<int>(t[kKind]);
    q.carve = t[kCarve] != 0, q.rotated = t[kRotated] != 0;
    for (int k = 0; k < 3; ++k) q.c[k] = static_cast<float>(t[kCenter + k]);
    for (int k = 0; k < 9; ++k) q.R[k] = static_cast<float>(t[kRotation + k]);
    for (int k = 0; k < 6; ++k) q.p[k] = static_cast<float>(t[kParam + k]);
  }
  return parts;
}

// points [N,3] → signed distance [N].
at::Tensor sdf_distance(const at::Tensor& points_in, const at::Tensor& table) {
  TORCH_CHECK(points_in.scalar_type() == at::kFloat, "sdf_distance takes float32 points");
  const at::Tensor points = points_in.contiguous();
  const std::vector<Part> parts = parts_of(table);
  const int64_t N = points.size(0);
  at::Tensor out = at::empty({N}, points.options());
  const float* p = points.data_ptr<float>();
  float* d = out.data_ptr<float>();
  alignas(64) float x[kLanes] = {}, y[kLanes] = {}, z[kLanes] = {}, dist[kLanes];
  for (int64_t i0 = 0; i0 < N; i0 += kLanes) {
    const int n = static_cast<int>(std::min<int64_t>(kLanes, N - i0));
    for (int k = 0; k < n; ++k) x[k] = p[3 * (i0 + k)], y[k] = p[3 * (i0 + k) + 1], z[k] = p[3 * (i0 + k) + 2];
    scene_distance(parts, x, y, z, dist);
    for (int k = 0; k < n; ++k) d[i0 + k] = dist[k];
  }
  return out;
}

// sphere_trace's loop for rays o, d [R,3] starting at t [R] (where they enter the ball), leaving at
// t_far [R], marching where inside [R] → (hit [R] bool, t [R]). kLanes rays march side by side; a
// lane whose ray has hit, left or used its max_steps takes the next ray, so the lanes stay busy.
std::tuple<at::Tensor, at::Tensor> sdf_march(const at::Tensor& o_in, const at::Tensor& d_in, const at::Tensor& t_in,
                                             const at::Tensor& t_far_in, const at::Tensor& inside_in, const at::Tensor& table,
                                             int64_t max_steps, double eps_in) {
  TORCH_CHECK(o_in.scalar_type() == at::kFloat && d_in.scalar_type() == at::kFloat, "sdf_march takes float32 rays");
  const at::Tensor o = o_in.contiguous(), d = d_in.contiguous(), t_far = t_far_in.contiguous();
  const at::Tensor inside = inside_in.to(at::kBool).contiguous();
  at::Tensor t = t_in.clone().contiguous();
  at::Tensor hit = at::zeros({o.size(0)}, o.options().dtype(at::kBool));
  const std::vector<Part> parts = parts_of(table);
  const float eps = static_cast<float>(eps_in), graze = static_cast<float>(10 * eps_in);  // as torch rounds the Python floats
  if (max_steps <= 0) return {hit, t};
  const float *op = o.data_ptr<float>(), *dp = d.data_ptr<float>(), *fp = t_far.data_ptr<float>();
  const bool* in = inside.data_ptr<bool>();
  float* tp = t.data_ptr<float>();
  bool* hp = hit.data_ptr<bool>();
  const int64_t R = o.size(0);
  int64_t next = 0;  // the next ray to give a lane
  int64_t ray[kLanes], steps[kLanes];
  alignas(64) float x[kLanes] = {}, y[kLanes] = {}, z[kLanes] = {}, dist[kLanes];
  int busy = 0;
  for (int k = 0; k < kLanes; ++k) ray[k] = -1;
  while (true) {
    for (int k = 0; k < kLanes; ++k) {  // idle lanes take the next rays that enter the ball
      if (ray[k] >= 0) continue;
      while (next < R && !in[next]) ++next;
      if (next == R) continue;
      ray[k] = next++, steps[k] = 0, ++busy;
    }
    if (busy == 0) break;
    for (int k = 0; k < kLanes; ++k) {
      if (ray[k] < 0) continue;
      const int64_t r = ray[k];
      x[k] = op[3 * r] + tp[r] * dp[3 * r], y[k] = op[3 * r + 1] + tp[r] * dp[3 * r + 1], z[k] = op[3 * r + 2] + tp[r] * dp[3 * r + 2];
    }
    scene_distance(parts, x, y, z, dist);
    for (int k = 0; k < kLanes; ++k) {
      if (ray[k] < 0) continue;
      const int64_t r = ray[k];
      bool end = false;
      if (dist[k] < eps) {
        hp[r] = true, end = true;
      } else {
        tp[r] = tp[r] + dist[k];
        // a ray that ran out of steps while grazing a surface counts as a hit
        if (!(tp[r] < fp[r])) end = true;
        else if (++steps[k] == max_steps) hp[r] = dist[k] < graze, end = true;
      }
      if (end) ray[k] = -1, --busy;
    }
  }
  return {hit, t};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(threestudio_like_cpu, m) {
  m.def("sdf_distance(Tensor points, Tensor table) -> Tensor");
  m.def("sdf_march(Tensor o, Tensor d, Tensor t, Tensor t_far, Tensor inside, Tensor table, int max_steps, float eps) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(threestudio_like_cpu, CPU, m) {
  m.impl("sdf_distance", &sdf_distance);
  m.impl("sdf_march", &sdf_march);
}
