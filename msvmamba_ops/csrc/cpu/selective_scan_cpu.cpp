// Fused CPU selective scan (forward and backward) for msvmamba_ops.
//
// Semantics (docs/architecture.md §3.6): for batch b, channel d (group g), state n, time t,
// with h_{-1} = 0,
//   dt = softplus(delta + bias) (or delta + bias), a = exp(dt * A[d,n]),
//   h_t = a_t * h_{t-1} + dt_t * B[b,g,n,t] * u_t,  y_t = sum_n C[b,g,n,t] h_t + D[d] u_t.
//
// Layout of the work: rows (b, d) of length L, kRows rows at a time, in chunks of kChunk
// time steps that stay in L1: vectorised passes compute dt, exp(dt*A) and dt*B*u for the
// chunk, then one sequential loop runs the kRows recurrences interleaved (a single
// recurrence is bound by the latency of its multiply-add). Tasks of kRows rows are handed
// out to the OpenMP threads (at::parallel_for) one at a time. Backward recomputes the
// forward of kRows rows once, stores it (dt, decays, states; per segment of the time axis
// when the row is too long for the per-thread workspace), then runs the adjoint recurrence
// backwards through it.
//
// Precision: float32 accumulation for float32/float16/bfloat16 inputs, float64 for float64.
// The float32 exp/log are our own polynomial versions (about 1 ulp; NaN/Inf handled) so that
// the compiler can vectorise them without -ffast-math. x86-64 builds carry AVX2 and AVX-512
// copies of the kernels, picked at run time from the CPU's features (the baseline copy runs
// anywhere); MSVMAMBA_CPU_ISA=default|avx2|avx512 forces one (for tests and benchmarks).
//
// Exposed as torch ops in the namespace msvmamba_cpu: fwd, bwd, isa (see TORCH_LIBRARY).
// MSVMAMBA_CPU_SEGMENT=<steps> forces short backward segments (tests).
#include "cpu_common.h"

namespace msv {
namespace {

constexpr int64_t kChunk = 256;  // time steps per L1-resident chunk
constexpr int kRows = 8;         // rows whose recurrences run interleaved
constexpr int64_t kWorkspaceBytes = 8 << 20;  // backward: stored forward data per thread

// ---------------------------------------------------------------------------------------
// Kernel arguments: raw pointers into contiguous tensors.

template <typename scalar_t, typename acc_t>
struct Inputs {
  const scalar_t* u;      // (Bt, D, L)
  const scalar_t* delta;  // (Bt, D, L)
  const scalar_t* B;      // (Bt, G, N, L)
  const scalar_t* C;      // (Bt, G, N, L)
  const acc_t* A;         // (D, N)
  const acc_t* D;         // (D,) or null
  const acc_t* bias;      // (D,) or null
  int64_t batch, dim, groups, nstate, len;
  bool softplus;

