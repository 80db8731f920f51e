// A fully fused MLP on the CPU (bias-free Linear–ReLU–…–Linear, as geometry/nerf.py's make_mlp
// builds it): forward and backward over tiles of rows that stay in L1 through every layer, in
// the manner of tiny-cuda-nn's fully fused MLP on the GPU.
//
// Inside a tile the activations are feature-major ([width][rows]), so every layer is
// out[o][:] = Σ_k W[o][k] · in[k][:] with the vector lanes across rows: any width vectorises,
// down to the 4-wide output layer. A forward pass that autograd will differentiate keeps the
// tiles' hidden activations (written once, read once by the backward: cheaper than computing
// them again, the widest layer); otherwise the backward recomputes them tile by tile from the
// input. The weights' gradients are accumulated lane-wise in per-chunk vectors
// and reduced once at the end. The sums run in a different order than a BLAS matrix product (and
// with fused multiply-adds, which this file enables), so they agree with the torch path to float
// rounding. ReLU keeps NaN (v < 0 ? 0 : v) and its backward zeroes where the output is ≤ 0, as
// torch's relu and threshold_backward do.
#if defined(__clang__)
#pragma clang fp contract(fast)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=fast")
#endif

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstdint>
#include <cstring>
#include <tuple>
#include <vector>

