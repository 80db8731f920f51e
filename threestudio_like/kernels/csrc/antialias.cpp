// The mesh rasterizer's analytic antialiasing (threestudio_like/renderers/antialias.py) as one loop
// over the pixel pairs whose triangle ids differ, and its backward.
//
// Pairs in the torch path's order (every image's horizontal pairs, then every image's vertical ones),
// the same silhouette test, edge choice (the first largest crossing) and float operations in the same
// order (-ffp-contract=off), so the blended image is the torch path's bit for bit. Backward: the
// colours get g and, per blended pair, ±α·g of the target pixel's g; the clip positions get it through
// the crossing distance d = s·(x_j − y_j·Δx/Δy) (x, y swapped on vertical pairs) and the screen map
// x = ((x_c/w + 1)·½)·W − centre.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <tuple>
#include <vector>

namespace {

template <typename T>
struct Blend {
  int64_t p0, p1, target, vj, vk;  // pixels, the pixel that changes, the crossing edge's vertices (rows of B·V)
  bool down;
  T sign, alpha, distance, A, B, Cx, Cy;  // A, B = vertex j's along/across the pair, Cx, Cy vertex k's
  T wj, wk, xj, yj, xk, yk;               // the two vertices' clip w and x, y (for the backward)
};

template <typename T>
std::vector<Blend<T>> blends(const T* rast, const T* pos, const int64_t* tri, const int64_t* opposite, int64_t B,
                             int64_t H, int64_t W, int64_t V) {
  std::vector<Blend<T>> out;
  const T eps = T(1.0 / 16.0), size[2] = {T(W), T(H)};
  auto visit = [&](int64_t p0, int64_t p1, bool down) {
    const T *r0 = rast + 4 * p0, *r1 = rast + 4 * p1;
    const int64_t t0 = int64_t(r0[3]) - 1, t1 = int64_t(r1[3]) - 1;
    const bool from_first = t0 >= 0 && (t1 < 0 || r0[2] < r1[2]);
    const int64_t triangle = from_first ? t0 : t1, covering = from_first ? p0 : p1, batch = covering / (H * W);
    int64_t rows[6];
    for (int i = 0; i < 3; ++i) {
      const int64_t across = opposite[3 * triangle + i];
      rows[i] = batch * V + tri[3 * triangle + i];
      rows[3 + i] = batch * V + (across >= 0 ? across : tri[3 * triangle + i]);
    }
    for (int i = 0; i < 6; ++i)
      if (!(pos[4 * rows[i] + 3] > 0)) return;  // needs w > 0 for the pixel-space projection
    const T centre[2] = {T(covering % W) + T(0.5), T((covering / W) % H) + T(0.5)};
    T sx[6], sy[6];
    for (int i = 0; i < 6; ++i) {
      const T* v = pos + 4 * rows[i];
      sx[i] = (v[0] / v[3] + T(1)) * T(0.5) * size[0] - centre[0];
      sy[i] = (v[1] / v[3] + T(1)) * T(0.5) * size[1] - centre[1];
    }
    const T sign = from_first ? T(1) : T(-1);
    T at[3], dxs[3], dys[3];
    bool silhouette[3];
    for (int i = 0; i < 3; ++i) {
      const int j = (i + 1) % 3, k = (i + 2) % 3;
      const T own = (sx[j] - sx[i]) * (sy[k] - sy[i]) - (sx[k] - sx[i]) * (sy[j] - sy[i]);
      const T far = (sx[j] - sx[3 + i]) * (sy[k] - sy[3 + i]) - (sx[k] - sx[3 + i]) * (sy[j] - sy[3 + i]);
      silhouette[i] = own * far > 0;
      const T xj = down ? sy[j] : sx[j], yj = down ? sx[j] : sy[j], xk = down ? sy[k] : sx[k], yk = down ? sx[k] : sy[k];
      dxs[i] = xk - xj, dys[i] = yk - yj;
      const bool crosses = (yj < 0) != (yk < 0);
      at[i] = crosses ? sign * (xj - yj * dxs[i] / dys[i]) : -std::numeric_limits<T>::infinity();
    }
    int edge = 0;  // argmax: the first largest (a NaN counts as the largest, as torch's)
    for (int e = 1; e < 3; ++e)
      if (!std::isnan(at[edge]) && (std::isnan(at[e]) || at[e] > at[edge])) edge = e;
    const T distance = at[edge];
    const bool steep = std::fabs(dys[edge]) >= std::fabs(dxs[edge]);
    if (!(silhouette[edge] && steep && distance > -eps && distance < T(1) + eps)) return;
    Blend<T> b;
    b.p0 = p0, b.p1 = p1, b.down = down, b.sign = sign, b.distance = distance;
    const T clamped = distance < 0 ? T(0) : (distance > 1 ? T(1) : distance);
    b.alpha = sign * (T(0.5) - clamped);
    b.target = b.alpha > 0 ? p0 : p1;
    const int j = (edge + 1) % 3, k = (edge + 2) % 3;
    b.vj = rows[j], b.vk = rows[k];
    b.A = down ? sy[j] : sx[j], b.B = down ? sx[j] : sy[j], b.Cx = down ? sy[k] : sx[k], b.Cy = down ? sx[k] : sy[k];
    const T *vj = pos + 4 * rows[j], *vk = pos + 4 * rows[k];
    b.xj = vj[0], b.yj = vj[1], b.wj = vj[3], b.xk = vk[0], b.yk = vk[1], b.wk = vk[3];
    out.push_back(b);
  };
  const T* id = rast + 3;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t y = 0; y < H; ++y)
      for (int64_t x = 0; x + 1 < W; ++x) {
        const int64_t p = (b * H + y) * W + x;
        if (id[4 * p] != id[4 * (p + 1)]) visit(p, p + 1, false);
      }
  for (int64_t b = 0; b < B; ++b)
    for (int64_t y = 0; y + 1 < H; ++y)
      for (int64_t x = 0; x < W; ++x) {
        const int64_t p = (b * H + y) * W + x;
        if (id[4 * p] != id[4 * (p + W)]) visit(p, p + W, true);
      }
  return out;
}

