// Multi-resolution hash encoding on the CPU: one pass per level over blocks of points instead of
// ~15 tensor passes over [L,8,N] arrays.
//
// The same function as threestudio_like/geometry/hashgrid.py, operation for operation in the same
// float type: scaled = x·N_l, lower = min(floor(scaled), N_l − 1), frac = scaled − lower; a dense
// level indexes vertex (x, y, z) as x + y(N+1) + z(N+1)², a hashed one as (x ⊕ y·π2 ⊕ z·π3) mod 2^k
// (only the low bits of the products matter, so 32-bit unsigned arithmetic gives the same index);
// corner c = 4·bx + 2·by + bz has weight wx·(wy·wz), and the corners are summed in that order, as
// the torch path's embedding_bag and index_add_ do. The per-block index and weight loops run across
// points so that the compiler vectorises them; the gathers and scatters stay scalar. The forward
// can write its features feature-major, the layout the fused MLP reads, and the backward reads its
// gradient in either layout. The backward
// pass gives each task whole levels: levels own disjoint table rows, so with several threads the
// scatter-add needs no atomics.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstdint>
#include <cstring>

namespace {

constexpr uint32_t kPrime1 = 2654435761u;
constexpr uint32_t kPrime2 = 805459861u;
constexpr int64_t kBlock = 64;  // a block's rows and weights stay in L1

struct Levels {
  c10::IntArrayRef resolutions;  // N_l of the active levels
  c10::IntArrayRef offsets;      // first table row of each level
  int64_t n_dense;               // levels [0, n_dense) are indexed densely
  uint32_t mask;                 // table size − 1 of a hashed level
};

// Table rows and trilinear weights of the 8 corners of up to kBlock points on one level.
template <typename scalar_t>
struct Block {
  int64_t count = 0;
  uint32_t row[8][kBlock];
  scalar_t weight[8][kBlock];
  scalar_t w[3][2][kBlock];  // per axis: (1 − frac, frac)