namespace {

#if defined(__AVX512F__)
constexpr int kVectorBytes = 64;
#elif defined(__AVX__)
constexpr int kVectorBytes = 32;
#else
constexpr int kVectorBytes = 16;
#endif
constexpr int kTileVectors = 8;  // a tile's rows: 8 vectors (128 floats with AVX-512)
constexpr int kHalf = kTileVectors / 2;
constexpr int kOuterRows = 2;  // rows of A per pass of outer(): each load of B serves both

template <typename S>
struct Simd {
  static constexpr int lanes = kVectorBytes / static_cast<int>(sizeof(S));
  static constexpr int rows = lanes * kTileVectors;
  typedef S vec __attribute__((vector_size(kVectorBytes)));
};
template <typename S>
using Vec = typename Simd<S>::vec;

// One weight matrix as read by a product: W(o, k) = data[o·so + k·sk] (so W or its transpose).
template <typename S>
struct Matrix {
  const S* data;
  int64_t n_out, n_in, so, sk;
};

// out[o][:] = Σ_k W(o,k) · in[k][:] on one tile; in [n_in][kTileVectors], out [n_out][kTileVectors]
// vectors. Four outputs × half a tile = 16 accumulators, each a chain over k in order.
template <typename S, int A>
inline void product_block(const Matrix<S>& w, int64_t o, const Vec<S>* in, Vec<S>* out) {
  for (int half = 0; half < kTileVectors; half += kHalf) {
    Vec<S> acc[A][kHalf] = {};
    for (int64_t k = 0; k < w.n_in; ++k) {
      const Vec<S>* x = in + k * kTileVectors + half;
      for (int a = 0; a < A; ++a) {
        const S c = w.data[(o + a) * w.so + k * w.sk];
        for (int r = 0; r < kHalf; ++r) acc[a][r] += c * x[r];
      }
    }
    for (int a = 0; a < A; ++a)
      for (int r = 0; r < kHalf; ++r) out[(o + a) * kTileVectors + half + r] = acc[a][r];
  }
}

template <typename S>
void product(const Matrix<S>& w, const Vec<S>* in, Vec<S>* out) {
  int64_t o = 0;
  for (; o + 4 <= w.n_out; o += 4) product_block<S, 4>(w, o, in, out);
  for (; o < w.n_out; ++o) product_block<S, 1>(w, o, in, out);
}

// G[a·n_b + b] += A[a][:] ⊙ B[b][:] summed over the tile's vectors (lane-wise partial sums), for
// rows a, …, a + Ablock − 1 of A: each vector of B read once serves them all.
template <typename S, int Ablock>
inline void outer_block(const Vec<S>* A, int64_t a, const Vec<S>* B, int64_t n_b, Vec<S>* G) {
  Vec<S> x[Ablock][kTileVectors];
  for (int i = 0; i < Ablock; ++i)
    for (int r = 0; r < kTileVectors; ++r) x[i][r] = A[(a + i) * kTileVectors + r];
  for (int64_t b = 0; b < n_b; ++b) {
    const Vec<S>* y = B + b * kTileVectors;
    Vec<S> s[Ablock];
    for (int i = 0; i < Ablock; ++i) s[i] = G[(a + i) * n_b + b];
    for (int r = 0; r < kTileVectors; ++r)
      for (int i = 0; i < Ablock; ++i) s[i] += x[i][r] * y[r];
    for (int i = 0; i < Ablock; ++i) G[(a + i) * n_b + b] = s[i];
  }
}

template <typename S>
void outer(const Vec<S>* A, int64_t n_a, const Vec<S>* B, int64_t n_b, Vec<S>* G) {
  int64_t a = 0;
  for (; a + kOuterRows <= n_a; a += kOuterRows) outer_block<S, kOuterRows>(A, a, B, n_b, G);
  for (; a < n_a; ++a) outer_block<S, 1>(A, a, B, n_b, G);
}

template <typename S>
void relu(Vec<S>* v, int64_t n) {
  const Vec<S> zero = {};
  for (int64_t i = 0; i < n * kTileVectors; ++i) v[i] = v[i] < zero ? zero : v[i];
}

// g[i] = 0 where the layer's ReLU output a[i] ≤ 0 (threshold_backward's rule; NaN passes).
template <typename S>
void relu_backward(const Vec<S>* a, Vec<S>* g, int64_t n) {
  const Vec<S> zero = {};
  for (int64_t i = 0; i < n * kTileVectors; ++i) g[i] = a[i] <= zero ? zero : g[i];
}

// A [N,W] tensor's rows [start, start + n) into a tile [W][rows] (zero past n), any strides.
template <typename S>
void load_tile(const S* src, int64_t s_row, int64_t s_col, int64_t width, int64_t start, int64_t n, Vec<S>* tile) {
  constexpr int T = Simd<S>::rows;
  S* dst = reinterpret_cast<S*>(tile);
  if (n < T) std::memset(dst, 0, sizeof(S) * T * width);
  if (s_row == 1) {  // feature-major (the hash grid's output for this kernel): one copy a feature
    for (int64_t k = 0; k < width; ++k) std::memcpy(dst + k * T, src + k * s_col + start, sizeof(S) * n);
    return;
  }
  for (int64_t r = 0; r < n; ++r)
    for (int64_t k = 0; k < width; ++k) dst[k * T + r] = src[(start + r) * s_row + k * s_col];
}

template <typename S>
struct Network {
  std::vector<Matrix<S>> layers;  // W_l [n_out][n_in] as stored by nn.Linear
  int64_t n_in() const { return layers.front().n_in; }
  int64_t n_out() const { return layers.back().n_out; }
  int64_t hidden_vectors() const {  // a tile's hidden activations, in vectors
    int64_t n = 0;
    for (size_t l = 1; l < layers.size(); ++l) n += layers[l].n_in * kTileVectors;
    return n;
  }
  int64_t widest() const {
    int64_t w = n_in();
    for (const auto& m : layers) w = std::max(w, m.n_out);
    return w;
  }
};

// A tile's activations: the input and every hidden layer's ReLU output, [width][kTileVectors] each.
template <typename S>
struct Tile {
  std::vector<Vec<S>> storage;
  std::vector<Vec<S>*> act;  // act[l]: the input of layer l
  Vec<S>* out;               // the last layer's output
  explicit Tile(const Network<S>& net) {
    size_t total = net.n_out();
    for (const auto& m : net.layers) total += m.n_in;
    storage.resize(total * kTileVectors);
    Vec<S>* p = storage.data();
    for (const auto& m : net.layers) act.push_back(p), p += m.n_in * kTileVectors;
    out = p;
  }
  // the hidden activations live at p (a tile's slice of the kept ones) instead of in storage
  void keep_hidden_at(const Network<S>& net, Vec<S>* p) {
    for (size_t l = 1; l < net.layers.size(); ++l) act[l] = p, p += net.layers[l].n_in * kTileVectors;
  }
  // the hidden activations of the tile whose input is in act[0]
  void hidden(const Network<S>& net) {
    for (size_t l = 0; l + 1 < net.layers.size(); ++l) {
      product(net.layers[l], act[l], act[l + 1]);
      relu<S>(act[l + 1], net.layers[l].n_out);
    }
  }
};

template <typename S>
Network<S> network_of(const std::vector<at::Tensor>& weights) {
  Network<S> net;
  for (const auto& w : weights) net.layers.push_back({w.data_ptr<S>(), w.size(0), w.size(1), w.size(1), 1});
  return net;
}

// [first, last) of the tiles for each of a few chunks (one per thread at most): a chunk owns its
// weight-gradient accumulators, so the sums do not depend on the scheduling.
std::vector<int64_t> chunk_bounds(int64_t n_tiles) {
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), n_tiles));
  std::vector<int64_t> bounds(chunks + 1);
  for (int64_t c = 0; c <= chunks; ++c) bounds[c] = n_tiles * c / chunks;
  return bounds;
}

