// The volume renderer's CPU path as three loops: fixed-step marching through the ball and the
// occupancy grid, packed transmittance weights, and compositing into rays (each with its backward).
//
// The marching repeats threestudio_like/renderers/volume.py operation for operation in the rays'
// float type (the same roundings, so the same samples are kept): from the caller's near/far (the
// torch ray–ball test, whose vectorised sqrt a libm call need not match to the last bit), interval k starts at near + k·Δ and ends at min(start + Δ, far), the sample at
// start + u·δ (u the caller's uniform draw, or ½), its cell ⌊(p/radius + 1)·r/2⌋ clamped per axis.
// Samples come out packed and sorted by ray. Weights: α_i = 1 − e^{−σ_i δ_i}, T_i = e^{−Σ_{j<i} σ_j δ_j}
// (the sum in float64 along the ray), w_i = T_i α_i; backward ∂L/∂τ_j = g_j T_j e^{−τ_j} − Σ_{i>j} g_i w_i.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <tuple>
#include <vector>

namespace {

template <typename scalar_t>
struct March {
  scalar_t radius, step, half_res;
  int64_t S, res;
  const scalar_t *o, *d, *near, *far;  // rays [R,3]; where they enter and leave the ball [R]
  const bool* hit;                      // [R]
  const scalar_t* jitter;               // [R,S] uniform draws, or null for midpoints
  const bool* occupied;                 // [res³] occupancy bits, or null (no culling)
};

// One ray's S candidates, computed in loops across them (so that they vectorise); then the kept
// ones are read out in order.
template <typename scalar_t>
struct Candidates {
  std::vector<scalar_t> t, delta, p[3];
  std::vector<int32_t> cell;
  std::vector<uint8_t> keep;

  explicit Candidates(int64_t S) : t(S), delta(S), cell(S), keep(S) {
    for (auto& axis : p) axis.resize(S);
  }

