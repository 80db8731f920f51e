// The export's visibility test (threestudio_like/export/visibility.py, seen_in_view over the
// covering cameras) as one loop per surface point: the cameras in order until one sees it.
//
// Per camera the caller gives what the torch code derives once (world → camera rows, the camera
// centre, the focal length in pixels, the rasterized depth image, inf where empty); the per-point
// test repeats the torch expressions in float32 in their order. The torch path multiplies the points
// by the rotation with a matrix product, whose sums the BLAS may round otherwise, so a point whose
// depth lies within rounding of the tolerance can be decided the other way (float rounding).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>

namespace {

at::Tensor seen_by_views(const at::Tensor& points_in, const at::Tensor& normals_in, const at::Tensor& w2c_in,
                         const at::Tensor& position_in, const at::Tensor& focal_in, const at::Tensor& drawn_in,
                         int64_t height, int64_t width, double near, double min_cosine, double tolerance_px) {
  TORCH_CHECK(points_in.scalar_type() == at::kFloat && drawn_in.scalar_type() == at::kFloat, "seen_by_views: float32 inputs");
  const auto points = points_in.contiguous(), normals = normals_in.contiguous(), w2c = w2c_in.to(at::kFloat).contiguous(),
             position = position_in.to(at::kFloat).contiguous(), drawn = drawn_in.contiguous();
  const auto focal = focal_in.to(at::kDouble).contiguous();
  const int64_t N = points.size(0), n_views = w2c.size(0), HW = height * width;
  auto seen = at::zeros({N}, points.options().dtype(at::kBool));
  const float *p = points.data_ptr<float>(), *n = normals.data_ptr<float>(), *M = w2c.data_ptr<float>(),
              *cam = position.data_ptr<float>(), *depth_image = drawn.data_ptr<float>();
  const double* f64 = focal.data_ptr<double>();
  bool* out = seen.data_ptr<bool>();
  const float near_f = float(near), cos_f = float(min_cosine), tol_f = float(tolerance_px);
  const float half_w = float(0.5 * double(width)), half_h = float(0.5 * double(height));
  for (int64_t i = 0; i < N; ++i) {
    const float* x = p + 3 * i;
    const float* nrm = n + 3 * i;
    for (int64_t v = 0; v < n_views && !out[i]; ++v) {
      const float* m = M + 16 * v;
      const float focal_f = float(f64[v]);
      float local[3];
      for (int r = 0; r < 3; ++r) local[r] = x[0] * m[4 * r] + x[1] * m[4 * r + 1] + x[2] * m[4 * r + 2] + m[4 * r + 3];
      const float depth = -local[2];
      const bool front = depth > near_f;
      const float safe = front ? depth : 1.0f;
      const float column = std::floor(focal_f * local[0] / safe + half_w);
      const float row = std::floor(-focal_f * local[1] / safe + half_h);
      if (!(front && column >= 0 && column < float(width) && row >= 0 && row < float(height))) continue;
      const int64_t pixel = int64_t(row) * width + int64_t(column);
      const float* c = cam + 3 * v;
      const float toward[3] = {c[0] - x[0], c[1] - x[1], c[2] - x[2]};
      const float length = std::sqrt(toward[0] * toward[0] + toward[1] * toward[1] + toward[2] * toward[2]);
      const float cosine = (nrm[0] * toward[0] + nrm[1] * toward[1] + nrm[2] * toward[2]) / std::max(length, 1e-12f);
      if (!(cosine >= cos_f)) continue;
      const float slope = std::sqrt(std::max(1.0f - cosine * cosine, 0.0f)) / std::max(cosine, cos_f);
      out[i] = depth <= depth_image[v * HW + pixel] + (tol_f + slope) * depth / focal_f;
    }
  }
  return seen;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(threestudio_like_cpu, m) {
  m.def("seen_by_views(Tensor points, Tensor normals, Tensor w2c, Tensor position, Tensor focal, Tensor drawn, int height, "
        "int width, float near, float min_cosine, float tolerance_px) -> Tensor");
}

TORCH_LIBRARY_IMPL(threestudio_like_cpu, CPU, m) {
  m.impl("seen_by_views", &seen_by_views);
}
