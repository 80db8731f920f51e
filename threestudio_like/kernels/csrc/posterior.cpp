// The embedded prior's posterior mean in one pass over its references (a streaming softmax).
//
// The same function as exact_x0 in threestudio_like/priors/embedded.py: for row n (of unique
// noisy image u(n)) and reference i, L_ni = (√ᾱ_n x_u·r_i − (ᾱ_n/2)‖r_i‖²)/(1 − ᾱ_n) + log w_ni,
// and out_n = Σ_i softmax_i(L_n) r_i. The torch path reads the [K,D] references twice (the
// x·r products, then the posterior-weighted sum, each a GEMM); here each block of kBlock references
// is read from memory once: its products with every unique x, then, while it is still in cache, its
// terms of each row's sum. The sum is kept relative to a per-row base ≥ the running maximum − kSlack
// (raised, and the sums rescaled, only when the maximum passes it), so no exp overflows, and the
// normaliser sums every reference, as softmax does. A reference whose L is below the running
// maximum + log_cut is left out of the weighted sum (its posterior is below cut × the row's largest,
// since the running maximum only grows: never more than the torch path leaves out); references no
// row weighs (w = 0, L = −∞) are never read. A row with a NaN or +∞ logit gives NaN, as softmax does.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace {

constexpr int64_t kBlock = 8;   // references per block: 8·D floats stay in L2
constexpr int kLanes = 16;      // partial sums per product (one AVX-512 register of floats)
constexpr float kSlack = 30.f;  // exp(L − base) ≤ e^30 between rescales
constexpr int64_t kGroup = 8;   // rows whose sums share a register tile

// dots[j·NU + u] = x_u · r_j for NR references and NU rows of x (pointers), all of length D: a
// register tile, so each 16-float slice of an x row is loaded once for NR references and each slice
// of a reference once for NU rows. Fused multiply-adds (one rounding each, like a BLAS GEMM).
template <int NR, int NU>
void dot_tile(const float* const* rs, const float* const* xs, int64_t D, float* dots, int ld) {
  float acc[NR][NU][kLanes] = {};
  int64_t d = 0;
  for (; d + kLanes <= D; d += kLanes) {
    for (int j = 0; j < NR; ++j) {
      for (int u = 0; u < NU; ++u) {
#pragma omp simd
        for (int k = 0; k < kLanes; ++k) acc[j][u][k] = std::fma(xs[u][d + k], rs[j][d + k], acc[j][u][k]);
      }
    }
  }
  for (int j = 0; j < NR; ++j) {
    for (int u = 0; u < NU; ++u) {
      float s = 0.f;
      for (int k = 0; k < kLanes; ++k) s += acc[j][u][k];
      for (int64_t e = d; e < D; ++e) s = std::fma(xs[u][e], rs[j][e], s);
      dots[j * ld + u] = s;
    }
  }
}

template <int NR>
void dot_rows(const float* const* rs, const float* const* xs, int nu, int64_t D, float* dots, int ld) {
  for (int u = 0; u < nu; u += 4) {
    switch (nu - u >= 4 ? 4 : nu - u) {
      case 4: dot_tile<NR, 4>(rs, xs + u, D, dots + u, ld); break;
      case 3: dot_tile<NR, 3>(rs, xs + u, D, dots + u, ld); break;
      case 2: dot_tile<NR, 2>(rs, xs + u, D, dots + u, ld); break;
      default: dot_tile<NR, 1>(rs, xs + u, D, dots + u, ld); break;
    }
  }
}

// dots [nr][ld] of nr references (pointers) with nu rows of x, in tiles of 4 references × 4 rows.
void dots_of(const float* const* rs, int nr, const float* const* xs, int nu, int64_t D, float* dots, int ld) {
  for (int j = 0; j < nr; j += 4) {
    switch (nr - j >= 4 ? 4 : nr - j) {
      case 4: dot_rows<4>(rs + j, xs, nu, D, dots + j * ld, ld); break;
      case 3: dot_rows<3>(rs + j, xs, nu, D, dots + j * ld, ld); break;
      case 2: dot_rows<2>(rs + j, xs, nu, D, dots + j * ld, ld); break;
      default: dot_rows<1>(rs + j, xs, nu, D, dots + j * ld, ld); break;
    }
  }
}