  // The candidates of ray i → how many are kept.
  int64_t fill(const March<scalar_t>& m, int64_t i) {
    if (!m.hit[i]) return 0;
    const int64_t S = m.S;
    const scalar_t near = m.near[i], far = m.far[i], step = m.step;
    const scalar_t* u = m.jitter ? m.jitter + i * S : nullptr;
    scalar_t *tp = t.data(), *dp = delta.data();
    uint8_t* kp = keep.data();
    for (int64_t k = 0; k < S; ++k) {
      const scalar_t start = near + static_cast<scalar_t>(k) * step;
      const scalar_t end = start + step;
      scalar_t dl = (end < far ? end : far) - start;
      dl = dl > 0 ? dl : scalar_t(0);
      tp[k] = start + (u ? u[k] : scalar_t(0.5)) * dl;
      dp[k] = dl;
      kp[k] = start < far;
    }
    int32_t* cp = cell.data();
    for (int64_t k = 0; k < S; ++k) cp[k] = 0;
    const scalar_t top = static_cast<scalar_t>(m.res - 1);
    for (int a = 0; a < 3; ++a) {
      const scalar_t oa = m.o[3 * i + a], da = m.d[3 * i + a];
      scalar_t* pa = p[a].data();
      for (int64_t k = 0; k < S; ++k) {
        pa[k] = oa + tp[k] * da;
        // ⌊·⌋ toward zero, then clamped: the same as clamping first (a NaN lands in cell 0)
        scalar_t c = (pa[k] / m.radius + scalar_t(1)) * m.half_res;
        c = c > 0 ? c : scalar_t(0);
        c = c < top ? c : top;
        cp[k] = cp[k] * static_cast<int32_t>(m.res) + static_cast<int32_t>(c);
      }
    }
    if (m.occupied)
      for (int64_t k = 0; k < S; ++k) kp[k] = kp[k] & static_cast<uint8_t>(m.occupied[cp[k]]);
    int64_t n = 0;
    for (int64_t k = 0; k < S; ++k) n += kp[k];
    return n;
  }
};

// o, d [R,3]; near, far [R] and hit [R] (bool) from the ray–ball test; jitter [R,S] or None;
// binaries [res,res,res] (bool) or None → ray [M] (int64), t [M], delta [M], points [M,3] of the
// kept samples, sorted by ray.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> volume_march(
    const at::Tensor& o_in, const at::Tensor& d_in, const at::Tensor& near_in, const at::Tensor& far_in,
    const at::Tensor& hit_in, const std::optional<at::Tensor>& jitter_in, double radius, double step, int64_t S,
    const std::optional<at::Tensor>& binaries_in) {
  TORCH_CHECK(o_in.dim() == 2 && o_in.size(1) == 3 && d_in.sizes() == o_in.sizes(), "rays o, d must be [R,3]");
  const int64_t R = o_in.size(0);
  TORCH_CHECK(near_in.numel() == R && far_in.numel() == R && hit_in.numel() == R && hit_in.scalar_type() == at::kBool,
              "near, far [R] and hit [R] (bool)");
  for (const at::Tensor* x : {&d_in, &near_in, &far_in})
    TORCH_CHECK(x->scalar_type() == o_in.scalar_type(), "o, d, near, far of one dtype");
  const at::Tensor o = o_in.contiguous(), d = d_in.contiguous(), near = near_in.contiguous(), far = far_in.contiguous();
  const at::Tensor hit = hit_in.contiguous();
  at::Tensor jitter, binaries;
  if (jitter_in.has_value()) {
    jitter = jitter_in->contiguous();
    TORCH_CHECK(jitter.scalar_type() == o.scalar_type() && jitter.numel() == R * S, "jitter must be [R,S] of the rays' dtype");
  }
  if (binaries_in.has_value()) {
    binaries = binaries_in->contiguous();
    TORCH_CHECK(binaries.scalar_type() == at::kBool && binaries.dim() == 3, "binaries must be a bool [r,r,r] grid");
  }
  std::vector<int64_t> first(R + 1, 0);
  at::Tensor ray, t, delta, points;
  AT_DISPATCH_FLOATING_TYPES(o.scalar_type(), "volume_march", [&] {
    const int64_t res = binaries.defined() ? binaries.size(0) : 1;
    const March<scalar_t> m{static_cast<scalar_t>(radius), static_cast<scalar_t>(step), static_cast<scalar_t>(0.5 * res), S, res,
                            o.data_ptr<scalar_t>(), d.data_ptr<scalar_t>(), near.data_ptr<scalar_t>(), far.data_ptr<scalar_t>(),
                            hit.data_ptr<bool>(), jitter.defined() ? jitter.data_ptr<scalar_t>() : nullptr,
                            binaries.defined() ? binaries.data_ptr<bool>() : nullptr};
    at::parallel_for(0, R, 256, [&](int64_t begin, int64_t end) {  // pass 1: samples per ray
      Candidates<scalar_t> c(S);
      for (int64_t i = begin; i < end; ++i) first[i + 1] = c.fill(m, i);
    });
    for (int64_t i = 0; i < R; ++i) first[i + 1] += first[i];
    const int64_t M = first[R];
    ray = at::empty({M}, o.options().dtype(at::kLong));
    t = at::empty({M}, o.options());
    delta = at::empty({M}, o.options());
    points = at::empty({M, 3}, o.options());
    int64_t* rp = ray.data_ptr<int64_t>();
    scalar_t *tp = t.data_ptr<scalar_t>(), *dlp = delta.data_ptr<scalar_t>(), *pp = points.data_ptr<scalar_t>();
    at::parallel_for(0, R, 256, [&](int64_t begin, int64_t end) {  // pass 2: the same candidates, written out
      Candidates<scalar_t> c(S);
      for (int64_t i = begin; i < end; ++i) {
        if (first[i + 1] == first[i]) continue;
        c.fill(m, i);
        int64_t j = first[i];
        for (int64_t k = 0; k < S; ++k) {
          if (!c.keep[k]) continue;
          rp[j] = i, tp[j] = c.t[k], dlp[j] = c.delta[k];
          for (int a = 0; a < 3; ++a) pp[3 * j + a] = c.p[a][k];
          ++j;
        }
      }
    });
  });
  return {ray, t, delta, points};
}

