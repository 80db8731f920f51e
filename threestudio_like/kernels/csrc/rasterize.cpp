// The mesh rasterizer's torch path (threestudio_like/renderers/rasterize.py) as one loop per image:
// each triangle's pixel box, then the homogeneous coverage test at every pixel centre in it, the
// nearest camera-space depth winning (ties: the lower triangle index), and the backward of the
// winners' (u, v, z/w) with respect to the clip positions.
//
// Box, plane functions and their evaluation repeat the torch code operation for operation in the
// clip positions' float type (-ffp-contract=off: the same roundings), so the same pixels are
// covered by the same triangles with the same (u, v, z/w). The backward is the analytic derivative
// of those functions (equal to autograd's to float rounding): with a_i = x_i − p w_i, b_i = y_i − q w_i,
// λ_i = a_j b_k − a_k b_j (i, j, k cyclic), T = Σλ, u = λ_0/T, v = λ_1/T, z/w = Σ z_i λ_i / Σ w_i λ_i.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <tuple>
#include <vector>

namespace {

template <typename T>
inline T nan_min(T a, T b) { return (a != a || b != b) ? std::numeric_limits<T>::quiet_NaN() : (b < a ? b : a); }
template <typename T>
inline T nan_max(T a, T b) { return (a != a || b != b) ? std::numeric_limits<T>::quiet_NaN() : (b > a ? b : a); }
template <typename T>
inline T to_pixel(T ndc, T size) { return ((ndc + T(1)) * size - T(1)) / T(2); }  // pixel i's centre at i

// _clipped_extent: the NDC box of the triangle's part in front of the near plane (lo > hi if none).
template <typename T>
void clipped_extent(const T* const v[3], T lo[2], T hi[2]) {
  T d[3];
  for (int i = 0; i < 3; ++i) d[i] = v[i][2] + v[i][3];
  lo[0] = lo[1] = T(1e7);
  hi[0] = hi[1] = T(-1e7);
  auto add = [&](T x, T y, T w, bool valid) {
    if (!(valid && w > 0)) return;
    for (int c = 0; c < 2; ++c) {
      T ndc = (c == 0 ? x : y) / w;
      if (ndc != ndc) ndc = 0;  // nan_to_num(0, 1e6, −1e6), then clamp to ±1e6
      ndc = ndc > T(1e6) ? T(1e6) : (ndc < T(-1e6) ? T(-1e6) : ndc);
      lo[c] = ndc < lo[c] ? ndc : lo[c];
      hi[c] = ndc > hi[c] ? ndc : hi[c];
    }
  };
  for (int i = 0; i < 3; ++i) add(v[i][0], v[i][1], v[i][3], d[i] >= 0);
  for (int i = 0; i < 3; ++i) {
    const int j = (i + 1) % 3;
    const bool crossing = (d[i] >= 0) != (d[j] >= 0);
    T t = d[i] / (crossing ? d[i] - d[j] : T(1));
    t = t < 0 ? T(0) : (t > 1 ? T(1) : t);  // clamp(0, 1), NaN stays NaN
    auto at = [&](int c) { return v[i][c] + t * (v[j][c] - v[i][c]); };
    add(at(0), at(1), at(3), crossing);
  }
}

// _pixel_boxes for one triangle: inclusive pixel ranges; false when empty (or not a number).
template <typename T>
bool pixel_box(const T* const v[3], int64_t W, int64_t H, int64_t box[4]) {
  const T size[2] = {T(W), T(H)};
  T lo[2], hi[2];
  bool all_front = true;
  for (int c = 0; c < 2; ++c) lo[c] = hi[c] = 0;
  for (int i = 0; i < 3; ++i) {
    const T w = v[i][3];
    const bool front = (v[i][2] + w >= 0) && (w > 0);
    all_front = all_front && front;
    const T div = front ? w : T(1);
    for (int c = 0; c < 2; ++c) {
      const T px = to_pixel(v[i][c] / div, size[c]);
      lo[c] = i == 0 ? px : nan_min(lo[c], px);
      hi[c] = i == 0 ? px : nan_max(hi[c], px);
    }
  }
  if (!all_front) {
    clipped_extent(v, lo, hi);
    for (int c = 0; c < 2; ++c) lo[c] = to_pixel(lo[c], size[c]), hi[c] = to_pixel(hi[c], size[c]);
  }
  const T margin = T(1e-3);  // pixels, as the torch path
  for (int c = 0; c < 2; ++c) {
    T first = std::ceil(lo[c] - margin), last = std::floor(hi[c] + margin);
    if (first != first || last != last) return false;
    first = first < 0 ? T(0) : (first > T(1 << 30) ? T(1 << 30) : first);
    last = last < -1 ? T(-1) : (last > T(1 << 30) ? T(1 << 30) : last);
    last = last < size[c] - 1 ? last : size[c] - 1;
    box[2 * c] = int64_t(first);
    box[2 * c + 1] = int64_t(last);
    if (box[2 * c + 1] < box[2 * c]) return false;
  }
  return true;
}

// _plane_functions: λ_0, λ_1, λ_2, Σλ_i z_i, Σλ_i w_i as c0 + c1·p + c2·q, [5][3].
template <typename T>
void plane_functions(const T* const v[3], T planes[5][3]) {
  const T x0 = v[0][0], y0 = v[0][1], z0 = v[0][2], w0 = v[0][3];
  const T x1 = v[1][0], y1 = v[1][1], z1 = v[1][2], w1 = v[1][3];
  const T x2 = v[2][0], y2 = v[2][1], z2 = v[2][2], w2 = v[2][3];
  const T lam[3][3] = {{x1 * y2 - x2 * y1, w2 * y1 - w1 * y2, x2 * w1 - x1 * w2},
                       {x2 * y0 - x0 * y2, w0 * y2 - w2 * y0, x0 * w2 - x2 * w0},
                       {x0 * y1 - x1 * y0, w1 * y0 - w0 * y1, x1 * w0 - x0 * w1}};
  for (int c = 0; c < 3; ++c) {
    planes[0][c] = lam[0][c], planes[1][c] = lam[1][c], planes[2][c] = lam[2][c];
    planes[3][c] = z0 * lam[0][c] + z1 * lam[1][c] + z2 * lam[2][c];
    planes[4][c] = w0 * lam[0][c] + w1 * lam[1][c] + w2 * lam[2][c];
  }
}

template <typename T>
struct Sample {
  T lam[3], total, depth, homogeneous, bary[3], z_over_w, w;
  bool covered;
};

// _evaluate at one pixel centre (p, q).
template <typename T>
inline Sample<T> evaluate(const T planes[5][3], T p, T q) {
  Sample<T> s;
  T values[5];
  for (int r = 0; r < 5; ++r) values[r] = planes[r][0] + planes[r][1] * p + planes[r][2] * q;
  for (int i = 0; i < 3; ++i) s.lam[i] = values[i];
  s.depth = values[3], s.homogeneous = values[4];
  s.total = s.lam[0] + s.lam[1] + s.lam[2];
  const T safe_total = s.total != 0 ? s.total : T(1), safe_w = s.homogeneous != 0 ? s.homogeneous : T(1);
  for (int i = 0; i < 3; ++i) s.bary[i] = s.lam[i] / safe_total;
  s.z_over_w = s.depth / safe_w;
  s.w = s.homogeneous / safe_total;
  s.covered = s.total != 0 && s.bary[0] >= 0 && s.bary[1] >= 0 && s.bary[2] >= 0 && s.w > 0 && s.z_over_w >= -1 &&
              s.z_over_w <= 1;
  return s;
}

template <typename T>
inline T ndc_centre(int64_t i, int64_t size) { return T(2 * i + 1) / T(size) - T(1); }

// Every vertex's pixel position (x, y) and whether it lies in front (_pixel_boxes' per-vertex part).
template <typename T>
void project_vertices(const T* pos, int64_t V, int64_t W, int64_t H, std::vector<T>& pixel, std::vector<uint8_t>& front) {
  const T size[2] = {T(W), T(H)};
  pixel.resize(2 * V), front.resize(V);
  for (int64_t i = 0; i < V; ++i) {
    const T* v = pos + 4 * i;
    front[i] = (v[2] + v[3] >= 0) && (v[3] > 0);
    const T div = front[i] ? v[3] : T(1);
    for (int c = 0; c < 2; ++c) pixel[2 * i + c] = to_pixel(v[c] / div, size[c]);
  }
}

// A triangle wholly in front whose box of projected vertices holds no pixel centre: most of a fine
// mesh's (the exact box below would find it empty too, with the same margin).
template <typename T>
inline bool surely_empty(const T* pixel, const uint8_t* front, const int64_t* t, int64_t W, int64_t H) {
  if (!(front[t[0]] && front[t[1]] && front[t[2]])) return false;
  const T margin = T(1e-3), size[2] = {T(W), T(H)};
  for (int c = 0; c < 2; ++c) {
    const T a = pixel[2 * t[0] + c], b = pixel[2 * t[1] + c], d = pixel[2 * t[2] + c];
    const T lo = nan_min(nan_min(a, b), d), hi = nan_max(nan_max(a, b), d);
    if (lo != lo || hi != hi) return true;
    if (std::ceil(lo - margin) > std::floor(hi + margin) || std::floor(hi + margin) < 0 || std::ceil(lo - margin) > size[c] - 1)
      return true;
  }
  return false;
}

template <typename T>
void rasterize_image(const T* pos, const int64_t* tri, int64_t V, int64_t F, int64_t H, int64_t W, T* rast) {
  std::vector<T> best(H * W, std::numeric_limits<T>::infinity());
  std::vector<int64_t> winner(H * W, -1);
  std::vector<T> pixel;
  std::vector<uint8_t> front;
  project_vertices(pos, V, W, H, pixel, front);
  for (int64_t f = 0; f < F; ++f) {
    const int64_t* t = tri + 3 * f;
    if (t[0] < 0 || t[1] < 0 || t[2] < 0 || t[0] >= V || t[1] >= V || t[2] >= V) continue;
    if (surely_empty(pixel.data(), front.data(), t, W, H)) continue;
    const T* v[3] = {pos + 4 * t[0], pos + 4 * t[1], pos + 4 * t[2]};
    int64_t box[4];
    if (!pixel_box(v, W, H, box)) continue;
    T planes[5][3];
    plane_functions(v, planes);
    for (int64_t py = box[2]; py <= box[3]; ++py) {
      const T q = ndc_centre<T>(py, H);
      for (int64_t px = box[0]; px <= box[1]; ++px) {
        const Sample<T> s = evaluate(planes, ndc_centre<T>(px, W), q);
        const int64_t pixel = py * W + px;
        if (!s.covered || !(s.w < best[pixel])) continue;  // equal depth: the lower index stays
        best[pixel] = s.w;
        winner[pixel] = f;
        T* out = rast + 4 * pixel;
        out[0] = s.bary[0], out[1] = s.bary[1], out[2] = s.z_over_w, out[3] = T(f + 1);
      }
    }
  }
}

// Images are independent (their own pixels, their own slice of the clip positions' gradient).
template <typename Body>
void per_image(int64_t B, const Body& body) {
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < B; ++b) body(b);
}

