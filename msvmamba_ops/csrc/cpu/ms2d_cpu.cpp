// Fused inference pass of one MultiScaleSS2D branch (projects/msvmamba), float32, CPU (the
// input may be bf16, and the full-resolution branch may read a bf16 gate and write bf16,
// see below).
//
// The autograd path of the backbone runs a branch as separate ops: a depthwise conv, SiLU, a
// copy of the token-major map into channel-major (E, L) sequences (a gather for the
// multi-direction low-res branch), the x projection and the dt projection as batched matmuls,
// the selective scan, a transposed LayerNorm, a gather + sum that merges the directions, and
// elementwise passes for the upsampled sum, the squeeze-excite pooling and the SiLU gate.
// Each of them streams the whole (E x L) activation through memory. Here one pass per scan
// step does all of it while the step's E channels sit in L1:
//
//   u = SiLU(dwconv(x)[tok] + conv_bias) tok = order[s] (the map position of scan step s);
//                                        x is the (Hin, Win) map
//                                        before the branch's depthwise conv (k x k, stride,
//                                        zero padding), which is computed here too
//   (dt, B, C) = W_x u                   R + 2N dot products over E
//   delta = softplus(W_dt dt + bias)     vectorised over E
//   h = exp(delta A) h + delta B u,  y = C h + D u   (the recurrence, vectorised over E:
//                                        the E channels are independent chains)
//   y = LayerNorm(y)                     per-branch out_norm (master), optional
//   out[tok] = y (first direction), out[tok] += y (the others): the merge over directions,
//                                        in the same order as the unfused sum
//
// and, for the full-resolution branch (one direction), an epilogue per position:
//   y += upsample(low)[tok]              bilinear (align_corners=False) or nearest, the
//                                        source indices and weights computed as ATen does
//   y = LayerNorm(y)                     merged out_norm (v3), optional
//   pool += y                            squeeze-excite sums (the caller divides)
//   y *= SiLU(z[tok])                    output gate, optional
//   out[tok] = y                         float32, or rounded to bf16 (bf16_out)
//
// Under bf16 autocast in_proj and out_proj run in bf16: the depthwise conv widens the bf16
// input x, the epilogue widens the gate z and rounds the output as it goes, rather than
// cast passes over the maps; the scan, the norms and the sums stay float32.
//
// Tasks are batch items (one scan per item; the state lives in registers/L1). A branch with
// several directions first computes its whole activated map (per thread, L2-sized), the
// one-direction branch computes each tile's inputs as it goes. Exposed as
// msvmamba_cpu::ms2d_branch (see TORCH_LIBRARY_FRAGMENT below); msvmamba_ops/cpu_fused.py
// documents the arguments and tests/ops/test_cpu_fused.py checks it against the unfused ops.
#include "cpu_common.h"

