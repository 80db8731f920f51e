// The implicit volume's fields from its network's outputs in one pass (geometry/nerf.py's torch
// path is ~12 small tensor operations forward and ~8 backward on [N] and [N,3] arrays):
//   density = inside ? act(raw₀ + bias(p)) : 0,  albedo = sigmoid(raw₁..₃),
// with bias(p) = scale·(1 − ‖p‖/std) (blob_magic3d), scale·exp(−0.5·‖p‖²/std²) (blob_dreamfusion)
// or 0; act = softplus (threshold 20, as F.softplus) or exp (whose gradient uses exp(min(x, 15)));
// inside = ‖p‖² ≤ r². The operations are the torch path's, in its order and float type, so the
// results agree to the last bit or two (PyTorch's vectorised exp and log1p against, for float32,
// exp and log1p written here so that the loops vectorise, within 1 and 2.5 ulp; double uses libm); the
// backward zeroes the gradient outside the ball before the activation's derivative, as autograd
// does through torch.where, so a NaN raw density still gives NaN there.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <vector>

namespace {

// Inlined always: in a unit this size GCC otherwise calls them per element and the loops stay scalar.
#define ALWAYS_INLINE inline __attribute__((always_inline))

// --- float32 exp and log1p that vectorise (range reduction and Cephes' minimax polynomials) ------

ALWAYS_INLINE float bits_to_float(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }
ALWAYS_INLINE uint32_t float_to_bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }

// cond ? a : b as bit arithmetic: GCC would otherwise turn a select of a computed value into a
// branch around the computation, and the loop would not vectorise.
ALWAYS_INLINE float pick(bool cond, float a, float b) {
  const uint32_t mask = 0u - static_cast<uint32_t>(cond);
  return bits_to_float((float_to_bits(a) & mask) | (float_to_bits(b) & ~mask));
}

// e^x: NaN stays NaN, above 88.72 is +inf, results in the subnormal range are rounded once.
ALWAYS_INLINE float exp_f(float x) {
  float xc = x > -104.0f ? x : -104.0f;  // NaN → −104 here, restored at the end
  xc = xc < 88.8f ? xc : 88.8f;
  const float n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round to nearest (|·| < 2^22)
  float r = xc - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t e = static_cast<int32_t>(n);  // in [−150, 128]
  const int32_t e1 = e / 2, e2 = e - e1;      // each in [−75, 64]: both powers are normal floats
  const float result = p * bits_to_float(static_cast<uint32_t>(e1 + 127) << 23) * bits_to_float(static_cast<uint32_t>(e2 + 127) << 23);
  return pick(x != x, x, pick(x > 88.72283905206835f, INFINITY, result));
}

// log(x) for x > 0 finite.
ALWAYS_INLINE float log_pos(float x) {
  uint32_t u = float_to_bits(x);
  int32_t e = static_cast<int32_t>(u >> 23) - 126;  // x = m · 2^e, m in [0.5, 1)
  float m = bits_to_float((u & 0x007fffffu) | 0x3f000000u);
  const bool small = m < 0.707106781186547524f;
  e = small ? e - 1 : e;
  m = small ? m + m - 1.0f : m - 1.0f;  // m − 1 in [sqrt(0.5) − 1, sqrt(2) − 1)
  const float z = m * m;
  float y = 7.0376836292e-2f;
  y = y * m - 1.1514610310e-1f;
  y = y * m + 1.1676998740e-1f;
  y = y * m - 1.2420140846e-1f;
  y = y * m + 1.4249322787e-1f;
  y = y * m - 1.6668057665e-1f;
  y = y * m + 2.0000714765e-1f;
  y = y * m - 2.4999993993e-1f;
  y = y * m + 3.3333331174e-1f;
  y = y * m * z;
  const float fe = static_cast<float>(e);
  y = y + fe * -2.12194440e-4f;
  y = y - 0.5f * z;
  return m + y + fe * 0.693359375f;
}

// log(1 + y) for y ≥ 0 (y = e^x): log(u)·y/(u − 1) with u = 1 + y corrects u's rounding.
ALWAYS_INLINE float log1p_pos(float y) {
  const float u = 1.0f + y;
  const float d = u - 1.0f;
  const float l = log_pos(u);
  const float ratio = y / (d + static_cast<float>(d == 0.0f));  // every lane divides (by 1 where d = 0): no branch
  const float v = l * ratio;
  return pick((d == 0.0f) | (y == INFINITY), y, v);
}

ALWAYS_INLINE float exp_of(float x) { return exp_f(x); }
ALWAYS_INLINE double exp_of(double x) { return std::exp(x); }
ALWAYS_INLINE float log1p_of(float y) { return log1p_pos(y); }  // y = e^x ≥ 0 (or NaN) here
ALWAYS_INLINE double log1p_of(double y) { return std::log1p(y); }
ALWAYS_INLINE float select(bool c, float a, float b) { return pick(c, a, b); }
ALWAYS_INLINE double select(bool c, double a, double b) { return c ? a : b; }