at::Tensor raster_forward(const at::Tensor& pos_clip, const at::Tensor& tri, int64_t height, int64_t width) {
  TORCH_CHECK(pos_clip.dim() == 3 && pos_clip.size(2) == 4, "pos_clip must be [B,V,4]");
  TORCH_CHECK(tri.dim() == 2 && tri.size(1) == 3 && tri.scalar_type() == at::kLong, "tri must be [F,3] int64");
  const auto pos = pos_clip.contiguous();
  const auto faces = tri.contiguous();
  const int64_t B = pos.size(0), V = pos.size(1), F = faces.size(0);
  auto rast = at::zeros({B, height, width, 4}, pos.options());
  AT_DISPATCH_FLOATING_TYPES(pos.scalar_type(), "raster_forward", [&] {
    const scalar_t* p = pos.data_ptr<scalar_t>();
    scalar_t* out = rast.data_ptr<scalar_t>();
    const int64_t* t = faces.data_ptr<int64_t>();
    per_image(B, [&](int64_t b) { rasterize_image(p + b * V * 4, t, V, F, height, width, out + b * height * width * 4); });
  });
  return rast;
}

// ∂L/∂(clip positions) from ∂L/∂(u, v, z/w) at the covered pixels of rast.
template <typename T>
void backward_image(const T* pos, const int64_t* tri, const T* rast, const T* grad, int64_t H, int64_t W, T* grad_pos) {
  for (int64_t pixel = 0; pixel < H * W; ++pixel) {
    const int64_t f = int64_t(rast[4 * pixel + 3]) - 1;
    if (f < 0) continue;
    const T gu = grad[4 * pixel], gv = grad[4 * pixel + 1], gz = grad[4 * pixel + 2];
    if (gu == 0 && gv == 0 && gz == 0) continue;
    const int64_t* t = tri + 3 * f;
    const T* v[3] = {pos + 4 * t[0], pos + 4 * t[1], pos + 4 * t[2]};
    T planes[5][3];
    plane_functions(v, planes);
    const T p = ndc_centre<T>(pixel % W, W), q = ndc_centre<T>(pixel / W, H);
    const Sample<T> s = evaluate(planes, p, q);
    const T u = s.bary[0], vv = s.bary[1];
    // z/w = D / Hh, u = λ_0 / T, v = λ_1 / T
    const T g_depth = gz / s.homogeneous, g_hom = -gz * s.z_over_w / s.homogeneous;
    T g_lam[3], ga[3] = {0, 0, 0}, gb[3] = {0, 0, 0}, gw[3];
    for (int i = 0; i < 3; ++i) {
      g_lam[i] = gu * ((i == 0 ? T(1) : T(0)) - u) / s.total + gv * ((i == 1 ? T(1) : T(0)) - vv) / s.total +
                 g_depth * v[i][2] + g_hom * v[i][3];
      gw[i] = g_hom * s.lam[i];
    }
    T a[3], bb[3];
    for (int i = 0; i < 3; ++i) a[i] = v[i][0] - p * v[i][3], bb[i] = v[i][1] - q * v[i][3];
    for (int i = 0; i < 3; ++i) {  // λ_i = a_j b_k − a_k b_j
      const int j = (i + 1) % 3, k = (i + 2) % 3;
      ga[j] += g_lam[i] * bb[k];
      gb[k] += g_lam[i] * a[j];
      ga[k] -= g_lam[i] * bb[j];
      gb[j] -= g_lam[i] * a[k];
    }
    for (int i = 0; i < 3; ++i) {
      T* g = grad_pos + 4 * t[i];
      g[0] += ga[i];
      g[1] += gb[i];
      g[2] += g_depth * s.lam[i];
      g[3] += gw[i] - p * ga[i] - q * gb[i];
    }
  }
}

