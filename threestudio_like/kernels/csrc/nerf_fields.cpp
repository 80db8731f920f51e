// The implicit volume's fields from its network's outputs in one pass (geometry/nerf.py's torch
// path is ~12 small tensor operations forward and ~8 backward on [N] and [N,3] arrays):
//   density = inside ? act(raw₀ + bias(p)) : 0,  albedo = sigmoid(raw₁..₃),
// with bias(p) = scale·(1 − ‖p‖/std) (blob_magic3d), scale·exp(−0.5·‖p‖²/std²) (blob_dreamfusion)
// or 0; act = softplus (threshold 20, as F.softplus) or exp (whose gradient uses exp(min(x, 15)));
// inside = ‖p‖² ≤ r². The operations are the torch path's, in its order and float type, so the
// results agree to the last bit or two (libm against PyTorch's vectorised exp and log1p); the
// backward zeroes the gradient outside the ball before the activation's derivative, as autograd
// does through torch.where, so a NaN raw density still gives NaN there.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <tuple>

namespace {

enum Bias : int64_t { kNone = 0, kMagic3d = 1, kDreamfusion = 2 };
enum Activation : int64_t { kSoftplus = 0, kExp = 1 };

struct Spec {
  int64_t bias, activation;
  double scale, std, radius2;
};

template <typename S>
S squared_norm(const S* p) {
  return p[0] * p[0] + p[1] * p[1] + p[2] * p[2];
}

template <typename S>
S bias_of(const S* p, const Spec& spec) {
  if (spec.bias == kMagic3d) return S(spec.scale) * (S(1) - std::sqrt(squared_norm(p)) / S(spec.std));
  if (spec.bias == kDreamfusion) return S(spec.scale) * std::exp(S(-0.5) * squared_norm(p) / S(spec.std * spec.std));
  return S(0);
}

template <typename S>
S activate(S x, int64_t activation) {
  if (activation == kExp) return std::exp(x);
  return x > S(20) ? x : std::log1p(std::exp(x));
}

template <typename S>
S activation_backward(S grad, S x, int64_t activation) {
  if (activation == kExp) return grad * std::exp(std::min(x, S(15)));  // min keeps a NaN x, as clamp does
  const S z = std::exp(x);
  return x > S(20) ? grad : grad * z / (z + S(1));
}

template <typename S>
S sigmoid(S x) {
  return S(1) / (S(1) + std::exp(-x));
}

void check(const at::Tensor& raw, const at::Tensor& points) {
  TORCH_CHECK(raw.device().is_cpu() && raw.dim() == 2 && raw.size(1) == 4, "raw must be [N,4] on the CPU");
  TORCH_CHECK(points.dim() == 2 && points.size(1) == 3 && points.size(0) == raw.size(0) && points.scalar_type() == raw.scalar_type(),
              "points must be [N,3] of raw's dtype");
}

// raw [N,4] (the network's outputs), points [N,3] → density [N], albedo [N,3].
std::tuple<at::Tensor, at::Tensor> nerf_fields_forward(const at::Tensor& raw_in, const at::Tensor& points_in, int64_t bias,
                                                       double scale, double std_, int64_t activation, double radius2) {
  check(raw_in, points_in);
  const at::Tensor raw = raw_in.contiguous(), points = points_in.contiguous();
  const int64_t N = raw.size(0);
  const Spec spec{bias, activation, scale, std_, radius2};
  at::Tensor density = at::empty({N}, raw.options()), albedo = at::empty({N, 3}, raw.options());
  AT_DISPATCH_FLOATING_TYPES(raw.scalar_type(), "nerf_fields_forward", [&] {
    const scalar_t *r = raw.data_ptr<scalar_t>(), *p = points.data_ptr<scalar_t>();
    scalar_t *d = density.data_ptr<scalar_t>(), *a = albedo.data_ptr<scalar_t>();
    at::parallel_for(0, N, 4096, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const scalar_t* pi = p + 3 * i;
        const bool inside = squared_norm(pi) <= scalar_t(spec.radius2);
        d[i] = inside ? activate(r[4 * i] + bias_of(pi, spec), spec.activation) : scalar_t(0);
        for (int k = 0; k < 3; ++k) a[3 * i + k] = sigmoid(r[4 * i + 1 + k]);
      }
    });
  });
  return {density, albedo};
}

// ∂raw [N,4] from ∂density [N] and ∂albedo [N,3] (albedo: the forward's output).
at::Tensor nerf_fields_backward(const at::Tensor& raw_in, const at::Tensor& points_in, const at::Tensor& albedo_in,
                                const at::Tensor& g_density_in, const at::Tensor& g_albedo_in, int64_t bias, double scale,
                                double std_, int64_t activation, double radius2) {
  check(raw_in, points_in);
  const at::Tensor raw = raw_in.contiguous(), points = points_in.contiguous(), albedo = albedo_in.contiguous();
  const at::Tensor g_density = g_density_in.contiguous(), g_albedo = g_albedo_in.contiguous();
  const int64_t N = raw.size(0);
  TORCH_CHECK(albedo.sizes() == g_albedo.sizes() && albedo.size(0) == N && g_density.numel() == N, "gradients of the forward's outputs");
  const Spec spec{bias, activation, scale, std_, radius2};
  at::Tensor grad = at::empty({N, 4}, raw.options());
  AT_DISPATCH_FLOATING_TYPES(raw.scalar_type(), "nerf_fields_backward", [&] {
    const scalar_t *r = raw.data_ptr<scalar_t>(), *p = points.data_ptr<scalar_t>(), *a = albedo.data_ptr<scalar_t>();
    const scalar_t *gd = g_density.data_ptr<scalar_t>(), *ga = g_albedo.data_ptr<scalar_t>();
    scalar_t* g = grad.data_ptr<scalar_t>();
    at::parallel_for(0, N, 4096, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const scalar_t* pi = p + 3 * i;
        const scalar_t through = squared_norm(pi) <= scalar_t(spec.radius2) ? gd[i] : scalar_t(0);
        g[4 * i] = activation_backward(through, r[4 * i] + bias_of(pi, spec), spec.activation);
        for (int k = 0; k < 3; ++k) g[4 * i + 1 + k] = ga[3 * i + k] * (scalar_t(1) - a[3 * i + k]) * a[3 * i + k];
      }
    });
  });
  return grad;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(threestudio_like_cpu, m) {
  m.def("nerf_fields_forward(Tensor raw, Tensor points, int bias, float scale, float std, int activation, float radius2) -> (Tensor, Tensor)");
  m.def("nerf_fields_backward(Tensor raw, Tensor points, Tensor albedo, Tensor g_density, Tensor g_albedo, int bias, float scale, "
        "float std, int activation, float radius2) -> Tensor");
}

TORCH_LIBRARY_IMPL(threestudio_like_cpu, CPU, m) {
  m.impl("nerf_fields_forward", &nerf_fields_forward);
  m.impl("nerf_fields_backward", &nerf_fields_backward);
}