namespace msv {
namespace {

struct Ms2dArgs {
  using acc_t = float;
  const float* x;        // (Bt, Hin, Win, E) map before the depthwise conv, or null when
  const bf16_bits* x16;  // it is bf16 (the scan half of in_proj under bf16 autocast)
  int64_t Hin, Win;
  const float* conv_w;   // (k * k, EP) depthwise conv taps, transposed
  const float* conv_b;   // (EP) conv bias (zeros when there is none)
  int64_t ksize, stride, pad;
  const int64_t* order;  // (K * P) map position of each scan step; null: K = 1, identity
  int64_t batch, P, E, K, R, N;
  int64_t EP, JP;       // E and R + 2N rounded up to multiples of 16 (zero padding)
  const float* wx_t;    // (EP, JP) x projection, transposed
  const float* wdt_t;   // (R, EP) dt projection, transposed
  const float* bias;    // (EP) dt bias
  const float* A_t;     // (N, EP) A = -exp(A_log), transposed
  const float* D;       // (EP) skip weights (zeros when there is no D)
  const float* norm_w;  // (E) per-branch LayerNorm weight or null (then norm_b too)
  const float* norm_b;
  float eps;
  // Full-resolution epilogue (K == 1 only); low == null: plain branch output.
  const float* low;  // (Bt, lh * lw, E) merged low-res branch output
  int64_t lh, lw;
  bool nearest;
  const int64_t* up_idx;  // rows: (H, 2) source rows; then cols: (W, 2) source cols
  const float* up_wt;     // the matching weights
  int64_t H, W;           // the branch's map (after the conv), P = H * W
  const float* post_w;  // (E) merged LayerNorm or null
  const float* post_b;
  const float* z;       // (Bt, P, E) gate pre-activation or null
  const bf16_bits* z16;  // the same in bf16 (at most one of z, z16)
  float* pool;           // (Bt, E) squeeze-excite sums or null
  float* out;            // (Bt, P, E), or null when out16 is given
  bf16_bits* out16;      // (Bt, P, E) bf16 output (one direction only)
  int64_t tile;    // scan steps whose projections are computed together
};

constexpr int64_t kTB = 8;  // scan steps per projection block (accumulator rows)

// out[t, c0 : c0 + 16 CV] = sum_k in[t, k] * w[k, c0 : ...] (+ init[c0 : ...]) for the kTB rows
// t of a block: kTB x CV accumulators stay in registers, each w row is loaded once per block.
// ``in`` rows are ``ld_in`` apart, ``w`` rows and ``out`` rows ``ld_w`` / ``ld_out``.
template <int CV>
MSV_INLINE void gemm_block(const float* __restrict in, int64_t ld_in, int64_t K,
                           const float* __restrict w, int64_t ld_w, const float* init,
                           float* __restrict out, int64_t ld_out, bool softplus) {
  vf16 acc[kTB][CV];
  for (int c = 0; c < CV; ++c) {
    const vf16 v0 = init ? loadv<vf16>(init + c * kLanes) : vf16{};
    for (int t = 0; t < kTB; ++t) acc[t][c] = v0;
  }
  for (int64_t k = 0; k < K; ++k) {
    vf16 wk[CV];
    for (int c = 0; c < CV; ++c) wk[c] = loadv<vf16>(w + k * ld_w + c * kLanes);
    for (int t = 0; t < kTB; ++t) {
      const float s = in[t * ld_in + k];
      for (int c = 0; c < CV; ++c) acc[t][c] += s * wk[c];
    }
  }
  for (int t = 0; t < kTB; ++t) {
    for (int c = 0; c < CV; ++c) {
      float* o = out + t * ld_out + c * kLanes;
      storev<vf16>(o, acc[t][c]);
      if (softplus) {
#pragma omp simd
        for (int64_t l = 0; l < kLanes; ++l) o[l] = softplus_(o[l]);
      }
    }
  }
}

// out (kTB, NP) = in (kTB, K) @ w (K, NP) (+ init (NP)), NP a multiple of 16.
MSV_INLINE void gemm_rows(const float* in, int64_t ld_in, int64_t K, const float* w,
                          int64_t NP, const float* init, float* out, bool softplus) {
  int64_t c0 = 0;
  for (; c0 + 2 * kLanes <= NP; c0 += 2 * kLanes) {
    gemm_block<2>(in, ld_in, K, w + c0, NP, init ? init + c0 : nullptr, out + c0, NP, softplus);
  }
  if (c0 < NP) {
    gemm_block<1>(in, ld_in, K, w + c0, NP, init ? init + c0 : nullptr, out + c0, NP, softplus);
  }
}

// Rows p0 .. p0 + n - 1 (row-major map positions) of the branch input: dst row q =
// act(bias + depthwise conv of x) at position p0 + q (zero padding: taps outside the input
// are skipped). dst rows are EP floats apart.
template <typename T>
MSV_INLINE void conv_positions(const Ms2dArgs& a, const T* __restrict xb, int64_t p0,
                               int64_t n, float* __restrict dst) {
  const int64_t EP = a.EP;
  for (int64_t q = 0; q < n; ++q) std::copy(a.conv_b, a.conv_b + EP, dst + q * EP);
  for (int64_t q = 0; q < n;) {  // one output row segment at a time
    const int64_t i = (p0 + q) / a.W, j = (p0 + q) % a.W;
    const int64_t run = std::min(a.W - j, n - q);
    dwconv_row(xb, a.Hin, a.Win, a.E, i * a.stride - a.pad, j * a.stride - a.pad, a.stride,
               a.ksize, a.conv_w, EP, nullptr, run, dst + q * EP, EP);
    q += run;
  }
  for (int64_t q = 0; q < n; ++q) {
    float* d = dst + q * EP;
#pragma omp simd
    for (int64_t e = 0; e < a.E; ++e) d[e] = silu_(d[e]);
  }
}

// conv_positions on batch item x0's map, float32 or bf16 (an inline function, not a lambda:
// a lambda's body would be compiled without the instruction-set target of its caller).
MSV_INLINE void conv_input(const Ms2dArgs& a, int64_t x0, int64_t p0, int64_t n,
                           float* __restrict dst) {
  if (a.x16) {
    conv_positions(a, a.x16 + x0, p0, n, dst);
  } else {
    conv_positions(a, a.x + x0, p0, n, dst);
  }
}

template <int kN, typename Next>
MSV_INLINE void ms2d_tasks(const Ms2dArgs& a, const Next& next) {
  // Rows of E channels are padded to EP (a multiple of 16) in the buffers; the padding
  // lanes hold zeros in u, the weights and D, so they stay 0 through the recurrence and are
  // never written out. (dt, B, C) rows are padded to JP.
  const int64_t E = a.E, EP = a.EP, R = a.R, N = kN > 0 ? kN : a.N, JP = a.JP, T = a.tile;
  const int64_t steps = a.K * a.P;
  // several directions: the branch's activated map, computed once per batch item
  const bool whole_map = a.K > 1;
  std::vector<float> map(whole_map ? static_cast<size_t>(a.P * EP) : 0);
  std::vector<float> buf(static_cast<size_t>(2 * T * EP + T * JP + N * EP + EP), 0.f);
  float* u = buf.data();   // (T, EP) activated inputs of the tile
  float* dl = u + T * EP;  // (T, EP) delta of the tile
  float* xd = dl + T * EP; // (T, JP) (dt, B, C) of the tile
  float* h = xd + T * JP;  // (N, EP) states
  float* y = h + N * EP;   // (EP) output of the current step
  for (int64_t b = next(); b >= 0; b = next()) {
    const int64_t x0 = b * a.Hin * a.Win * E;  // the batch item's map, float32 or bf16
    if (whole_map) conv_input(a, x0, 0, a.P, map.data());
    float* pool = a.pool ? a.pool + b * E : nullptr;
    if (pool) std::fill(pool, pool + E, 0.f);
    std::fill(h, h + N * EP, 0.f);
    for (int64_t s0 = 0; s0 < steps; s0 += T) {
      const int64_t nt = std::min(T, steps - s0);
      const int64_t nblocks = (nt + kTB - 1) / kTB;  // rows past nt: stale, never used
      // 1. inputs of the tile, activated
      if (whole_map) {
        for (int64_t t = 0; t < nt; ++t) {
          const float* src = map.data() + a.order[s0 + t] * EP;
          std::copy(src, src + EP, u + t * EP);
        }
      } else {  // one row-major direction: the tile is map positions s0 .. s0 + nt - 1
        conv_input(a, x0, s0, nt, u);
      }
      // 2. x projection: (dt, B, C) = u W_x^T, 3. delta = softplus(dt W_dt^T + bias)
      for (int64_t k = 0; k < nblocks; ++k) {
        gemm_rows(u + k * kTB * EP, EP, E, a.wx_t, JP, nullptr, xd + k * kTB * JP, false);
        gemm_rows(xd + k * kTB * JP, JP, R, a.wdt_t, EP, a.bias, dl + k * kTB * EP, true);
      }
      // 4. the recurrence, one step at a time, then that step's epilogue
      for (int64_t t = 0; t < nt; ++t) {
        const int64_t s = s0 + t;
        const int64_t tok = a.order ? a.order[s] : s;
        const float* __restrict ut = u + t * EP;
        const float* __restrict d = dl + t * EP;
        const float* Bs = xd + t * JP + R;
        const float* Cs = Bs + N;
#pragma omp simd
        for (int64_t e = 0; e < EP; ++e) y[e] = a.D[e] * ut[e];
        for (int64_t n = 0; n < N; ++n) {
          const float bn = Bs[n], cn = Cs[n];
          const float* __restrict An = a.A_t + n * EP;
          float* __restrict hn = h + n * EP;
#pragma omp simd
          for (int64_t e = 0; e < EP; ++e) {
            // A = -exp(A_log) <= 0 and delta >= 0: the exponent is never positive
            const float hv = exp_nonpos_(d[e] * An[e]) * hn[e] + d[e] * bn * ut[e];
            hn[e] = hv;
            y[e] += cn * hv;
          }
        }
        if (a.norm_w) layer_norm_(y, E, a.norm_w, a.norm_b, a.eps);
        if (a.low == nullptr) {  // merge over directions: the first writes, the others add
          float* o = a.out + (b * a.P + tok) * E;
          if (s < a.P) {
            std::copy(y, y + E, o);
          } else {
#pragma omp simd
            for (int64_t e = 0; e < E; ++e) o[e] += y[e];
          }
          continue;
        }
        // full-resolution epilogue
        const int64_t i = tok / a.W, j = tok % a.W;
        const float* lowb = a.low + b * a.lh * a.lw * E;
        const int64_t* ri = a.up_idx + 2 * i;
        const int64_t* ci = a.up_idx + 2 * a.H + 2 * j;
        if (a.nearest) {
          const float* l = lowb + (ri[0] * a.lw + ci[0]) * E;
#pragma omp simd
          for (int64_t e = 0; e < E; ++e) y[e] += l[e];
        } else {
          const float* rw = a.up_wt + 2 * i;
          const float* cw = a.up_wt + 2 * a.H + 2 * j;
          const float* l00 = lowb + (ri[0] * a.lw + ci[0]) * E;
          const float* l01 = lowb + (ri[0] * a.lw + ci[1]) * E;
          const float* l10 = lowb + (ri[1] * a.lw + ci[0]) * E;
          const float* l11 = lowb + (ri[1] * a.lw + ci[1]) * E;
          const float w00 = rw[0] * cw[0], w01 = rw[0] * cw[1];
          const float w10 = rw[1] * cw[0], w11 = rw[1] * cw[1];
#pragma omp simd
          for (int64_t e = 0; e < E; ++e) {
            y[e] += w00 * l00[e] + w01 * l01[e] + w10 * l10[e] + w11 * l11[e];
          }
        }
        if (a.post_w) layer_norm_(y, E, a.post_w, a.post_b, a.eps);
        if (pool) {
#pragma omp simd
          for (int64_t e = 0; e < E; ++e) pool[e] += y[e];
        }
        const int64_t row = (b * a.P + tok) * E;
        if (a.z) {
#pragma omp simd
          for (int64_t e = 0; e < E; ++e) y[e] *= silu_(a.z[row + e]);
        } else if (a.z16) {
#pragma omp simd
          for (int64_t e = 0; e < E; ++e) y[e] *= silu_(bf16_to_float(a.z16[row + e]));
        }
        if (a.out16) {
          store_bf16_row(a.out16 + row, y, E);
        } else {
          std::copy(y, y + E, a.out + row);
        }
      }
    }
  }
}

struct Ms2dKernel {
  template <typename Args, typename Next>
  MSV_INLINE static void run(const Args& a, const Next& next) {
    if (a.N == 1) {
      ms2d_tasks<1>(a, next);  // MSVMamba's case: the state loop unrolled away
    } else {
      ms2d_tasks<0>(a, next);
    }
  }
};

// Source rows/cols and weights of an upsampling from `in` to `out` positions, as ATen's
// upsample_bilinear2d (align_corners=False, no scale factor) and upsample_nearest2d compute
// them.
void upsample_table(int64_t in, int64_t out, bool nearest, int64_t* idx, float* wt) {
  const float scale = static_cast<float>(in) / static_cast<float>(out);
  for (int64_t o = 0; o < out; ++o) {
    if (nearest) {
      int64_t src = o;
      if (out == 2 * in) {
        src = o >> 1;
      } else if (out != in) {
        src = std::min(static_cast<int64_t>(std::floor(static_cast<float>(o) * scale)), in - 1);
      }
      idx[2 * o] = idx[2 * o + 1] = src;
      wt[2 * o] = 1.f;
      wt[2 * o + 1] = 0.f;
      continue;
    }
    if (out == in) {
      idx[2 * o] = idx[2 * o + 1] = o;
      wt[2 * o] = 1.f;
      wt[2 * o + 1] = 0.f;
      continue;
    }
    float real = scale * (static_cast<float>(o) + 0.5f) - 0.5f;
    real = real < 0.f ? 0.f : real;
    const int64_t i0 = std::min(static_cast<int64_t>(std::floor(real)), in - 1);
    const float l1 = std::min(std::max(real - static_cast<float>(i0), 0.f), 1.f);
    idx[2 * o] = i0;
    idx[2 * o + 1] = i0 + (i0 < in - 1 ? 1 : 0);
    wt[2 * o] = 1.f - l1;
    wt[2 * o + 1] = l1;
  }
}

// t: a contiguous CPU tensor of ``sizes``, float32 (or bf16 where ``bf16_ok``)
void check_f32(const at::Tensor& t, const char* name, at::IntArrayRef sizes,
               bool bf16_ok = false) {
  const bool dtype_ok = t.scalar_type() == at::kFloat ||
                        (bf16_ok && t.scalar_type() == at::kBFloat16);
  TORCH_CHECK(t.device().is_cpu() && dtype_ok && t.is_contiguous(),
              "msvmamba_cpu::ms2d_branch: ", name, " must be a contiguous float32 ",
              bf16_ok ? "or bfloat16 " : "", "CPU tensor");
  TORCH_CHECK(t.sizes() == sizes, "msvmamba_cpu::ms2d_branch: ", name, " must have shape ",
              sizes, ", got ", t.sizes());
}

void check_opt(const std::optional<at::Tensor>& t, const char* name, at::IntArrayRef sizes,
               bool bf16_ok = false) {
  if (t.has_value()) check_f32(*t, name, sizes, bf16_ok);
}

std::tuple<at::Tensor, at::Tensor> ms2d_branch(
    const at::Tensor& x, const at::Tensor& conv_weight, const std::optional<at::Tensor>& conv_bias,
    int64_t stride, int64_t padding, const std::optional<at::Tensor>& order,
    const at::Tensor& x_proj_weight, const at::Tensor& dt_proj_weight,
    const at::Tensor& dt_bias, const at::Tensor& A, const std::optional<at::Tensor>& D,
    const std::optional<at::Tensor>& norm_weight, const std::optional<at::Tensor>& norm_bias,
    double eps, const std::optional<at::Tensor>& low, bool nearest,
    const std::optional<at::Tensor>& post_weight, const std::optional<at::Tensor>& post_bias,
    const std::optional<at::Tensor>& z, bool pool, bool bf16_out) {
  TORCH_CHECK(x.dim() == 4, "msvmamba_cpu::ms2d_branch: x must be (B, H, W, E)");
  const int64_t Bt = x.size(0), Hin = x.size(1), Win = x.size(2), E = x.size(3);
  TORCH_CHECK(conv_weight.dim() == 4 && conv_weight.size(0) == E && conv_weight.size(1) == 1 &&
                  conv_weight.size(2) == conv_weight.size(3),
              "msvmamba_cpu::ms2d_branch: conv_weight must be a depthwise (E, 1, k, k) kernel");
  const int64_t ksize = conv_weight.size(2);
  TORCH_CHECK(stride >= 1 && padding >= 0 && Hin + 2 * padding >= ksize &&
                  Win + 2 * padding >= ksize,
              "msvmamba_cpu::ms2d_branch: the map (", Hin, ", ", Win, ") is smaller than the ",
              ksize, "x", ksize, " conv with padding ", padding);
  const int64_t H = (Hin + 2 * padding - ksize) / stride + 1;
  const int64_t W = (Win + 2 * padding - ksize) / stride + 1;
  const int64_t P = H * W;
  TORCH_CHECK(A.dim() == 2 && A.size(0) == E, "msvmamba_cpu::ms2d_branch: A must be (E, N)");
  const int64_t N = A.size(1);
  TORCH_CHECK(dt_proj_weight.dim() == 2 && dt_proj_weight.size(0) == E,
              "msvmamba_cpu::ms2d_branch: dt_proj_weight must be (E, R)");
  const int64_t R = dt_proj_weight.size(1);
  check_f32(x, "x", {Bt, Hin, Win, E}, /*bf16_ok=*/true);  // bf16 under autocast
  const bool x16 = x.scalar_type() == at::kBFloat16;
  check_f32(conv_weight, "conv_weight", {E, 1, ksize, ksize});
  check_opt(conv_bias, "conv_bias", {E});
  check_f32(x_proj_weight, "x_proj_weight", {R + 2 * N, E});
  check_f32(dt_proj_weight, "dt_proj_weight", {E, R});
  check_f32(dt_bias, "dt_bias", {E});
  check_f32(A, "A", {E, N});
  check_opt(D, "D", {E});
  check_opt(norm_weight, "norm_weight", {E});
  check_opt(norm_bias, "norm_bias", {E});
  check_opt(post_weight, "post_weight", {E});
  check_opt(post_bias, "post_bias", {E});
  check_opt(z, "z", {Bt, P, E}, /*bf16_ok=*/true);  // a bf16 gate under autocast
  const bool z16 = z.has_value() && z->scalar_type() == at::kBFloat16;
  TORCH_CHECK(norm_weight.has_value() == norm_bias.has_value() &&
                  post_weight.has_value() == post_bias.has_value(),
              "msvmamba_cpu::ms2d_branch: give LayerNorm weight and bias together");
  int64_t K = 1;
  if (order.has_value()) {
    TORCH_CHECK(order->device().is_cpu() && order->scalar_type() == at::kLong &&
                    order->is_contiguous() && order->dim() == 1 && P > 0 &&
                    order->numel() % P == 0,
                "msvmamba_cpu::ms2d_branch: order must be a contiguous int64 (K*H*W,) tensor");
    K = order->numel() / P;
    // Every direction must visit every position once: the first writes, the others add.
    const int64_t* o = order->const_data_ptr<int64_t>();
    std::vector<char> seen(static_cast<size_t>(P));
    for (int64_t k = 0; k < K; ++k) {
      std::fill(seen.begin(), seen.end(), 0);
      for (int64_t s = 0; s < P; ++s) {
        const int64_t p = o[k * P + s];
        TORCH_CHECK(p >= 0 && p < P && !seen[p],
                    "msvmamba_cpu::ms2d_branch: order must hold K permutations of 0..H*W-1");
        seen[p] = 1;
      }
    }
  }
  const bool epilogue = low.has_value() || post_weight.has_value() || z.has_value() || pool;
  TORCH_CHECK(!epilogue || K == 1,
              "msvmamba_cpu::ms2d_branch: the epilogue (low, post norm, z, pool) needs one "
              "scan direction");
  TORCH_CHECK(!epilogue || low.has_value(),
              "msvmamba_cpu::ms2d_branch: the epilogue (post norm, z, pool) is the "
              "full-resolution branch's and needs low");
  TORCH_CHECK(!bf16_out || low.has_value(),
              "msvmamba_cpu::ms2d_branch: bf16_out needs the full-resolution epilogue (low)");
  int64_t lh = 0, lw = 0;
  if (low.has_value()) {
    TORCH_CHECK(low->dim() == 4 && low->size(0) == Bt && low->size(3) == E,
                "msvmamba_cpu::ms2d_branch: low must be (B, h, w, E)");
    lh = low->size(1);
    lw = low->size(2);
    check_f32(*low, "low", {Bt, lh, lw, E});
  }
  at::Tensor out = empty_cached({Bt, P, E}, x.options().dtype(bf16_out ? at::kBFloat16
                                                                          : at::kFloat));
  at::Tensor pooled = at::empty({pool ? Bt : 0, E}, x.options().dtype(at::kFloat));
  if (Bt == 0 || P == 0 || E == 0) {
    pooled.zero_();
    return {out, pooled};
  }
  // An empty low-res map (lh or lw 0) would leave nothing to upsample.
  TORCH_CHECK(!low.has_value() || (lh > 0 && lw > 0),
              "msvmamba_cpu::ms2d_branch: low is empty");
  std::vector<int64_t> up_idx(static_cast<size_t>(2 * (H + W)));
  std::vector<float> up_wt(static_cast<size_t>(2 * (H + W)));
  if (low.has_value()) {
    upsample_table(lh, H, nearest, up_idx.data(), up_wt.data());
    upsample_table(lw, W, nearest, up_idx.data() + 2 * H, up_wt.data() + 2 * H);
  }
  // Weights transposed and zero-padded to whole vectors of 16 lanes.
  const int64_t EP = (E + kLanes - 1) / kLanes * kLanes;
  const int64_t JP = (R + 2 * N + kLanes - 1) / kLanes * kLanes;
  const at::Tensor wx_t = zero_padded(x_proj_weight.t(), {EP, JP});
  const at::Tensor wdt_t = zero_padded(dt_proj_weight.t(), {R, EP});
  const at::Tensor A_t = zero_padded(A.t(), {N, EP});
  const at::Tensor bias_p = zero_padded(dt_bias, {EP}), D_p = zero_padded(D, {EP});
  const at::Tensor conv_w = zero_padded(conv_weight.view({E, ksize * ksize}).t(),
                                        {ksize * ksize, EP});
  const at::Tensor conv_b = zero_padded(conv_bias, {EP});
  Ms2dArgs args{};
  args.x = x16 ? nullptr : x.const_data_ptr<float>();
  args.x16 = x16 ? static_cast<const bf16_bits*>(x.const_data_ptr()) : nullptr;
  args.Hin = Hin;
  args.Win = Win;
  args.conv_w = conv_w.const_data_ptr<float>();
  args.conv_b = conv_b.const_data_ptr<float>();
  args.ksize = ksize;
  args.stride = stride;
  args.pad = padding;
  args.order = order.has_value() ? order->const_data_ptr<int64_t>() : nullptr;
  args.batch = Bt;
  args.P = P;
  args.E = E;
  args.K = K;
  args.R = R;
  args.N = N;
  args.EP = EP;
  args.JP = JP;
  args.wx_t = wx_t.const_data_ptr<float>();
  args.wdt_t = wdt_t.const_data_ptr<float>();
  args.bias = bias_p.const_data_ptr<float>();
  args.A_t = A_t.const_data_ptr<float>();
  args.D = D_p.const_data_ptr<float>();
  args.norm_w = norm_weight.has_value() ? norm_weight->const_data_ptr<float>() : nullptr;
  args.norm_b = norm_bias.has_value() ? norm_bias->const_data_ptr<float>() : nullptr;
  args.eps = static_cast<float>(eps);
  args.low = low.has_value() ? low->const_data_ptr<float>() : nullptr;
  args.lh = lh;
  args.lw = lw;
  args.W = W;
  args.H = H;
  args.nearest = nearest;
  args.up_idx = up_idx.data();
  args.up_wt = up_wt.data();
  args.post_w = post_weight.has_value() ? post_weight->const_data_ptr<float>() : nullptr;
  args.post_b = post_bias.has_value() ? post_bias->const_data_ptr<float>() : nullptr;
  args.z = z.has_value() && !z16 ? z->const_data_ptr<float>() : nullptr;
  args.z16 = z16 ? static_cast<const bf16_bits*>(z->const_data_ptr()) : nullptr;
  args.pool = pool ? pooled.data_ptr<float>() : nullptr;
  args.out = bf16_out ? nullptr : out.data_ptr<float>();
  args.out16 = bf16_out ? static_cast<bf16_bits*>(out.data_ptr()) : nullptr;
  // About 16 KB of inputs per tile (at least one projection block): the tile's rows stay
  // in L1 between the passes.
  args.tile = std::max<int64_t>(1, std::min<int64_t>(32, 4096 / EP) / kTB) * kTB;
  run_tasks<Ms2dKernel>(detect_isa(), args, Bt, Bt * K * P * E * (2 * R + 2 * N + 8));
  return {out, pooled};
}

}  // namespace
}  // namespace msv

TORCH_LIBRARY_FRAGMENT(msvmamba_cpu, m) {
  m.def(
      "ms2d_branch(Tensor x, Tensor conv_weight, Tensor? conv_bias, int stride, int padding, "
      "Tensor? order, Tensor x_proj_weight, Tensor dt_proj_weight, Tensor dt_bias, "
      "Tensor A, Tensor? D, Tensor? norm_weight, Tensor? norm_bias, float eps, Tensor? low, "
      "bool nearest, Tensor? post_weight, Tensor? post_bias, Tensor? z, bool pool, "
      "bool bf16_out=False) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(msvmamba_cpu, CPU, m) { m.impl("ms2d_branch", &msv::ms2d_branch); }