at::Tensor raster_backward(const at::Tensor& grad_rast, const at::Tensor& pos_clip, const at::Tensor& tri, const at::Tensor& rast) {
  const auto pos = pos_clip.contiguous();
  const auto faces = tri.contiguous();
  const auto grad = grad_rast.contiguous();
  const auto r = rast.contiguous();
  const int64_t B = pos.size(0), V = pos.size(1), H = r.size(1), W = r.size(2);
  auto grad_pos = at::zeros_like(pos);
  AT_DISPATCH_FLOATING_TYPES(pos.scalar_type(), "raster_backward", [&] {
    per_image(B, [&](int64_t b) {
      backward_image(pos.data_ptr<scalar_t>() + b * V * 4, faces.data_ptr<int64_t>(), r.data_ptr<scalar_t>() + b * H * W * 4,
                     grad.data_ptr<scalar_t>() + b * H * W * 4, H, W, grad_pos.data_ptr<scalar_t>() + b * V * 4);
    });
  });
  return grad_pos;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(threestudio_like_cpu, m) {
  m.def("raster_forward(Tensor pos_clip, Tensor tri, int height, int width) -> Tensor");
  m.def("raster_backward(Tensor grad_rast, Tensor pos_clip, Tensor tri, Tensor rast) -> Tensor");
}

TORCH_LIBRARY_IMPL(threestudio_like_cpu, CPU, m) {
  m.impl("raster_forward", &raster_forward);
  m.impl("raster_backward", &raster_backward);
}