// accs[n] += Σ_j p[j·ldp + n] r_j for NN rows and nr references: each 16-float slice of the rows
// stays in registers across the references (a zero p adds exactly nothing: the references are finite).
template <int NN>
void accumulate_tile(float* const* accs, const float* const* rs, int nr, const float* p, int ldp, int64_t D) {
  int64_t d = 0;
  for (; d + kLanes <= D; d += kLanes) {
    float acc[NN][kLanes];
    for (int n = 0; n < NN; ++n) {
#pragma omp simd
      for (int k = 0; k < kLanes; ++k) acc[n][k] = accs[n][d + k];
    }
    for (int j = 0; j < nr; ++j) {
      const float* r = rs[j] + d;
      for (int n = 0; n < NN; ++n) {
        const float pn = p[j * ldp + n];
#pragma omp simd
        for (int k = 0; k < kLanes; ++k) acc[n][k] = std::fma(pn, r[k], acc[n][k]);
      }
    }
    for (int n = 0; n < NN; ++n) {
#pragma omp simd
      for (int k = 0; k < kLanes; ++k) accs[n][d + k] = acc[n][k];
    }
  }
  for (; d < D; ++d) {
    for (int j = 0; j < nr; ++j) {
      for (int n = 0; n < NN; ++n) accs[n][d] = std::fma(p[j * ldp + n], rs[j][d], accs[n][d]);
    }
  }
}

void accumulate(float* const* accs, int nn, const float* const* rs, int nr, const float* p, int ldp, int64_t D) {
  switch (nn) {
    case 8: accumulate_tile<8>(accs, rs, nr, p, ldp, D); break;
    case 7: accumulate_tile<7>(accs, rs, nr, p, ldp, D); break;
    case 6: accumulate_tile<6>(accs, rs, nr, p, ldp, D); break;
    case 5: accumulate_tile<5>(accs, rs, nr, p, ldp, D); break;
    case 4: accumulate_tile<4>(accs, rs, nr, p, ldp, D); break;
    case 3: accumulate_tile<3>(accs, rs, nr, p, ldp, D); break;
    case 2: accumulate_tile<2>(accs, rs, nr, p, ldp, D); break;
    default: accumulate_tile<1>(accs, rs, nr, p, ldp, D); break;
  }
}

struct Row {
  float max = -std::numeric_limits<float>::infinity();   // running maximum of L
  float base = -std::numeric_limits<float>::infinity();  // the sums are relative to e^base
  double norm = 0.0;                                      // Σ e^{L − base}
  bool bad = false;                                       // a NaN or +∞ logit
};

// Raise row's base to its maximum when the maximum has passed base + kSlack: acc and norm rescaled.
void rebase(Row& row, float* acc, int64_t D) {
  if (!(row.max > row.base + kSlack)) return;
  if (row.norm != 0.0) {
    const float f = std::exp(row.base - row.max);
#pragma omp simd
    for (int64_t d = 0; d < D; ++d) acc[d] *= f;
    row.norm *= static_cast<double>(f);
  }
  row.base = row.max;
}

// One call's state: the inputs (x [U,D] the distinct centred noisy images, row_of [N] which of
// them each row is, √ᾱ, ᾱ/2, 1 − ᾱ [N] per row, log_w [N,K], refs [K,D], sq_norms [K]), the rows'
// running sums (acc [N,D], their Row) and one block's scratch.
struct Pass {
  int64_t U, D, N, K;
  const float *x, *refs, *log_w, *sq, *sqrt_a, *half_a, *one_minus_a;
  const int64_t* row_of;
  float log_cut;
  float* acc;
  std::vector<Row> rows;
  std::vector<float> dots, logits, p;
  std::vector<uint8_t> wanted;
  std::vector<int> slot, live;
  std::vector<const float*> xs, rs, kept;
  std::vector<float*> accs;
  int n_live = 0;

  void allocate() {
    rows.assign(N, Row{});
    dots.resize(kBlock * U), logits.resize(kBlock * N), p.resize(kBlock * kGroup);
    wanted.resize(U), slot.resize(U), live.resize(kBlock), xs.resize(U), rs.resize(kBlock), kept.resize(kBlock), accs.resize(kGroup);
  }

  // The logits [live][N] of block [i0, i0 + nb): only its references some row weighs (the others are
  // never read), their products with the distinct rows those rows read; each row's running maximum.
  void block_logits(int64_t i0, int64_t nb) {
    const float minus_inf = -std::numeric_limits<float>::infinity();
    std::fill(wanted.begin(), wanted.end(), 0);
    n_live = 0;
    for (int64_t j = 0; j < nb; ++j) {
      bool any = false;
      for (int64_t n = 0; n < N; ++n) {
        if (log_w[n * K + i0 + j] != minus_inf) any = true, wanted[row_of[n]] = 1;
      }
      if (any) rs[n_live] = refs + (i0 + j) * D, live[n_live++] = static_cast<int>(i0 + j);
    }
    if (n_live == 0) return;
    int nu = 0;
    for (int64_t u = 0; u < U; ++u) {
      if (wanted[u]) slot[u] = nu, xs[nu++] = x + u * D;
    }
    dots_of(rs.data(), n_live, xs.data(), nu, D, dots.data(), static_cast<int>(U));
    for (int j = 0; j < n_live; ++j) {
      const int64_t i = live[j];
      for (int64_t n = 0; n < N; ++n) {
        const float w = log_w[n * K + i];
        float L = minus_inf;
        if (w != minus_inf) {
          L = (sqrt_a[n] * dots[j * U + slot[row_of[n]]] - half_a[n] * sq[i]) / one_minus_a[n] + w;
          Row& row = rows[n];
          if (std::isnan(L) || L == std::numeric_limits<float>::infinity()) row.bad = true;
          else if (L > row.max) row.max = L;
        }
        logits[j * N + n] = L;
      }
    }
  }