// sigma, delta [M], ray [M] sorted → w [M], T [M] (the transmittance before each sample).
std::tuple<at::Tensor, at::Tensor> packed_weights_forward(const at::Tensor& sigma_in, const at::Tensor& delta_in, const at::Tensor& ray_in) {
  const at::Tensor sigma = sigma_in.contiguous(), delta = delta_in.contiguous(), ray = ray_in.contiguous();
  TORCH_CHECK(sigma.dim() == 1 && delta.sizes() == sigma.sizes() && ray.sizes() == sigma.sizes(), "sigma, delta, ray must be [M]");
  TORCH_CHECK(ray.scalar_type() == at::kLong && delta.scalar_type() == sigma.scalar_type(), "int64 rays, delta of sigma's dtype");
  const int64_t M = sigma.size(0);
  at::Tensor w = at::empty_like(sigma), trans = at::empty_like(sigma);
  AT_DISPATCH_FLOATING_TYPES(sigma.scalar_type(), "packed_weights_forward", [&] {
    const scalar_t *s = sigma.data_ptr<scalar_t>(), *dl = delta.data_ptr<scalar_t>();
    const int64_t* r = ray.data_ptr<int64_t>();
    scalar_t *wp = w.data_ptr<scalar_t>(), *tp = trans.data_ptr<scalar_t>();
    double optical = 0.0;
    for (int64_t i = 0; i < M; ++i) {
      if (i > 0 && r[i] != r[i - 1]) optical = 0.0;  // a new ray
      const scalar_t tau = s[i] * dl[i];
      tp[i] = std::exp(-static_cast<scalar_t>(optical));
      wp[i] = tp[i] * (scalar_t(1) - std::exp(-tau));
      optical += static_cast<double>(tau);
    }
  });
  return {w, trans};
}

// ∂L/∂σ [M] from ∂L/∂w [M] (see the file's comment), with the forward's w and T.
at::Tensor packed_weights_backward(const at::Tensor& grad_in, const at::Tensor& sigma_in, const at::Tensor& delta_in,
                                   const at::Tensor& ray_in, const at::Tensor& w_in, const at::Tensor& trans_in) {
  const at::Tensor grad = grad_in.contiguous(), sigma = sigma_in.contiguous(), delta = delta_in.contiguous();
  const at::Tensor ray = ray_in.contiguous(), w = w_in.contiguous(), trans = trans_in.contiguous();
  const int64_t M = sigma.size(0);
  at::Tensor out = at::empty_like(sigma);
  AT_DISPATCH_FLOATING_TYPES(sigma.scalar_type(), "packed_weights_backward", [&] {
    const scalar_t *g = grad.data_ptr<scalar_t>(), *s = sigma.data_ptr<scalar_t>(), *dl = delta.data_ptr<scalar_t>();
    const scalar_t *wp = w.data_ptr<scalar_t>(), *tp = trans.data_ptr<scalar_t>();
    const int64_t* r = ray.data_ptr<int64_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    double later = 0.0;  // Σ_{i>j} g_i w_i over the ray's later samples
    for (int64_t j = M - 1; j >= 0; --j) {
      if (j < M - 1 && r[j] != r[j + 1]) later = 0.0;
      const scalar_t tau = s[j] * dl[j];
      const scalar_t grad_tau = g[j] * (tp[j] * std::exp(-tau)) - static_cast<scalar_t>(later);
      op[j] = grad_tau * dl[j];
      later += static_cast<double>(g[j] * wp[j]);
    }
  });
  return out;
}