  int64_t group_of(int64_t d) const { return d / (dim / groups); }
  int64_t bc_offset(int64_t b, int64_t g) const { return (b * groups + g) * nstate * len; }
};

template <typename scalar_t, typename out_t>
struct FwdArgs {
  using acc_t = typename AccT<scalar_t>::type;
  Inputs<scalar_t, acc_t> in;
  out_t* out;  // (Bt, D, L)
};

template <typename scalar_t>
struct BwdArgs {
  using acc_t = typename AccT<scalar_t>::type;
  Inputs<scalar_t, acc_t> in;
  const acc_t* dout;  // (Bt, D, L)
  scalar_t* du;       // (Bt, D, L)
  scalar_t* ddelta;   // (Bt, D, L)
  acc_t* dB_part;     // (Bt, G, nblk, N, L): per block of channels (zeroed by its task),
  acc_t* dC_part;     // (Bt, G, nblk, N, L)   summed over the blocks afterwards
  acc_t* dA_part;     // (Bt, D, N): summed over Bt afterwards
  acc_t* dD_part;     // (Bt, D)
  acc_t* dbias_part;  // (Bt, D)
  int64_t nblk, blk_size;
  int64_t seg_len;  // time steps whose forward data a task stores at once (multiple of kChunk)
};

// One (b, d) row: its u/delta rows, the B/C rows of its group (state n at + n * L), A[d, :].
template <typename scalar_t, typename acc_t>
struct Row {
  const scalar_t* u;
  const scalar_t* delta;
  const scalar_t* B;
  const scalar_t* C;
  const acc_t* A;
  acc_t bias, D;
  int64_t row;
};

template <typename scalar_t, typename acc_t>
MSV_INLINE Row<scalar_t, acc_t> row_view(const Inputs<scalar_t, acc_t>& in, int64_t row) {
  const int64_t b = row / in.dim, d = row % in.dim, L = in.len;
  const int64_t bc = in.bc_offset(b, in.group_of(d));
  return {in.u + row * L, in.delta + row * L, in.B + bc, in.C + bc, in.A + d * in.nstate,
          in.bias ? in.bias[d] : acc_t(0), in.D ? in.D[d] : acc_t(0), row};
}

// dt = softplus(delta + bias) (or delta + bias) for T steps.
template <typename scalar_t, typename acc_t>
MSV_INLINE void load_dt(const scalar_t* delta, acc_t bias, bool softplus, int64_t T, acc_t* dt) {
  if (softplus) {
#pragma omp simd
    for (int64_t t = 0; t < T; ++t) dt[t] = softplus_(static_cast<acc_t>(delta[t]) + bias);
  } else {
#pragma omp simd
    for (int64_t t = 0; t < T; ++t) dt[t] = static_cast<acc_t>(delta[t]) + bias;
  }
}

// a_t = exp(dt_t * An) and x_t = dt_t * B_t * u_t for T steps. ``nonpos``: dt * An <= 0
// is known (softplus makes dt >= 0; An <= 0), which allows the cheaper exp.
template <typename scalar_t, typename acc_t>
MSV_INLINE void decay_and_input(const acc_t* dt, const scalar_t* u, const scalar_t* Bn, acc_t An,
                                bool nonpos, int64_t T, acc_t* a, acc_t* x) {
  if (nonpos) {
#pragma omp simd
    for (int64_t t = 0; t < T; ++t) {
      a[t] = exp_nonpos_(dt[t] * An);
      x[t] = dt[t] * static_cast<acc_t>(Bn[t]) * static_cast<acc_t>(u[t]);
    }
  } else {
#pragma omp simd
    for (int64_t t = 0; t < T; ++t) {
      a[t] = exp_(dt[t] * An);
      x[t] = dt[t] * static_cast<acc_t>(Bn[t]) * static_cast<acc_t>(u[t]);
    }
  }
}

// N = 1: dt, a_t = exp(dt_t * A0) and x_t = dt_t * B_t * u_t in one pass (dt not stored).
template <typename scalar_t, typename acc_t>
MSV_INLINE void dt_decay_input(const scalar_t* delta, acc_t bias, bool softplus, const scalar_t* u,
                               const scalar_t* B0, acc_t A0, int64_t T, acc_t* a, acc_t* x) {
  if (softplus && A0 <= acc_t(0)) {
#pragma omp simd
    for (int64_t t = 0; t < T; ++t) {
      const acc_t dt = softplus_(static_cast<acc_t>(delta[t]) + bias);
      a[t] = exp_nonpos_(dt * A0);
      x[t] = dt * static_cast<acc_t>(B0[t]) * static_cast<acc_t>(u[t]);
    }
  } else {
#pragma omp simd
    for (int64_t t = 0; t < T; ++t) {
      const acc_t v = static_cast<acc_t>(delta[t]) + bias;
      const acc_t dt = softplus ? softplus_(v) : v;
      a[t] = exp_(dt * A0);
      x[t] = dt * static_cast<acc_t>(B0[t]) * static_cast<acc_t>(u[t]);
    }
  }
}

// The recurrences are latency-bound on one row: run kRows rows interleaved (lane r's data at
// r * stride) so that independent chains fill the pipeline.

// h_t = a_t h_{t-1} + x_t, forwards from h (updated); x is overwritten by the states.
template <typename acc_t>
MSV_INLINE void scan_rows(const acc_t* __restrict a, int64_t sa, acc_t* __restrict x,
                          int64_t sx, int64_t T, acc_t* h) {
  acc_t hr[kRows];
  for (int r = 0; r < kRows; ++r) hr[r] = h[r];
  for (int64_t t = 0; t < T; ++t) {
#pragma GCC unroll 8
    for (int r = 0; r < kRows; ++r) {
      hr[r] = a[r * sa + t] * hr[r] + x[r * sx + t];
      x[r * sx + t] = hr[r];
    }
  }
  for (int r = 0; r < kRows; ++r) h[r] = hr[r];
}

// Adjoint, backwards: g_t = p_t + c, then c = a_t g_t (c carries a_{t+1} g_{t+1}); p is
// overwritten by g.
template <typename acc_t>
MSV_INLINE void rscan_rows(const acc_t* __restrict a, int64_t sa, acc_t* __restrict p,
                           int64_t sp, int64_t T, acc_t* c) {
  acc_t cr[kRows];
  for (int r = 0; r < kRows; ++r) cr[r] = c[r];
  for (int64_t t = T - 1; t >= 0; --t) {
#pragma GCC unroll 8
    for (int r = 0; r < kRows; ++r) {
      const acc_t g = p[r * sp + t] + cr[r];
      p[r * sp + t] = g;
      cr[r] = a[r * sa + t] * g;
    }
  }
  for (int r = 0; r < kRows; ++r) c[r] = cr[r];
}

// Loads the rows [g0, g0 + nr) (nr <= kRows) of a task.
template <typename scalar_t, typename acc_t>
MSV_INLINE void load_rows(const Inputs<scalar_t, acc_t>& in, int64_t g0, int nr,
                          Row<scalar_t, acc_t>* rows) {
  for (int r = 0; r < nr; ++r) rows[r] = row_view(in, g0 + r);
}

// ---------------------------------------------------------------------------------------
// Forward. A task is kRows consecutive rows (row = b * D + d); next() hands out tasks.

template <typename scalar_t, typename out_t, typename Next>
MSV_INLINE void fwd_rows(const FwdArgs<scalar_t, out_t>& args, const Next& next) {
  using acc_t = typename AccT<scalar_t>::type;
  constexpr int64_t S = kChunk;
  const auto& in = args.in;
  const int64_t L = in.len, N = in.nstate, rows_total = in.batch * in.dim;
  const bool has_D = in.D != nullptr;
  alignas(64) acc_t dt[kRows * S], a[kRows * S], x[kRows * S], y[kRows * S];
  std::vector<acc_t> h(kRows * N);
  Row<scalar_t, acc_t> rows[kRows];
  for (int64_t task = next(); task >= 0; task = next()) {
    const int64_t g0 = task * kRows;
    const int nr = static_cast<int>(std::min<int64_t>(kRows, rows_total - g0));
    load_rows(in, g0, nr, rows);
    std::fill(h.begin(), h.end(), acc_t(0));
    if (nr < kRows) {  // idle lanes: a = x = 0 keeps their states at 0
      std::fill(a, a + kRows * S, acc_t(0));
      std::fill(x, x + kRows * S, acc_t(0));
    }
    for (int64_t t0 = 0; t0 < L; t0 += S) {
      const int64_t T = std::min(S, L - t0);
      if (N == 1) {  // MSVMamba's case: one fused pass in, the recurrence, one pass out
        for (int r = 0; r < nr; ++r) {
          dt_decay_input(rows[r].delta + t0, rows[r].bias, in.softplus, rows[r].u + t0,
                         rows[r].B + t0, rows[r].A[0], T, a + r * S, x + r * S);
        }
        scan_rows(a, S, x, S, T, h.data());
        for (int r = 0; r < nr; ++r) {
          const scalar_t* C0 = rows[r].C + t0;
          const scalar_t* u = rows[r].u + t0;
          const acc_t* hr = x + r * S;
          const acc_t Dd = rows[r].D;
          out_t* o = args.out + rows[r].row * L + t0;
          if (has_D) {
#pragma omp simd
            for (int64_t t = 0; t < T; ++t) {
              o[t] = static_cast<out_t>(static_cast<acc_t>(C0[t]) * hr[t] +
                                        Dd * static_cast<acc_t>(u[t]));
            }
          } else {
#pragma omp simd
            for (int64_t t = 0; t < T; ++t) {
              o[t] = static_cast<out_t>(static_cast<acc_t>(C0[t]) * hr[t]);
            }
          }
        }
        continue;
      }
      for (int r = 0; r < nr; ++r) {
        load_dt(rows[r].delta + t0, rows[r].bias, in.softplus, T, dt + r * S);
      }
      for (int64_t n = 0; n < N; ++n) {
        for (int r = 0; r < nr; ++r) {
          decay_and_input(dt + r * S, rows[r].u + t0, rows[r].B + n * L + t0, rows[r].A[n],
                          in.softplus && rows[r].A[n] <= acc_t(0), T, a + r * S, x + r * S);
        }
        scan_rows(a, S, x, S, T, h.data() + n * kRows);
        for (int r = 0; r < nr; ++r) {
          const scalar_t* Cn = rows[r].C + n * L + t0;
          const acc_t* hr = x + r * S;
          acc_t* yr = y + r * S;
          if (n == 0) {
#pragma omp simd
            for (int64_t t = 0; t < T; ++t) yr[t] = static_cast<acc_t>(Cn[t]) * hr[t];
          } else {
#pragma omp simd
            for (int64_t t = 0; t < T; ++t) yr[t] += static_cast<acc_t>(Cn[t]) * hr[t];
          }
        }
      }
      for (int r = 0; r < nr; ++r) {
        const acc_t* yr = y + r * S;
        const scalar_t* u = rows[r].u + t0;
        const acc_t Dd = rows[r].D;
        out_t* o = args.out + rows[r].row * L + t0;
        if (has_D) {
#pragma omp simd
          for (int64_t t = 0; t < T; ++t) {
            o[t] = static_cast<out_t>(yr[t] + Dd * static_cast<acc_t>(u[t]));
          }
        } else {
#pragma omp simd
          for (int64_t t = 0; t < T; ++t) o[t] = static_cast<out_t>(yr[t]);
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------
// Backward. A task (b, g, blk) owns a block of channels of group g, so its dB/dC partial sums
// need no synchronisation; it runs kRows channels at a time. The time axis is cut into
// segments of args.seg_len steps, as many as a per-thread workspace of kWorkspaceBytes holds:
// 87,296 for N = 1 in float32 (whole rows up to detection scale), fewer for larger N. A
// forward pass keeps the states at segment starts (checkpoints; skipped when there is one
// segment); then, last segment first, the segment's dt, decays a and states h are computed
// once and stored, and the adjoint recurrence runs backwards through them, chunk by chunk.

// Forward over [t0, t0 + T) into the segment store at offset off (lane-major layouts:
// dt [r][t], a [r][n][t], h [r][n][1 + t]); hstate (N x kRows) is updated.
template <typename scalar_t, typename acc_t>
MSV_INLINE void bwd_forward_chunk(const Inputs<scalar_t, acc_t>& in,
                                  const Row<scalar_t, acc_t>* rows, int nr, int64_t t0,
                                  int64_t T, int64_t off, int64_t SL, acc_t* dtS, acc_t* aS,
                                  acc_t* hS, acc_t* hstate) {
  const int64_t L = in.len, N = in.nstate;
  for (int r = 0; r < nr; ++r) {
    load_dt(rows[r].delta + t0, rows[r].bias, in.softplus, T, dtS + r * SL + off);
  }
  for (int64_t n = 0; n < N; ++n) {
    for (int r = 0; r < nr; ++r) {
      decay_and_input(dtS + r * SL + off, rows[r].u + t0, rows[r].B + n * L + t0, rows[r].A[n],
                      in.softplus && rows[r].A[n] <= acc_t(0), T,
                      aS + (r * N + n) * SL + off, hS + (r * N + n) * (SL + 1) + 1 + off);
    }
    scan_rows(aS + n * SL + off, N * SL, hS + n * (SL + 1) + 1 + off, N * (SL + 1), T,
              hstate + n * kRows);
  }
}

template <typename scalar_t, typename Next>
MSV_INLINE void bwd_items(const BwdArgs<scalar_t>& args, const Next& next) {
  using acc_t = typename AccT<scalar_t>::type;
  constexpr int64_t S = kChunk;
  const auto& in = args.in;
  const int64_t L = in.len, N = in.nstate, G = in.groups, dpg = in.dim / G;
  const int64_t SL = std::min(args.seg_len, L), nseg = (L + SL - 1) / SL;
  const bool has_D = in.D != nullptr;
  const CachedBuffer<acc_t> workspace(kRows * SL * (1 + 2 * N) + kRows * N);
  acc_t* dtS = workspace.data();
  acc_t* aS = dtS + kRows * SL;
  acc_t* hS = aS + kRows * N * SL;
  alignas(64) acc_t gh[kRows * S], ddt[kRows * S], duu[kRows * S];
  std::vector<acc_t> ck(nseg * N * kRows), hstate(N * kRows), carry(N * kRows),
      dA_acc(N * kRows);
  acc_t dD_acc[kRows], dbias_acc[kRows];
  Row<scalar_t, acc_t> rows[kRows];
  for (int64_t w = next(); w >= 0; w = next()) {
    const int64_t blk = w % args.nblk, bg = w / args.nblk, g = bg % G, b = bg / G;
    acc_t* dBp = args.dB_part + (bg * args.nblk + blk) * N * L;
    acc_t* dCp = args.dC_part + (bg * args.nblk + blk) * N * L;
    std::fill(dBp, dBp + N * L, acc_t(0));
    std::fill(dCp, dCp + N * L, acc_t(0));
    const int64_t d_begin = g * dpg + blk * args.blk_size;
    const int64_t d_end = std::min(d_begin + args.blk_size, (g + 1) * dpg);
    for (int64_t d0 = d_begin; d0 < d_end; d0 += kRows) {
      const int nr = static_cast<int>(std::min<int64_t>(kRows, d_end - d0));
      load_rows(in, b * in.dim + d0, nr, rows);
      // idle lanes: zero decay, input and adjoint input keep them at 0
      std::fill(aS + nr * N * SL, aS + kRows * N * SL, acc_t(0));
      std::fill(hS + nr * N * (SL + 1), hS + kRows * N * (SL + 1), acc_t(0));
      std::fill(gh + nr * S, gh + kRows * S, acc_t(0));

      // 1. checkpoints: ck[(s * N + n) * kRows + r] = state of lane r before segment s
      std::fill(hstate.begin(), hstate.end(), acc_t(0));
      for (int64_t s = 0; s < nseg; ++s) {
        std::copy(hstate.begin(), hstate.end(), ck.begin() + s * N * kRows);
        if (s == nseg - 1) break;
        for (int64_t t0 = s * SL; t0 < (s + 1) * SL; t0 += S) {
          bwd_forward_chunk(in, rows, nr, t0, std::min(S, L - t0), 0, SL, dtS, aS, hS,
                            hstate.data());
        }
      }

      // 2. per segment, last first: store its forward data, then run the adjoint through it
      std::fill(carry.begin(), carry.end(), acc_t(0));
      std::fill(dA_acc.begin(), dA_acc.end(), acc_t(0));
      std::fill(dD_acc, dD_acc + kRows, acc_t(0));
      std::fill(dbias_acc, dbias_acc + kRows, acc_t(0));
      for (int64_t s = nseg - 1; s >= 0; --s) {
        const int64_t s0 = s * SL, s1 = std::min(L, s0 + SL);
        std::copy(ck.begin() + s * N * kRows, ck.begin() + (s + 1) * N * kRows, hstate.begin());
        for (int r = 0; r < nr; ++r) {
          for (int64_t n = 0; n < N; ++n) hS[(r * N + n) * (SL + 1)] = hstate[n * kRows + r];
        }
        for (int64_t t0 = s0; t0 < s1; t0 += S) {
          bwd_forward_chunk(in, rows, nr, t0, std::min(S, s1 - t0), t0 - s0, SL, dtS, aS, hS,
                            hstate.data());
        }
        const int64_t last = s0 + (s1 - s0 - 1) / S * S;
        for (int64_t t0 = last; t0 >= s0; t0 -= S) {
          const int64_t T = std::min(S, s1 - t0), off = t0 - s0;
          for (int r = 0; r < nr; ++r) {
            const acc_t* gy = args.dout + rows[r].row * L + t0;
            const scalar_t* u = rows[r].u + t0;
            acc_t* du_r = duu + r * S;
            acc_t* ddt_r = ddt + r * S;
            const acc_t Dd = rows[r].D;
            acc_t dD_s = 0;
#pragma omp simd reduction(+ : dD_s)
            for (int64_t t = 0; t < T; ++t) {
              du_r[t] = has_D ? gy[t] * Dd : acc_t(0);
              ddt_r[t] = acc_t(0);
              dD_s += gy[t] * static_cast<acc_t>(u[t]);
            }
            dD_acc[r] += dD_s;
          }
          for (int64_t n = 0; n < N; ++n) {
            for (int r = 0; r < nr; ++r) {
              const acc_t* gy = args.dout + rows[r].row * L + t0;
              const scalar_t* Cn = rows[r].C + n * L + t0;
              acc_t* p = gh + r * S;
#pragma omp simd
              for (int64_t t = 0; t < T; ++t) p[t] = gy[t] * static_cast<acc_t>(Cn[t]);
            }
            rscan_rows(aS + n * SL + off, N * SL, gh, S, T, carry.data() + n * kRows);
            acc_t* dBn = dBp + n * L + t0;
            acc_t* dCn = dCp + n * L + t0;
            for (int r = 0; r < nr; ++r) {
              const acc_t An = rows[r].A[n];
              const acc_t* gy = args.dout + rows[r].row * L + t0;
              const scalar_t* u = rows[r].u + t0;
              const scalar_t* Bn = rows[r].B + n * L + t0;
              const acc_t* ar = aS + (r * N + n) * SL + off;
              const acc_t* hr = hS + (r * N + n) * (SL + 1) + off;  // hr[t] = h_{t-1}
              const acc_t *gr = gh + r * S, *dtr = dtS + r * SL + off;
              acc_t *ddt_r = ddt + r * S, *du_r = duu + r * S;
              acc_t dA_n = 0;
#pragma omp simd reduction(+ : dA_n)
              for (int64_t t = 0; t < T; ++t) {
                const acc_t Bv = static_cast<acc_t>(Bn[t]), uv = static_cast<acc_t>(u[t]);
                const acc_t ga = gr[t] * hr[t] * ar[t];  // d loss / d (dt * An)
                ddt_r[t] += ga * An + gr[t] * Bv * uv;
                dA_n += ga * dtr[t];
                du_r[t] += gr[t] * dtr[t] * Bv;
                dBn[t] += gr[t] * dtr[t] * uv;
                dCn[t] += gy[t] * hr[t + 1];
              }
              dA_acc[r * N + n] += dA_n;
            }
          }
          for (int r = 0; r < nr; ++r) {
            const scalar_t* delta = rows[r].delta + t0;
            const acc_t bias = rows[r].bias;
            const acc_t *ddt_r = ddt + r * S, *du_r = duu + r * S, *dtr = dtS + r * SL + off;
            scalar_t* ddelta = args.ddelta + rows[r].row * L + t0;
            scalar_t* du = args.du + rows[r].row * L + t0;
            acc_t db = 0;
            if (in.softplus) {
              // d softplus(v) / dv = sigmoid(v) = exp(v - softplus(v)) (v - dt <= 0)
#pragma omp simd reduction(+ : db)
              for (int64_t t = 0; t < T; ++t) {
                const acc_t v = static_cast<acc_t>(delta[t]) + bias;
                const acc_t dv = ddt_r[t] * exp_nonpos_(v - dtr[t]);
                ddelta[t] = static_cast<scalar_t>(dv);
                du[t] = static_cast<scalar_t>(du_r[t]);
                db += dv;
              }
            } else {
#pragma omp simd reduction(+ : db)
              for (int64_t t = 0; t < T; ++t) {
                ddelta[t] = static_cast<scalar_t>(ddt_r[t]);
                du[t] = static_cast<scalar_t>(du_r[t]);
                db += ddt_r[t];
              }
            }
            dbias_acc[r] += db;
          }
        }
      }
      for (int r = 0; r < nr; ++r) {
        const int64_t row = rows[r].row;
        for (int64_t n = 0; n < N; ++n) args.dA_part[row * N + n] = dA_acc[r * N + n];
        args.dD_part[row] = dD_acc[r];
        args.dbias_part[row] = dbias_acc[r];
      }
    }
  }
}

// One copy per instruction set of a kernel K (K::run(args, next) is always-inline).
struct FwdKernel {
  template <typename Args, typename Next>
  MSV_INLINE static void run(const Args& a, const Next& next) { fwd_rows(a, next); }
};
struct BwdKernel {
  template <typename Args, typename Next>
  MSV_INLINE static void run(const Args& a, const Next& next) { bwd_items(a, next); }
};

// ---------------------------------------------------------------------------------------
// Host side: checks, allocation, dispatch.


void check_inputs(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                  const at::Tensor& B, const at::Tensor& C,
                  const std::optional<at::Tensor>& D,
                  const std::optional<at::Tensor>& delta_bias) {
  TORCH_CHECK(u.dim() == 3, "msvmamba_cpu: u must be (Bt, D, L)");
  const int64_t Bt = u.size(0), Dm = u.size(1), L = u.size(2);
  TORCH_CHECK(delta.sizes() == u.sizes(), "msvmamba_cpu: delta must have u's shape");
  TORCH_CHECK(A.dim() == 2 && A.size(0) == Dm, "msvmamba_cpu: A must be (D, N)");
  const int64_t N = A.size(1);
  TORCH_CHECK(B.dim() == 4 && B.size(0) == Bt && B.size(2) == N && B.size(3) == L,
              "msvmamba_cpu: B must be (Bt, G, N, L)");
  TORCH_CHECK(C.sizes() == B.sizes(), "msvmamba_cpu: C must have B's shape");
  TORCH_CHECK(B.size(1) > 0 && Dm % B.size(1) == 0, "msvmamba_cpu: D must be divisible by G");
  const auto st = u.scalar_type();
  const auto acc = st == at::kDouble ? at::kDouble : at::kFloat;
  TORCH_CHECK(st == at::kFloat || st == at::kDouble || st == at::kHalf || st == at::kBFloat16,
              "msvmamba_cpu: unsupported dtype ", st);
  for (const at::Tensor* t : {&u, &delta, &B, &C}) {
    TORCH_CHECK(t->scalar_type() == st, "msvmamba_cpu: u, delta, B, C must share one dtype");
    TORCH_CHECK(t->device().is_cpu() && t->is_contiguous(),
                "msvmamba_cpu: inputs must be contiguous CPU tensors");
  }
  TORCH_CHECK(A.scalar_type() == acc && A.is_contiguous() && A.device().is_cpu(),
              "msvmamba_cpu: A must be a contiguous CPU tensor of dtype ", acc);
  for (const auto* t : {&D, &delta_bias}) {
    if (t->has_value()) {
      const at::Tensor& v = t->value();
      TORCH_CHECK(v.dim() == 1 && v.size(0) == Dm && v.scalar_type() == acc &&
                      v.is_contiguous() && v.device().is_cpu(),
                  "msvmamba_cpu: D and delta_bias must be contiguous (D,) CPU tensors of dtype ",
                  acc);
    }
  }
}

template <typename scalar_t>
Inputs<scalar_t, typename AccT<scalar_t>::type> make_inputs(
    const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B,
    const at::Tensor& C, const std::optional<at::Tensor>& D,
    const std::optional<at::Tensor>& delta_bias, bool softplus) {
  using acc_t = typename AccT<scalar_t>::type;
  Inputs<scalar_t, acc_t> in;
  in.u = u.const_data_ptr<scalar_t>();
  in.delta = delta.const_data_ptr<scalar_t>();
  in.B = B.const_data_ptr<scalar_t>();
  in.C = C.const_data_ptr<scalar_t>();
  in.A = A.const_data_ptr<acc_t>();
  in.D = D.has_value() ? D->const_data_ptr<acc_t>() : nullptr;
  in.bias = delta_bias.has_value() ? delta_bias->const_data_ptr<acc_t>() : nullptr;
  in.batch = u.size(0);
  in.dim = u.size(1);
  in.len = u.size(2);
  in.groups = B.size(1);
  in.nstate = A.size(1);
  in.softplus = softplus;
  return in;
}


template <typename scalar_t, typename out_t>
void launch_fwd(const Inputs<scalar_t, typename AccT<scalar_t>::type>& in, at::Tensor& out) {
  const FwdArgs<scalar_t, out_t> args{in, out.data_ptr<out_t>()};
  const int64_t rows = in.batch * in.dim;
  run_tasks<FwdKernel>(detect_isa(), args, (rows + kRows - 1) / kRows, rows * in.len * in.nstate);
}

at::Tensor scan_fwd(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                    const at::Tensor& B, const at::Tensor& C,
                    const std::optional<at::Tensor>& D,
                    const std::optional<at::Tensor>& delta_bias, bool delta_softplus,
                    bool out_float) {
  check_inputs(u, delta, A, B, C, D, delta_bias);
  const bool low = u.scalar_type() == at::kHalf || u.scalar_type() == at::kBFloat16;
  at::Tensor out = empty_cached(u.sizes(), u.options().dtype(out_float && low ? at::kFloat
                                                                      : u.scalar_type()));
  if (u.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, u.scalar_type(), "msvmamba_cpu_fwd",
                                  [&] {
    using acc_t = typename AccT<scalar_t>::type;
    const auto in = make_inputs<scalar_t>(u, delta, A, B, C, D, delta_bias, delta_softplus);
    if (out.scalar_type() == u.scalar_type()) {
      launch_fwd<scalar_t, scalar_t>(in, out);
    } else {
      launch_fwd<scalar_t, acc_t>(in, out);
    }
  });
  return out;
}

// out[o, i] = sum_k part[o, k, i] for part (outer, parts, inner), on the calling thread (a
// second parallel region would cost more than it saves: the sums are small next to the scan).
template <typename acc_t, typename out_t>
void sum_parts(const acc_t* part, int64_t outer, int64_t parts, int64_t inner, out_t* out) {
  if (parts == 0) {
    std::fill(out, out + outer * inner, out_t(0));
    return;
  }
  std::vector<acc_t> acc(inner);
  for (int64_t o = 0; o < outer; ++o) {
    const acc_t* p = part + o * parts * inner;
    std::copy(p, p + inner, acc.begin());
    for (int64_t k = 1; k < parts; ++k) {
      const acc_t* q = p + k * inner;
      acc_t* a = acc.data();
#pragma omp simd
      for (int64_t i = 0; i < inner; ++i) a[i] += q[i];
    }
    for (int64_t i = 0; i < inner; ++i) out[o * inner + i] = static_cast<out_t>(acc[i]);
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
scan_bwd(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B,
         const at::Tensor& C, const std::optional<at::Tensor>& D,
         const std::optional<at::Tensor>& delta_bias, const at::Tensor& dout,
         bool delta_softplus) {
  check_inputs(u, delta, A, B, C, D, delta_bias);
  const auto acc = A.scalar_type();
  TORCH_CHECK(dout.sizes() == u.sizes() && dout.scalar_type() == acc && dout.is_contiguous(),
              "msvmamba_cpu: dout must be a contiguous (Bt, D, L) tensor of dtype ", acc);
  const int64_t Bt = u.size(0), Dm = u.size(1), L = u.size(2), G = B.size(1), N = A.size(1);
  const int64_t dpg = Dm / G;
  // Work items: blocks of channels per (b, g), about 4 per thread (dynamic balance), each a
  // multiple of kRows channels; each block has its own dB/dC partial sums, added up at the end.
  const int64_t threads = at::get_num_threads();
  int64_t nblk = std::min<int64_t>((dpg + kRows - 1) / kRows,
                                   std::max<int64_t>(1, (4 * threads + Bt * G - 1) / (Bt * G)));
  const int64_t blk_size = ((dpg + nblk - 1) / nblk + kRows - 1) / kRows * kRows;
  nblk = (dpg + blk_size - 1) / blk_size;
  // Segment length: the stored forward data of kRows rows (dt, and a and h per state) within
  // a workspace budget per thread; a multiple of kChunk.
  const int64_t step_bytes = kRows * (1 + 2 * N) * static_cast<int64_t>(c10::elementSize(acc));
  int64_t seg_len = std::max<int64_t>(1, kWorkspaceBytes / step_bytes / kChunk) * kChunk;
  if (const char* env = std::getenv("MSVMAMBA_CPU_SEGMENT")) {  // tests: force short segments
    seg_len = std::max<int64_t>(1, std::atoll(env) / kChunk) * kChunk;
  }
  const auto acc_opts = u.options().dtype(acc);
  at::Tensor du = empty_cached(u.sizes(), u.options());
  at::Tensor ddelta = empty_cached(u.sizes(), u.options());
  at::Tensor dB = empty_cached(B.sizes(), B.options()), dC = empty_cached(B.sizes(), B.options());
  at::Tensor dA = at::empty({Dm, N}, acc_opts), dD = at::empty({Dm}, acc_opts);
  at::Tensor dbias = at::empty({Dm}, acc_opts);
  at::Tensor dB_part = empty_cached({Bt, G, nblk, N, L}, acc_opts);
  at::Tensor dC_part = empty_cached({Bt, G, nblk, N, L}, acc_opts);
  at::Tensor dA_part = at::zeros({Bt, Dm, N}, acc_opts);
  at::Tensor dD_part = at::zeros({Bt, Dm}, acc_opts);
  at::Tensor dbias_part = at::zeros({Bt, Dm}, acc_opts);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, u.scalar_type(), "msvmamba_cpu_bwd",
                                  [&] {
    using acc_t = typename AccT<scalar_t>::type;
    BwdArgs<scalar_t> args{make_inputs<scalar_t>(u, delta, A, B, C, D, delta_bias, delta_softplus),
                           dout.const_data_ptr<acc_t>(),
                           du.data_ptr<scalar_t>(),
                           ddelta.data_ptr<scalar_t>(),
                           dB_part.data_ptr<acc_t>(),
                           dC_part.data_ptr<acc_t>(),
                           dA_part.data_ptr<acc_t>(),
                           dD_part.data_ptr<acc_t>(),
                           dbias_part.data_ptr<acc_t>(),
                           nblk,
                           blk_size,
                           seg_len};
    if (u.numel() > 0) {
      run_tasks<BwdKernel>(detect_isa(), args, Bt * G * nblk, u.numel() * N);
    } else {
      dB_part.zero_();
      dC_part.zero_();
    }
    sum_parts(args.dB_part, Bt * G, nblk, N * L, dB.data_ptr<scalar_t>());
    sum_parts(args.dC_part, Bt * G, nblk, N * L, dC.data_ptr<scalar_t>());
    sum_parts(args.dA_part, 1, Bt, Dm * N, dA.data_ptr<acc_t>());
    sum_parts(args.dD_part, 1, Bt, Dm, dD.data_ptr<acc_t>());
    sum_parts(args.dbias_part, 1, Bt, Dm, dbias.data_ptr<acc_t>());
  });
  return {du, ddelta, dA, dB, dC, dD, dbias};
}

std::string scan_isa() { return isa_name(detect_isa()); }

}  // namespace
}  // namespace msv

TORCH_LIBRARY(msvmamba_cpu, m) {
  m.def(
      "fwd(Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor? D, "
      "Tensor? delta_bias, bool delta_softplus, bool out_float) -> Tensor");
  m.def(
      "bwd(Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor? D, "
      "Tensor? delta_bias, Tensor dout, bool delta_softplus) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("isa() -> str", &msv::scan_isa);
}

TORCH_LIBRARY_IMPL(msvmamba_cpu, CPU, m) {
  m.impl("fwd", &msv::scan_fwd);
  m.impl("bwd", &msv::scan_bwd);
}