// hidden: nullptr, or where to keep every tile's hidden activations (hidden_vectors() a tile).
template <typename S>
void forward_rows(const Network<S>& net, const at::Tensor& x, S* y, Vec<S>* hidden, int64_t N) {
  constexpr int T = Simd<S>::rows;
  const S* xp = x.data_ptr<S>();
  const int64_t O = net.n_out(), n_tiles = (N + T - 1) / T;
  at::parallel_for(0, n_tiles, 1, [&](int64_t first, int64_t last) {
    Tile<S> tile(net);
    for (int64_t t = first; t < last; ++t) {
      const int64_t start = t * T, n = std::min<int64_t>(T, N - start);
      if (hidden) tile.keep_hidden_at(net, hidden + t * net.hidden_vectors());
      load_tile(xp, x.stride(0), x.stride(1), net.n_in(), start, n, tile.act[0]);
      tile.hidden(net);
      product(net.layers.back(), tile.act.back(), tile.out);
      const S* o = reinterpret_cast<const S*>(tile.out);
      for (int64_t r = 0; r < n; ++r)
        for (int64_t j = 0; j < O; ++j) y[(start + r) * O + j] = o[j * T + r];
    }
  });
}

// One tile's backward from g = ∂y (a [O][kTileVectors] buffer; `spare` as large): the weights'
// gradients into G (one block per layer); returns the buffer that holds ∂x when want_x.
template <typename S>
Vec<S>* backward_tile(const Network<S>& net, const Tile<S>& tile, Vec<S>* g, Vec<S>* spare, std::vector<Vec<S>*>& G, bool want_x) {
  for (int64_t l = static_cast<int64_t>(net.layers.size()) - 1; l >= 0; --l) {
    const Matrix<S>& w = net.layers[l];
    outer<S>(g, w.n_out, tile.act[l], w.n_in, G[l]);
    if (l == 0 && !want_x) break;
    product(Matrix<S>{w.data, w.n_in, w.n_out, 1, w.n_in}, g, spare);  // Wᵀ · g
    if (l > 0) relu_backward<S>(tile.act[l], spare, w.n_in);
    std::swap(g, spare);
  }
  return g;
}

template <typename S>
void backward_rows(const Network<S>& net, const at::Tensor& x, const at::Tensor& grad, Vec<S>* hidden, S* gx,
                   std::vector<at::Tensor>& gw, int64_t N, bool want_x) {
  constexpr int T = Simd<S>::rows, lanes = Simd<S>::lanes;
  const int64_t n_tiles = (N + T - 1) / T, widest = net.widest(), L = net.layers.size();
  const std::vector<int64_t> bounds = chunk_bounds(n_tiles);
  const int64_t chunks = bounds.size() - 1;
  int64_t per_chunk = 0;
  for (const auto& m : net.layers) per_chunk += m.n_out * m.n_in;
  std::vector<Vec<S>> sums(chunks * per_chunk, Vec<S>{});
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    Tile<S> tile(net);
    std::vector<Vec<S>> g0(widest * kTileVectors), g1(widest * kTileVectors);
    for (int64_t c = c0; c < c1; ++c) {
      std::vector<Vec<S>*> G;
      Vec<S>* p = sums.data() + c * per_chunk;
      for (const auto& m : net.layers) G.push_back(p), p += m.n_out * m.n_in;
      for (int64_t t = bounds[c]; t < bounds[c + 1]; ++t) {
        const int64_t start = t * T, n = std::min<int64_t>(T, N - start);
        load_tile(x.data_ptr<S>(), x.stride(0), x.stride(1), net.n_in(), start, n, tile.act[0]);
        if (hidden) {
          tile.keep_hidden_at(net, hidden + t * net.hidden_vectors());
        } else {
          tile.hidden(net);
        }
        load_tile(grad.data_ptr<S>(), grad.stride(0), grad.stride(1), net.n_out(), start, n, g0.data());
        const Vec<S>* result = backward_tile(net, tile, g0.data(), g1.data(), G, want_x);
        if (!want_x) continue;
        const S* src = reinterpret_cast<const S*>(result);
        for (int64_t k = 0; k < net.n_in(); ++k) std::memcpy(gx + k * N + start, src + k * T, sizeof(S) * n);
      }
    }
  });
  for (int64_t l = 0, off = 0; l < L; off += net.layers[l].n_out * net.layers[l].n_in, ++l) {
    S* dst = gw[l].data_ptr<S>();
    for (int64_t i = 0; i < net.layers[l].n_out * net.layers[l].n_in; ++i) {
      S total = 0;
      for (int64_t c = 0; c < chunks; ++c)
        for (int lane = 0; lane < lanes; ++lane) total += sums[c * per_chunk + off + i][lane];
      dst[i] = total;
    }
  }
}