enum Bias : int64_t { kNone = 0, kMagic3d = 1, kDreamfusion = 2 };
enum Activation : int64_t { kSoftplus = 0, kExp = 1 };

struct Spec {
  int64_t bias, activation;
  double scale, std, radius2;
};

template <typename S>
ALWAYS_INLINE S squared_norm(const S* p) {
  return p[0] * p[0] + p[1] * p[1] + p[2] * p[2];
}

// The bias, the activation and their derivative; B and A are compile-time so the loops have no branch.
template <typename S, int64_t B>
ALWAYS_INLINE S bias_of(const S* p, const Spec& spec) {
  if constexpr (B == kMagic3d) return S(spec.scale) * (S(1) - std::sqrt(squared_norm(p)) / S(spec.std));
  if constexpr (B == kDreamfusion) return S(spec.scale) * exp_of(S(-0.5) * squared_norm(p) / S(spec.std * spec.std));
  return S(0);
}

template <typename S, int64_t A>
ALWAYS_INLINE S activate(S x) {
  if constexpr (A == kExp) return exp_of(x);
  return select(x > S(20), x, log1p_of(exp_of(x)));
}

template <typename S, int64_t A>
ALWAYS_INLINE S activation_backward(S grad, S x) {
  if constexpr (A == kExp) return grad * exp_of(select(x > S(15), S(15), x));  // keeps a NaN x, as clamp does
  const S z = exp_of(x);
  return select(x > S(20), grad, grad * z / (z + S(1)));
}

template <typename S>
ALWAYS_INLINE S sigmoid(S x) {
  return S(1) / (S(1) + exp_of(-x));
}

// Calls fn.template operator()<B, A>() for the spec's bias and activation.
template <typename Fn>
void dispatch_spec(const Spec& spec, const Fn& fn) {
  TORCH_CHECK(spec.bias >= kNone && spec.bias <= kDreamfusion && (spec.activation == kSoftplus || spec.activation == kExp),
              "unknown density bias or activation");
  const bool soft = spec.activation == kSoftplus;
  if (spec.bias == kNone) soft ? fn.template operator()<kNone, kSoftplus>() : fn.template operator()<kNone, kExp>();
  if (spec.bias == kMagic3d) soft ? fn.template operator()<kMagic3d, kSoftplus>() : fn.template operator()<kMagic3d, kExp>();
  if (spec.bias == kDreamfusion) soft ? fn.template operator()<kDreamfusion, kSoftplus>() : fn.template operator()<kDreamfusion, kExp>();
}

// Each step a plain loop over contiguous values, so that the float32 exp and log1p vectorise: the
// pre-activations (and the raw albedo) are gathered into the outputs first, then transformed in place.
template <typename S, int64_t B, int64_t A>
void forward_rows(const S* r, const S* p, S* d, S* a, int64_t begin, int64_t end, const Spec& spec) {
  for (int64_t i = begin; i < end; ++i) {
    d[i] = r[4 * i] + bias_of<S, B>(p + 3 * i, spec);
    for (int k = 0; k < 3; ++k) a[3 * i + k] = r[4 * i + 1 + k];
  }
#pragma omp simd
  for (int64_t i = begin; i < end; ++i) d[i] = activate<S, A>(d[i]);
#pragma omp simd
  for (int64_t j = 3 * begin; j < 3 * end; ++j) a[j] = sigmoid(a[j]);
#pragma omp simd
  for (int64_t i = begin; i < end; ++i) d[i] = select(squared_norm(p + 3 * i) <= S(spec.radius2), d[i], S(0));
}

template <typename S, int64_t B, int64_t A>
void backward_rows(const S* r, const S* p, const S* a, const S* gd, const S* ga, S* g, S* scratch, int64_t begin, int64_t end,
                   const Spec& spec) {
  for (int64_t i = begin; i < end; ++i) {
    scratch[i - begin] = r[4 * i] + bias_of<S, B>(p + 3 * i, spec);
    for (int k = 0; k < 3; ++k) g[4 * i + 1 + k] = ga[3 * i + k] * (S(1) - a[3 * i + k]) * a[3 * i + k];
  }
#pragma omp simd
  for (int64_t i = begin; i < end; ++i) {
    const S through = select(squared_norm(p + 3 * i) <= S(spec.radius2), gd[i], S(0));
    scratch[i - begin] = activation_backward<S, A>(through, scratch[i - begin]);
  }
  for (int64_t i = begin; i < end; ++i) g[4 * i] = scratch[i - begin];
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
    dispatch_spec(spec, [&]<int64_t B, int64_t A>() {
      at::parallel_for(0, N, 4096, [&](int64_t begin, int64_t end) { forward_rows<scalar_t, B, A>(r, p, d, a, begin, end, spec); });
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
    dispatch_spec(spec, [&]<int64_t B, int64_t A>() {
      at::parallel_for(0, N, 4096, [&](int64_t begin, int64_t end) {
        std::vector<scalar_t> scratch(end - begin);
        backward_rows<scalar_t, B, A>(r, p, a, gd, ga, g, scratch.data(), begin, end, spec);
      });
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