std::vector<at::Tensor> checked(const at::Tensor& color, const at::Tensor& rast, const at::Tensor& pos, const at::Tensor& tri,
                                const at::Tensor& opposite) {
  TORCH_CHECK(color.dim() == 4 && rast.dim() == 4 && pos.dim() == 3 && color.scalar_type() == pos.scalar_type() &&
                  rast.scalar_type() == pos.scalar_type() && tri.scalar_type() == at::kLong && opposite.scalar_type() == at::kLong,
              "antialias: color [B,H,W,C], rast [B,H,W,4], pos_clip [B,V,4] of one float type, tri and opposite int64");
  return {color.contiguous(), rast.contiguous(), pos.contiguous(), tri.contiguous(), opposite.contiguous()};
}

at::Tensor antialias_forward(const at::Tensor& color_in, const at::Tensor& rast_in, const at::Tensor& pos_in,
                             const at::Tensor& tri_in, const at::Tensor& opposite_in) {
  const auto t = checked(color_in, rast_in, pos_in, tri_in, opposite_in);
  const at::Tensor &color = t[0], &rast = t[1], &pos = t[2];
  const int64_t B = color.size(0), H = color.size(1), W = color.size(2), C = color.size(3), V = pos.size(1);
  auto acc = at::zeros_like(color);
  AT_DISPATCH_FLOATING_TYPES(color.scalar_type(), "antialias_forward", [&] {
    const scalar_t* c = color.data_ptr<scalar_t>();
    scalar_t* a = acc.data_ptr<scalar_t>();
    for (const auto& b : blends(rast.data_ptr<scalar_t>(), pos.data_ptr<scalar_t>(), t[3].data_ptr<int64_t>(),
                                t[4].data_ptr<int64_t>(), B, H, W, V))
      for (int64_t ch = 0; ch < C; ++ch) a[b.target * C + ch] += b.alpha * (c[b.p1 * C + ch] - c[b.p0 * C + ch]);
  });
  return color + acc;
}