  // xs: the points' coordinates per axis ([3][N]), points [begin, begin + count).
  void fill(const scalar_t* xs, int64_t N, int64_t begin, int64_t n, const Levels& lv, int64_t level) {
    count = n;
    const int64_t res = lv.resolutions[level];
    const scalar_t r = static_cast<scalar_t>(res);
    const int32_t top = static_cast<int32_t>(res - 1);
    uint32_t lower[3][kBlock];
    for (int k = 0; k < 3; ++k) {
      const scalar_t* p = xs + k * N + begin;
      for (int64_t i = 0; i < n; ++i) {
        const scalar_t scaled = p[i] * r;
        // floor = truncation for scaled ≥ 0 (x is clamped to [0,1]); a NaN point reads row 0
        int32_t low = static_cast<int32_t>(scaled > 0 ? scaled : scalar_t(0));
        low = low < top ? low : top;
        const scalar_t frac = scaled - static_cast<scalar_t>(low);
        lower[k][i] = static_cast<uint32_t>(low);
        w[k][0][i] = scalar_t(1) - frac;
        w[k][1][i] = frac;
      }
    }
    const uint32_t offset = static_cast<uint32_t>(lv.offsets[level]);
    const uint32_t side = static_cast<uint32_t>(res + 1), side2 = side * side, mask = lv.mask;
    const bool dense = level < lv.n_dense;
    for (int c = 0; c < 8; ++c) {
      const uint32_t bx = (c >> 2) & 1, by = (c >> 1) & 1, bz = c & 1;
      uint32_t* rows = row[c];
      if (dense) {
        for (int64_t i = 0; i < n; ++i) rows[i] = offset + (lower[0][i] + bx) + (lower[1][i] + by) * side + (lower[2][i] + bz) * side2;
      } else {
        for (int64_t i = 0; i < n; ++i)
          rows[i] = offset + (((lower[0][i] + bx) ^ ((lower[1][i] + by) * kPrime1) ^ ((lower[2][i] + bz) * kPrime2)) & mask);
      }
      const scalar_t *wx = w[0][bx], *wy = w[1][by], *wz = w[2][bz];
      scalar_t* wc = weight[c];
      for (int64_t i = 0; i < n; ++i) wc[i] = wx[i] * (wy[i] * wz[i]);
    }
  }
};

// A table row's F features as one vector register (GCC/Clang vector extension): a corner's
// read-add-write is one load and one store, lane by lane the same float operations.
template <typename scalar_t, int F>
struct Row {
  typedef scalar_t type __attribute__((vector_size(sizeof(scalar_t) * F)));
  static type load(const scalar_t* p) {
    type v;
    std::memcpy(&v, p, sizeof(v));
    return v;
  }
  static void store(scalar_t* p, type v) { std::memcpy(p, &v, sizeof(v)); }
};

Levels levels_of(c10::IntArrayRef resolutions, c10::IntArrayRef offsets, int64_t n_dense, int64_t log2_size) {
  TORCH_CHECK(offsets.size() >= resolutions.size(), "one offset per active level");
  return Levels{resolutions, offsets, n_dense, static_cast<uint32_t>((int64_t(1) << log2_size) - 1)};
}

// The points per axis ([3,N], contiguous), after checking devices, shapes and dtypes.
at::Tensor axes_of(const at::Tensor& x, const at::Tensor& table) {
  TORCH_CHECK(x.device().is_cpu() && table.device().is_cpu(), "CPU tensors only");
  TORCH_CHECK(x.dim() == 2 && x.size(1) == 3, "points must be [N,3]");
  TORCH_CHECK(table.dim() == 2 && x.scalar_type() == table.scalar_type(), "table [T,F] of the points' dtype");
  TORCH_CHECK(table.size(0) < (int64_t(1) << 31), "at most 2^31 table rows");
  return x.t().contiguous();
}

// out[i·s_point + k·s_feature]: row-major [N, width] (s_feature = 1) or feature-major [width, N]
// (s_point = 1: the layout the fused MLP reads fastest).
template <typename scalar_t, int F>
void forward_levels(const scalar_t* xs, const scalar_t* table, scalar_t* out, int64_t s_point, int64_t s_feature, int64_t N,
                    const Levels& lv, int64_t L) {
  at::parallel_for(0, N, 4 * kBlock, [&](int64_t begin, int64_t end) {
    Block<scalar_t> b;
    for (int64_t level = 0; level < L; ++level) {  // level-outer: one level's rows stay in cache
      for (int64_t start = begin; start < end; start += kBlock) {
        const int64_t n = std::min(kBlock, end - start);
        b.fill(xs, N, start, n, lv, level);
        for (int64_t i = 0; i < n; ++i) {
          typename Row<scalar_t, F>::type acc = {};
          for (int c = 0; c < 8; ++c) acc += b.weight[c][i] * Row<scalar_t, F>::load(table + int64_t(b.row[c][i]) * F);
          scalar_t* dst = out + (start + i) * s_point + level * F * s_feature;
          if (s_feature == 1) {
            Row<scalar_t, F>::store(dst, acc);
          } else {
            for (int f = 0; f < F; ++f) dst[f * s_feature] = acc[f];
          }
        }
      }
    }
  });
}

// grad[i·s_point + k·s_feature]: the MLP's gradient arrives feature-major, the torch path's row-major.
template <typename scalar_t, int F>
void backward_table_levels(const scalar_t* xs, const scalar_t* grad, int64_t s_point, int64_t s_feature, scalar_t* out,
                           int64_t N, const Levels& lv, int64_t L) {
  at::parallel_for(0, L, 1, [&](int64_t first, int64_t last) {
    Block<scalar_t> b;
    for (int64_t level = first; level < last; ++level) {
      for (int64_t start = 0; start < N; start += kBlock) {
        const int64_t n = std::min(kBlock, N - start);
        b.fill(xs, N, start, n, lv, level);
        for (int64_t i = 0; i < n; ++i) {  // point-major, then corner: index_add_'s order
          typename Row<scalar_t, F>::type g;
          for (int f = 0; f < F; ++f) g[f] = grad[(start + i) * s_point + (level * F + f) * s_feature];
          for (int c = 0; c < 8; ++c) {
            scalar_t* dst = out + int64_t(b.row[c][i]) * F;
            Row<scalar_t, F>::store(dst, Row<scalar_t, F>::load(dst) + b.weight[c][i] * g);
          }
        }
      }
    }
  });
}

template <typename scalar_t, int F>
void backward_points_levels(const scalar_t* xs, const scalar_t* table, const scalar_t* grad, scalar_t* out,
                            int64_t N, int64_t width, const Levels& lv, int64_t L) {
  at::parallel_for(0, N, 4 * kBlock, [&](int64_t begin, int64_t end) {
    Block<scalar_t> b;
    for (int64_t start = begin; start < end; start += kBlock) {
      const int64_t n = std::min(kBlock, end - start);
      for (int64_t level = 0; level < L; ++level) {
        b.fill(xs, N, start, n, lv, level);
        const scalar_t r = static_cast<scalar_t>(lv.resolutions[level]);
        for (int64_t i = 0; i < n; ++i) {
          const scalar_t* g = grad + (start + i) * width + level * F;
          scalar_t d[3] = {0, 0, 0};
          for (int c = 0; c < 8; ++c) {
            const int bits[3] = {(c >> 2) & 1, (c >> 1) & 1, c & 1};
            scalar_t dot = 0;
            for (int f = 0; f < F; ++f) dot += table[int64_t(b.row[c][i]) * F + f] * g[f];
            for (int k = 0; k < 3; ++k) {  // ∂w_c/∂frac_k: ±1 times the other two axes' weights
              const int k1 = (k + 1) % 3, k2 = (k + 2) % 3;
              const scalar_t others = b.w[k1][bits[k1]][i] * b.w[k2][bits[k2]][i];
              d[k] += (bits[k] ? dot : -dot) * others;
            }
          }
          for (int k = 0; k < 3; ++k) out[(start + i) * 3 + k] += r * d[k];  // ∂scaled/∂x = N_l
        }
      }
    }
  });
}

// Calls fn.template operator()<scalar_t, F>() for the table's dtype and feature count.
template <typename Fn>
void dispatch(at::ScalarType dtype, int64_t F, const Fn& fn) {
  AT_DISPATCH_FLOATING_TYPES(dtype, "hash_encoding", [&] {
    switch (F) {
      case 1: fn.template operator()<scalar_t, 1>(); break;
      case 2: fn.template operator()<scalar_t, 2>(); break;
      case 4: fn.template operator()<scalar_t, 4>(); break;
      case 8: fn.template operator()<scalar_t, 8>(); break;
      default: TORCH_CHECK(false, "n_features_per_level must be 1, 2, 4 or 8, not ", F);
    }
  });
}

// x [N,3] in [0,1], table [T,F] → features [N, n_levels·F]; levels past the active ones are zero.
// feature_major: the same values as a [N, n_levels·F] view of a [n_levels·F, N] tensor.
at::Tensor hash_forward(const at::Tensor& x, const at::Tensor& table_in, c10::IntArrayRef resolutions,
                        c10::IntArrayRef offsets, int64_t n_dense, int64_t log2_size, int64_t n_levels, bool feature_major) {
  const at::Tensor xs = axes_of(x, table_in), table = table_in.contiguous();
  const int64_t N = x.size(0), F = table.size(1), L = static_cast<int64_t>(resolutions.size());
  const Levels lv = levels_of(resolutions, offsets, n_dense, log2_size);
  at::Tensor out = feature_major ? at::empty({n_levels * F, N}, table.options()) : at::zeros({N, n_levels * F}, table.options());
  if (feature_major) out.narrow(0, L * F, (n_levels - L) * F).zero_();
  dispatch(table.scalar_type(), F, [&]<typename scalar_t, int FF>() {
    forward_levels<scalar_t, FF>(xs.data_ptr<scalar_t>(), table.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(),
                                 feature_major ? 1 : n_levels * F, feature_major ? N : 1, N, lv, L);
  });
  return feature_major ? out.t() : out;
}

// ∂loss/∂table [n_rows,F] from grad [N, n_levels·F]: grad_table[row_c] += w_c · grad.
at::Tensor hash_backward_table(const at::Tensor& x, const at::Tensor& grad_in, c10::IntArrayRef resolutions,
                               c10::IntArrayRef offsets, int64_t n_dense, int64_t log2_size, int64_t n_rows, int64_t F) {
  const at::Tensor xs = axes_of(x, grad_in), grad = grad_in;
  TORCH_CHECK(grad.dim() == 2 && grad.size(0) == x.size(0), "grad must be [N, n_levels·F]");
  const int64_t N = x.size(0), L = static_cast<int64_t>(resolutions.size());
  const Levels lv = levels_of(resolutions, offsets, n_dense, log2_size);
  at::Tensor out = at::zeros({n_rows, F}, grad.options());
  dispatch(grad.scalar_type(), F, [&]<typename scalar_t, int FF>() {
    backward_table_levels<scalar_t, FF>(xs.data_ptr<scalar_t>(), grad.data_ptr<scalar_t>(), grad.stride(0), grad.stride(1),
                                        out.data_ptr<scalar_t>(), N, lv, L);
  });
  return out;
}

// ∂loss/∂x [N,3]: Σ_l N_l · Σ_c ⟨table[row_c], grad_l⟩ · ∂w_c/∂frac (the corner rows are piecewise constant).
at::Tensor hash_backward_points(const at::Tensor& x, const at::Tensor& table_in, const at::Tensor& grad_in,
                                c10::IntArrayRef resolutions, c10::IntArrayRef offsets, int64_t n_dense, int64_t log2_size) {
  const at::Tensor xs = axes_of(x, table_in), table = table_in.contiguous(), grad = grad_in.contiguous();
  const int64_t N = x.size(0), F = table.size(1), L = static_cast<int64_t>(resolutions.size());
  const Levels lv = levels_of(resolutions, offsets, n_dense, log2_size);
  at::Tensor out = at::zeros({N, 3}, x.options());
  dispatch(table.scalar_type(), F, [&]<typename scalar_t, int FF>() {
    backward_points_levels<scalar_t, FF>(xs.data_ptr<scalar_t>(), table.data_ptr<scalar_t>(), grad.data_ptr<scalar_t>(),
                                         out.data_ptr<scalar_t>(), N, grad.size(1), lv, L);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(threestudio_like_cpu, m) {
  m.def("hash_forward(Tensor x, Tensor table, int[] resolutions, int[] offsets, int n_dense, int log2_size, int n_levels, bool feature_major) -> Tensor");
  m.def("hash_backward_table(Tensor x, Tensor grad, int[] resolutions, int[] offsets, int n_dense, int log2_size, int n_rows, int F) -> Tensor");
  m.def("hash_backward_points(Tensor x, Tensor table, Tensor grad, int[] resolutions, int[] offsets, int n_dense, int log2_size) -> Tensor");
}

TORCH_LIBRARY_IMPL(threestudio_like_cpu, CPU, m) {
  m.impl("hash_forward", &hash_forward);
  m.impl("hash_backward_table", &hash_backward_table);
  m.impl("hash_backward_points", &hash_backward_points);
}