  // The block's terms of each group of kGroup rows: every finite logit joins the normaliser, those
  // within log_cut of the running maximum the weighted sum (one register tile per group).
  void block_sums() {
    const float minus_inf = -std::numeric_limits<float>::infinity();
    for (int64_t g0 = 0; g0 < N; g0 += kGroup) {
      const int gn = static_cast<int>(std::min<int64_t>(kGroup, N - g0));
      for (int n = 0; n < gn; ++n) {
        accs[n] = acc + (g0 + n) * D;
        if (!rows[g0 + n].bad) rebase(rows[g0 + n], accs[n], D);
      }
      int nk = 0;
      for (int j = 0; j < n_live; ++j) {
        bool any = false;
        for (int n = 0; n < gn; ++n) {
          Row& row = rows[g0 + n];
          const float L = logits[j * N + g0 + n];
          float pn = 0.f;
          if (!row.bad && L != minus_inf) {
            const float e = std::exp(L - row.base);
            row.norm += e;
            if (L >= row.max + log_cut) pn = e, any = true;
          }
          p[nk * kGroup + n] = pn;
        }
        if (any) kept[nk++] = rs[j];
      }
      if (nk > 0) accumulate(accs.data(), gn, kept.data(), nk, p.data(), kGroup, D);
    }
  }

  // acc /= the normaliser; NaN rows where a logit was NaN or +∞.
  void normalise() {
    for (int64_t n = 0; n < N; ++n) {
      float* a = acc + n * D;
      const float inv = rows[n].bad ? std::numeric_limits<float>::quiet_NaN() : static_cast<float>(1.0 / rows[n].norm);
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) a[d] *= inv;
    }
  }
};

// → Σ_i p_ni r_i [N,D] (see Pass for the inputs).
at::Tensor posterior_mean(const at::Tensor& x_in, const at::Tensor& row_of_in, const at::Tensor& sqrt_a_in,
                          const at::Tensor& half_a_in, const at::Tensor& one_minus_a_in, const at::Tensor& log_w_in,
                          const at::Tensor& refs_in, const at::Tensor& sq_norms_in, double log_cut) {
  TORCH_CHECK(x_in.scalar_type() == at::kFloat && refs_in.scalar_type() == at::kFloat, "posterior_mean takes float32");
  const at::Tensor x = x_in.contiguous(), refs = refs_in.contiguous(), log_w = log_w_in.to(at::kFloat).contiguous();
  const at::Tensor row_of = row_of_in.to(at::kLong).contiguous(), sq_norms = sq_norms_in.to(at::kFloat).contiguous();
  const at::Tensor sqrt_a = sqrt_a_in.to(at::kFloat).contiguous(), half_a = half_a_in.to(at::kFloat).contiguous();
  const at::Tensor one_minus_a = one_minus_a_in.to(at::kFloat).contiguous();
  Pass pass;
  pass.U = x.size(0), pass.D = x.size(1), pass.N = row_of.size(0), pass.K = refs.size(0);
  TORCH_CHECK(refs.size(1) == pass.D && log_w.size(0) == pass.N && log_w.size(1) == pass.K && sq_norms.size(0) == pass.K,
              "posterior_mean: shapes disagree");
  at::Tensor out = at::zeros({pass.N, pass.D}, x.options());
  pass.x = x.data_ptr<float>(), pass.refs = refs.data_ptr<float>(), pass.log_w = log_w.data_ptr<float>();
  pass.sq = sq_norms.data_ptr<float>(), pass.sqrt_a = sqrt_a.data_ptr<float>(), pass.half_a = half_a.data_ptr<float>();
  pass.one_minus_a = one_minus_a.data_ptr<float>(), pass.row_of = row_of.data_ptr<int64_t>();
  pass.log_cut = static_cast<float>(log_cut), pass.acc = out.data_ptr<float>();
  pass.allocate();
  for (int64_t i0 = 0; i0 < pass.K; i0 += kBlock) {
    pass.block_logits(i0, std::min(kBlock, pass.K - i0));
    if (pass.n_live > 0) pass.block_sums();
  }
  pass.normalise();
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(threestudio_like_cpu, m) {
  m.def("posterior_mean(Tensor x, Tensor row_of, Tensor sqrt_a, Tensor half_a, Tensor one_minus_a, Tensor log_w, Tensor refs, Tensor sq_norms, float log_cut) -> Tensor");
}

TORCH_LIBRARY_IMPL(threestudio_like_cpu, CPU, m) {
  m.impl("posterior_mean", &posterior_mean);
}