// ∂L/∂(color, pos_clip) from ∂L/∂out.
std::tuple<at::Tensor, at::Tensor> antialias_backward(const at::Tensor& grad_in, const at::Tensor& color_in, const at::Tensor& rast_in,
                                                      const at::Tensor& pos_in, const at::Tensor& tri_in, const at::Tensor& opposite_in) {
  const auto t = checked(color_in, rast_in, pos_in, tri_in, opposite_in);
  const at::Tensor &color = t[0], &rast = t[1], &pos = t[2];
  const auto grad = grad_in.contiguous();
  const int64_t B = color.size(0), H = color.size(1), W = color.size(2), C = color.size(3), V = pos.size(1);
  auto g_color = grad.clone();
  auto g_pos = at::zeros_like(pos);
  AT_DISPATCH_FLOATING_TYPES(color.scalar_type(), "antialias_backward", [&] {
    using T = scalar_t;
    const T *c = color.data_ptr<T>(), *g = grad.data_ptr<T>();
    T *gc = g_color.data_ptr<T>(), *gp = g_pos.data_ptr<T>();
    const T size[2] = {T(W), T(H)};
    for (const auto& b : blends(rast.data_ptr<T>(), pos.data_ptr<T>(), t[3].data_ptr<int64_t>(), t[4].data_ptr<int64_t>(), B, H, W, V)) {
      T g_alpha = 0;
      for (int64_t ch = 0; ch < C; ++ch) {
        const T up = g[b.target * C + ch];
        g_alpha += up * (c[b.p1 * C + ch] - c[b.p0 * C + ch]);
        gc[b.p1 * C + ch] += b.alpha * up;
        gc[b.p0 * C + ch] -= b.alpha * up;
      }
      if (!(b.distance >= 0 && b.distance <= 1)) continue;  // clamped: no gradient to the edge
      const T g_d = -b.sign * g_alpha;
      // d = s·(A − B·dx/dy), dx = Cx − A, dy = Cy − B
      const T dx = b.Cx - b.A, dy = b.Cy - b.B, s = b.sign * g_d;
      const T gA = s * (T(1) + b.B / dy), gCx = s * (-b.B / dy);
      const T gB = s * (-dx / dy - b.B * dx / (dy * dy)), gCy = s * (b.B * dx / (dy * dy));
      // back to screen x, y of vertices j, k (swapped on vertical pairs)
      const T gsx[2] = {b.down ? gB : gA, b.down ? gCy : gCx}, gsy[2] = {b.down ? gA : gB, b.down ? gCx : gCy};
      const T xs[2] = {b.xj, b.xk}, ys[2] = {b.yj, b.yk}, ws[2] = {b.wj, b.wk};
      const int64_t rows[2] = {b.vj, b.vk};
      for (int n = 0; n < 2; ++n) {  // s_x = ((x/w + 1)·½)·W − centre
        const T fx = T(0.5) * size[0] / ws[n], fy = T(0.5) * size[1] / ws[n];
        T* out = gp + 4 * rows[n];
        out[0] += gsx[n] * fx;
        out[1] += gsy[n] * fy;
        out[3] -= (gsx[n] * fx * xs[n] + gsy[n] * fy * ys[n]) / ws[n];
      }
    }
  });
  return {g_color, g_pos};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(threestudio_like_cpu, m) {
  m.def("antialias_forward(Tensor color, Tensor rast, Tensor pos_clip, Tensor tri, Tensor opposite) -> Tensor");
  m.def("antialias_backward(Tensor grad, Tensor color, Tensor rast, Tensor pos_clip, Tensor tri, Tensor opposite) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(threestudio_like_cpu, CPU, m) {
  m.impl("antialias_forward", &antialias_forward);
  m.impl("antialias_backward", &antialias_backward);
}