// ray [M], w, t [M], color [M,3] → rgb [R,3] = Σ w·c, opacity [R,1] = Σ w, depth [R,1] = Σ w·t.
std::tuple<at::Tensor, at::Tensor, at::Tensor> composite_forward(const at::Tensor& ray_in, const at::Tensor& w_in, const at::Tensor& t_in,
                                                                 const at::Tensor& color_in, int64_t n_rays) {
  const at::Tensor ray = ray_in.contiguous(), w = w_in.contiguous(), t = t_in.contiguous(), color = color_in.contiguous();
  TORCH_CHECK(color.dim() == 2 && color.size(1) == 3 && color.size(0) == w.size(0), "color must be [M,3]");
  TORCH_CHECK(w.scalar_type() == color.scalar_type() && t.scalar_type() == w.scalar_type(), "w, t, color of one dtype");
  const int64_t M = w.size(0);
  at::Tensor rgb = at::zeros({n_rays, 3}, w.options()), opacity = at::zeros({n_rays, 1}, w.options());
  at::Tensor depth = at::zeros({n_rays, 1}, w.options());
  AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "composite_forward", [&] {
    const scalar_t *wp = w.data_ptr<scalar_t>(), *tp = t.data_ptr<scalar_t>(), *cp = color.data_ptr<scalar_t>();
    const int64_t* r = ray.data_ptr<int64_t>();
    scalar_t *rgbp = rgb.data_ptr<scalar_t>(), *opp = opacity.data_ptr<scalar_t>(), *dp = depth.data_ptr<scalar_t>();
    for (int64_t i = 0; i < M; ++i) {
      const int64_t k = r[i];
      TORCH_CHECK(k >= 0 && k < n_rays, "ray index ", k, " outside [0, ", n_rays, ")");
      for (int a = 0; a < 3; ++a) rgbp[3 * k + a] += wp[i] * cp[3 * i + a];
      opp[k] += wp[i];
      dp[k] += wp[i] * tp[i];
    }
  });
  return {rgb, opacity, depth};
}

// (∂L/∂w [M], ∂L/∂color [M,3]) from the gradients of rgb [R,3], opacity [R,1], depth [R,1].
std::tuple<at::Tensor, at::Tensor> composite_backward(const at::Tensor& g_rgb_in, const at::Tensor& g_op_in, const at::Tensor& g_depth_in,
                                                      const at::Tensor& ray_in, const at::Tensor& w_in, const at::Tensor& t_in,
                                                      const at::Tensor& color_in) {
  const at::Tensor g_rgb = g_rgb_in.contiguous(), g_op = g_op_in.contiguous(), g_depth = g_depth_in.contiguous();
  const at::Tensor ray = ray_in.contiguous(), w = w_in.contiguous(), t = t_in.contiguous(), color = color_in.contiguous();
  const int64_t M = w.size(0);
  at::Tensor grad_w = at::empty_like(w), grad_color = at::empty_like(color);
  AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "composite_backward", [&] {
    const scalar_t *gr = g_rgb.data_ptr<scalar_t>(), *go = g_op.data_ptr<scalar_t>(), *gd = g_depth.data_ptr<scalar_t>();
    const scalar_t *wp = w.data_ptr<scalar_t>(), *tp = t.data_ptr<scalar_t>(), *cp = color.data_ptr<scalar_t>();
    const int64_t* r = ray.data_ptr<int64_t>();
    scalar_t *gw = grad_w.data_ptr<scalar_t>(), *gc = grad_color.data_ptr<scalar_t>();
    at::parallel_for(0, M, 4096, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const int64_t k = r[i];
        scalar_t sum = 0;
        for (int a = 0; a < 3; ++a) {
          sum += gr[3 * k + a] * cp[3 * i + a];
          gc[3 * i + a] = wp[i] * gr[3 * k + a];
        }
        gw[i] = sum + go[k] + gd[k] * tp[i];
      }
    });
  });
  return {grad_w, grad_color};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(threestudio_like_cpu, m) {
  m.def("volume_march(Tensor o, Tensor d, Tensor near, Tensor far, Tensor hit, Tensor? jitter, float radius, float step, int S, Tensor? binaries) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("packed_weights_forward(Tensor sigma, Tensor delta, Tensor ray) -> (Tensor, Tensor)");
  m.def("packed_weights_backward(Tensor grad, Tensor sigma, Tensor delta, Tensor ray, Tensor w, Tensor trans) -> Tensor");
  m.def("composite_forward(Tensor ray, Tensor w, Tensor t, Tensor color, int n_rays) -> (Tensor, Tensor, Tensor)");
  m.def("composite_backward(Tensor g_rgb, Tensor g_opacity, Tensor g_depth, Tensor ray, Tensor w, Tensor t, Tensor color) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(threestudio_like_cpu, CPU, m) {
  m.impl("volume_march", &volume_march);
  m.impl("packed_weights_forward", &packed_weights_forward);
  m.impl("packed_weights_backward", &packed_weights_backward);
  m.impl("composite_forward", &composite_forward);
  m.impl("composite_backward", &composite_backward);
}