std::vector<at::Tensor> checked_weights(const at::Tensor& x, at::TensorList weights) {
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 2, "x must be a [N,K] CPU tensor");
  TORCH_CHECK(!weights.empty(), "at least one layer");
  std::vector<at::Tensor> out;
  int64_t width = x.size(1);
  for (const auto& w : weights) {
    TORCH_CHECK(w.device().is_cpu() && w.dim() == 2 && w.scalar_type() == x.scalar_type(), "weights [out,in] of x's dtype on the CPU");
    TORCH_CHECK(w.size(1) == width, "layer widths do not chain: ", w.size(1), " inputs after ", width, " outputs");
    out.push_back(w.contiguous());
    width = w.size(0);
  }
  return out;
}

// Where a tensor of kept hidden activations holds them (nullptr when it is empty: recompute).
template <typename S>
Vec<S>* hidden_of(const at::Tensor& hidden) {
  return hidden.numel() ? reinterpret_cast<Vec<S>*>(hidden.data_ptr<S>()) : nullptr;
}

// x [N,K] (any strides), weights W_l [n_out,n_in] → (y [N,O] = W_L·relu(…relu(W_0·x)), the hidden
// activations tile by tile for mlp_backward when keep_hidden, else an empty tensor).
std::tuple<at::Tensor, at::Tensor> mlp_forward(const at::Tensor& x, at::TensorList weight_list, bool keep_hidden) {
  const std::vector<at::Tensor> weights = checked_weights(x, weight_list);
  const int64_t N = x.size(0);
  at::Tensor y = at::empty({N, weights.back().size(0)}, x.options());
  at::Tensor hidden = at::empty({0}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "mlp_forward", [&] {
    const Network<scalar_t> net = network_of<scalar_t>(weights);
    constexpr int T = Simd<scalar_t>::rows, lanes = Simd<scalar_t>::lanes;
    if (keep_hidden && net.hidden_vectors() > 0) hidden = at::empty({(N + T - 1) / T, net.hidden_vectors() * lanes}, x.options());
    forward_rows<scalar_t>(net, x, y.data_ptr<scalar_t>(), hidden_of<scalar_t>(hidden), N);
  });
  return {y, hidden};
}

// grad [N,O] and mlp_forward's kept hidden activations (or an empty tensor) → [∂x (a [N,K] view
// of a feature-major [K,N] tensor; empty unless want_x), ∂W_0, …, ∂W_L].
std::vector<at::Tensor> mlp_backward(const at::Tensor& x, at::TensorList weight_list, const at::Tensor& grad, const at::Tensor& hidden,
                                     bool want_x) {
  const std::vector<at::Tensor> weights = checked_weights(x, weight_list);
  const int64_t N = x.size(0), K = x.size(1);
  TORCH_CHECK(grad.dim() == 2 && grad.size(0) == N && grad.size(1) == weights.back().size(0) && grad.scalar_type() == x.scalar_type(),
              "grad must be [N,O] of x's dtype");
  at::Tensor gx = want_x ? at::empty({K, N}, x.options()) : at::empty({0}, x.options());
  std::vector<at::Tensor> gw;
  for (const auto& w : weights) gw.push_back(at::empty_like(w));
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "mlp_backward", [&] {
    const Network<scalar_t> net = network_of<scalar_t>(weights);
    constexpr int T = Simd<scalar_t>::rows, lanes = Simd<scalar_t>::lanes;
    TORCH_CHECK(hidden.numel() == 0 || (hidden.is_contiguous() && hidden.scalar_type() == x.scalar_type() &&
                                        hidden.numel() == (N + T - 1) / T * net.hidden_vectors() * lanes),
                "hidden must be mlp_forward's kept activations of these rows");
    backward_rows<scalar_t>(net, x, grad, hidden_of<scalar_t>(hidden), want_x ? gx.data_ptr<scalar_t>() : nullptr, gw, N, want_x);
  });
  std::vector<at::Tensor> out{want_x ? gx.t() : gx};
  out.insert(out.end(), gw.begin(), gw.end());
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(threestudio_like_cpu, m) {
  m.def("mlp_forward(Tensor x, Tensor[] weights, bool keep_hidden) -> (Tensor, Tensor)");
  m.def("mlp_backward(Tensor x, Tensor[] weights, Tensor grad, Tensor hidden, bool want_x) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(threestudio_like_cpu, CPU, m) {
  m.impl("mlp_forward", &mlp_forward);
  m.impl("mlp_backward", &mlp_backward);
}
