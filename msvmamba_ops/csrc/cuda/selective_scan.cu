// Selective-scan kernels, forward and backward (docs/architecture.md §3.6):
//   dt_t = softplus(delta_t + bias) (or delta_t + bias),   a_t = exp(dt_t * A[d, n]),
//   h_t  = a_t * h_{t-1} + dt_t * B[g, n, t] * u_t,        y_t = sum_n C[g, n, t] h_t + D u_t.
//
// Work split: a "team" of `team` threads (a power of two, 4..256) owns one (batch, channel) row;
// each thread takes kItems consecutive time steps, so the team covers a chunk of team * kItems
// steps and walks the row chunk by chunk, carrying the state h from one chunk to the next.
// Inside a chunk the recurrence is a composition of affine maps x -> a x + b: every thread
// composes its own steps, the team combines these with warp shuffles (teams of more than 32
// threads also combine their warps' totals through shared memory), and every thread then
// re-runs its steps from its exact starting state. All arithmetic is fp32.
//
// Backward (nothing saved but the inputs):
//   1. a forward pass over all chunks but the last stores the state at each chunk start
//      (ScanParams::chunk_state);
//   2. the chunks are walked in reverse. Per chunk and state n the forward states h are rebuilt
//      from the stored chunk-start state, then the adjoint g_t = dL/dh_t is obtained from the
//      reverse recurrence of q_t = a_t g_t:  q_t = a_t q_{t+1} + a_t C_t dy_t,
//      g_t = C_t dy_t + q_{t+1} (the same affine-map scan, run backwards in time). Then
//        du += dt B g,  ddt += B u g + A a h_{t-1} g,  dA += a dt h_{t-1} g,
//        dB += dt u g (summed over the channels of a group), dC += dy h (idem),
//      plus du += D dy, dD += u dy, and ddelta = ddt * softplus'(delta + bias).
//   dB/dC are first summed over the rows of the block (one batch and group) in shared memory,
//   then added with fp32 atomics; dA is summed per row in shared memory, dD/ddelta_bias per row
//   in registers, then added over the batch with atomics.
//
// Instantiated per dtype (fp32, fp16, bf16) x {N == 1, general N} x {forward, backward}.
#include "scan_platform.cuh"
#include "selective_scan.h"

namespace msvmamba_scan {
namespace {

constexpr float kLog2e = 1.4426950408889634f;

// The map x -> a * x + b; the recurrence h_t = a_t h_{t-1} + b_t chains such maps.
struct Affine {
  float a, b;
};

// The map "first, then second".
SCAN_DEVICE Affine then(Affine first, Affine second) {
  return {first.a * second.a, fmaf(second.a, first.b, second.b)};
}

// The threads of a block that scan one row together.
struct Team {
  int size;    // threads in the team (power of two)
  int index;   // team (= row) index within the block
  int lane;    // thread index within the team
  int width;   // shuffle segment: min(size, 32)
  int warps;   // warps in the team (1 if size <= 32)
  int warp;    // warp index within the team
  int buf;     // which of the two `wagg` buffers the next combine uses
  float* wagg; // this team's 2 x warps x (a, b) floats of shared memory
};

SCAN_DEVICE Team make_team(int size, float* wagg_base) {
  Team t;
  const int tid = thread_index();
  t.size = size;
  t.index = tid / size;
  t.lane = tid % size;
  t.width = size < 32 ? size : 32;
  t.warps = size > 32 ? size / 32 : 1;
  t.warp = t.lane / 32;
  t.buf = 0;
  t.wagg = wagg_base + t.index * 2 * t.warps * 2;
  return t;
}

// Next buffer of the multi-warp combine area. The two buffers alternate, so a buffer is only
// rewritten after the block barrier of the following combine: readers of the previous use have
// all passed it. Every thread of the block makes the same sequence of calls.
SCAN_DEVICE float* next_wagg(Team& t) {
  float* slot = t.wagg + t.buf * t.warps * 2;
  t.buf ^= 1;
  return slot;
}

// Scan of the threads' maps `x` over the team, in time order (kReverse: backwards in time,
// i.e. from the team's last thread to its first). Returns the composition of the maps of the
// threads before this one in scan order (the identity for the first) and sets *total to the
// composition over the whole team. Called by every thread of the block.
template <bool kReverse>
SCAN_DEVICE Affine team_scan(Team& t, Affine x, Affine* total) {
  const int w = t.width;
  const int sl = t.lane % w;
  Affine inc = x;
  for (int off = 1; off < w; off <<= 1) {
    const float pa = kReverse ? shfl_down(inc.a, off, w) : shfl_up(inc.a, off, w);
    const float pb = kReverse ? shfl_down(inc.b, off, w) : shfl_up(inc.b, off, w);
    if (kReverse ? sl + off < w : sl >= off) inc = then(Affine{pa, pb}, inc);
  }
  const float ea = kReverse ? shfl_down(inc.a, 1, w) : shfl_up(inc.a, 1, w);
  const float eb = kReverse ? shfl_down(inc.b, 1, w) : shfl_up(inc.b, 1, w);
  const int last = kReverse ? 0 : w - 1;  // lane holding the segment's total
  const Affine excl = sl == (kReverse ? w - 1 : 0) ? Affine{1.f, 0.f} : Affine{ea, eb};
  const Affine seg_total{shfl_idx(inc.a, last, w), shfl_idx(inc.b, last, w)};
  if (t.warps == 1) {
    *total = seg_total;
    return excl;
  }
  float* slot = next_wagg(t);
  if (sl == last) {
    slot[2 * t.warp] = seg_total.a;
    slot[2 * t.warp + 1] = seg_total.b;
  }
  block_sync();
  Affine before{1.f, 0.f}, all{1.f, 0.f};
  for (int i = 0; i < t.warps; ++i) {
    const int wi = kReverse ? t.warps - 1 - i : i;
    if (wi == t.warp) before = all;
    all = then(all, Affine{slot[2 * wi], slot[2 * wi + 1]});
  }
  *total = all;
  return then(before, excl);
}

// Sum of v over the team, returned to every thread. Called by every thread of the block.
SCAN_DEVICE float team_sum(Team& t, float v) {
  for (int off = t.width / 2; off > 0; off >>= 1) v += shfl_xor(v, off, t.width);
  if (t.warps == 1) return v;
  float* slot = next_wagg(t);
  if (t.lane % 32 == 0) slot[t.warp] = v;
  block_sync();
  float s = 0.f;
  for (int i = 0; i < t.warps; ++i) s += slot[i];
  return s;
}

// kItems consecutive values row[t0 .. t0 + kItems) as fp32 (0 beyond len): 16-byte vector loads
// where the run is complete and aligned, else scalar loads.
template <typename T>
SCAN_DEVICE void load_items(const T* row, int t0, int len, float (&v)[kItems]) {
  constexpr int kVec = 16 / sizeof(T);
  const T* p = row + t0;
  if (t0 + kItems <= len && (reinterpret_cast<uintptr_t>(p) & 15) == 0) {
#pragma unroll
    for (int j = 0; j < kItems; j += kVec) {
      const uint4 raw = *reinterpret_cast<const uint4*>(p + j);
      T tmp[kVec];
      memcpy(tmp, &raw, sizeof(raw));
#pragma unroll
      for (int k = 0; k < kVec; ++k) v[j + k] = to_float(tmp[k]);
    }
  } else {
#pragma unroll
    for (int i = 0; i < kItems; ++i) v[i] = t0 + i < len ? to_float(p[i]) : 0.f;
  }
}

template <typename T>
SCAN_DEVICE void store_items(T* row, int t0, int len, const float (&v)[kItems]) {
  constexpr int kVec = 16 / sizeof(T);
  T* p = row + t0;
  if (t0 + kItems <= len && (reinterpret_cast<uintptr_t>(p) & 15) == 0) {
#pragma unroll
    for (int j = 0; j < kItems; j += kVec) {
      T tmp[kVec];
#pragma unroll
      for (int k = 0; k < kVec; ++k) tmp[k] = from_float<T>(v[j + k]);
      uint4 raw;
      memcpy(&raw, tmp, sizeof(raw));
      *reinterpret_cast<uint4*>(p + j) = raw;
    }
  } else {
#pragma unroll
    for (int i = 0; i < kItems; ++i)
      if (t0 + i < len) p[i] = from_float<T>(v[i]);
  }
}

// A tensor that is either fp32 or the input dtype T (out, dout).
template <typename T>
SCAN_DEVICE void load_items_or_float(const void* base, bool is_float, long long offset, int t0, int len,
                                     float (&v)[kItems]) {
  if (is_float) load_items(static_cast<const float*>(base) + offset, t0, len, v);
  else load_items(static_cast<const T*>(base) + offset, t0, len, v);
}

SCAN_DEVICE float softplus(float v) { return v <= 20.f ? log1pf(expf(v)) : v; }
SCAN_DEVICE float softplus_grad(float v) { return v <= 20.f ? 1.f / (1.f + expf(-v)) : 1.f; }

// Per-thread view of its row: pointers, the channel's parameters, its place in the chunk.
template <typename T>
struct Row {
  long long offset;    // of the row in u/delta/out/...: (b * dim + d) * len
  long long bc;        // of (b, g, n = 0, t = 0) in B/C
  int d, len, nstate;
  float D, bias;
  const float* A;      // A[d, :]

  SCAN_DEVICE Row(const ScanParams& p, const Team& t) {
    const long long row = block_index() * p.rows + t.index;
    const long long b = row / p.dim;
    d = static_cast<int>(row - b * p.dim);
    const int g = d / (p.dim / p.groups);
    len = p.len;
    nstate = p.nstate;
    offset = row * len;
    bc = (b * p.groups + g) * nstate * static_cast<long long>(len);
    D = p.D != nullptr ? p.D[d] : 0.f;
    bias = p.delta_bias != nullptr ? p.delta_bias[d] : 0.f;
    A = p.A + static_cast<long long>(d) * nstate;
  }

  // u and dt of this thread's steps (dt = 0 beyond len, which makes those steps identity
  // maps); `pre` receives delta + bias (for softplus'), if given.
  SCAN_DEVICE void load_u_dt(const ScanParams& p, int t0, float (&u)[kItems], float (&dt)[kItems],
                             float (*pre)[kItems] = nullptr) const {
    load_items(static_cast<const T*>(p.u) + offset, t0, len, u);
    load_items(static_cast<const T*>(p.delta) + offset, t0, len, dt);
#pragma unroll
    for (int i = 0; i < kItems; ++i) {
      const float v = dt[i] + bias;
      if (pre != nullptr) (*pre)[i] = v;
      dt[i] = t0 + i < len ? (p.softplus ? softplus(v) : v) : 0.f;
    }
  }

  // a_t and b_t = dt_t B_t u_t of this thread's steps for state n; returns their composition.
  SCAN_DEVICE Affine step_maps(const ScanParams& p, int n, int t0, const float (&dt)[kItems],
                               const float (&u)[kItems], float (&bv)[kItems], float (&a)[kItems],
                               float (&beta)[kItems]) const {
    load_items(static_cast<const T*>(p.B) + bc + static_cast<long long>(n) * len, t0, len, bv);
    const float a2 = A[n] * kLog2e;
    Affine agg{1.f, 0.f};
#pragma unroll
    for (int i = 0; i < kItems; ++i) {
      a[i] = exp2f(dt[i] * a2);
      beta[i] = dt[i] * bv[i] * u[i];
      agg = then(agg, Affine{a[i], beta[i]});
    }
    return agg;
  }
};

// Carry of the state between chunks: a register for N == 1; for general N, a shared-memory
// slot per state, double-buffered by chunk parity (read buffer `parity`, write the other). The
// kernels put a block barrier at the start of each (chunk, state) step, which orders every
// write after the reads of the previous use of the same buffer and before the next read.
template <bool kN1>
struct Carry {
  float reg = 0.f;
  float* sh;  // 2 x nstate floats of this team (general N)
  int nstate;

  SCAN_DEVICE Carry(float* smem, const Team& t, int n_state) : sh(smem + t.index * 2 * n_state), nstate(n_state) {
    if (!kN1)
      for (int n = t.lane; n < nstate; n += t.size) sh[n] = 0.f;
  }
  SCAN_DEVICE float get(int parity, int n) const { return kN1 ? reg : sh[parity * nstate + n]; }
  SCAN_DEVICE void set(const Team& t, int parity, int n, float v) {
    if (kN1) reg = v;
    else if (t.lane == 0) sh[(parity ^ 1) * nstate + n] = v;
  }
};

// What every kernel derives from its parameters.
template <typename T, bool kN1>
struct Setup {
  float* smem;
  SmemLayout lay;
  Team tm;
  Row<T> row;
  int nstate, chunk, nchunks;

  SCAN_DEVICE Setup(const ScanParams& p, bool backward)
      : smem(shared_memory()),
        lay(p.rows, p.team, p.nstate, backward),
        tm(make_team(p.team, smem + lay.wagg)),
        row(p, tm),
        nstate(kN1 ? 1 : p.nstate),
        chunk(p.team * kItems),
        nchunks((p.len + chunk - 1) / chunk) {}
  // first step of this thread in chunk c
  SCAN_DEVICE int start(int c) const { return c * chunk + tm.lane * kItems; }
};

template <typename T, bool kN1>
SCAN_KERNEL void scan_fwd_kernel(ScanParams p) {
  Setup<T, kN1> s(p, false);
  Team& tm = s.tm;
  const Row<T>& row = s.row;
  const int nstate = s.nstate;
  Carry<kN1> carry(s.smem + s.lay.carry, tm, nstate);
  for (int c = 0; c < s.nchunks; ++c) {
    const int t0 = s.start(c);
    float u[kItems], dt[kItems], y[kItems];
    row.load_u_dt(p, t0, u, dt);
#pragma unroll
    for (int i = 0; i < kItems; ++i) y[i] = row.D * u[i];
    for (int n = 0; n < nstate; ++n) {
      if (!kN1) block_sync();
      float bv[kItems], cv[kItems], a[kItems], beta[kItems];
      const Affine agg = row.step_maps(p, n, t0, dt, u, bv, a, beta);
      load_items(static_cast<const T*>(p.C) + row.bc + static_cast<long long>(n) * p.len, t0, p.len, cv);
      Affine total;
      const Affine before = team_scan<false>(tm, agg, &total);
      const float h0 = carry.get(c & 1, n);
      float h = fmaf(before.a, h0, before.b);
#pragma unroll
      for (int i = 0; i < kItems; ++i) {
        h = fmaf(a[i], h, beta[i]);
        y[i] = fmaf(cv[i], h, y[i]);
      }
      carry.set(tm, c & 1, n, fmaf(total.a, h0, total.b));
    }
    if (p.out_float) store_items(static_cast<float*>(p.out) + row.offset, t0, p.len, y);
    else store_items(static_cast<T*>(p.out) + row.offset, t0, p.len, y);
  }
}

// Adds this thread's dB/dC values of one chunk (state n) into the fp32 accumulators: summed over
// the block's rows in shared memory first when there are several.
SCAN_DEVICE void add_dbc(const Team& tm, int rows, float* red, const float (&vb)[kItems], const float (&vc)[kItems],
                         float* dB, float* dC, int chunk_start, int len) {
  if (rows == 1) {
#pragma unroll
    for (int i = 0; i < kItems; ++i) {
      const int t = chunk_start + tm.lane * kItems + i;
      if (t < len) {
        atomic_add(dB + t, vb[i]);
        atomic_add(dC + t, vc[i]);
      }
    }
    return;
  }
  const int stride = tm.size * (kItems + 1);  // padded: conflict-free writes
  float* rb = red + tm.index * stride;
  float* rc = red + (rows + tm.index) * stride;
#pragma unroll
  for (int i = 0; i < kItems; ++i) {
    rb[tm.lane * (kItems + 1) + i] = vb[i];
    rc[tm.lane * (kItems + 1) + i] = vc[i];
  }
  block_sync();
  const int chunk = tm.size * kItems;
  for (int pos = thread_index(); pos < chunk; pos += rows * tm.size) {
    const int slot = pos / kItems * (kItems + 1) + pos % kItems;
    float sb = 0.f, sc = 0.f;
    for (int r = 0; r < rows; ++r) {
      sb += red[r * stride + slot];
      sc += red[(rows + r) * stride + slot];
    }
    const int t = chunk_start + pos;
    if (t < len) {
      atomic_add(dB + t, sb);
      atomic_add(dC + t, sc);
    }
  }
  block_sync();
}

template <typename T, bool kN1>
SCAN_KERNEL void scan_bwd_kernel(ScanParams p) {
  Setup<T, kN1> s(p, true);
  Team& tm = s.tm;
  const Row<T>& row = s.row;
  const int nstate = s.nstate, chunk = s.chunk, nchunks = s.nchunks;
  float* dA_row = s.smem + s.lay.dA + tm.index * nstate;
  for (int n = tm.lane; n < nstate; n += tm.size) dA_row[n] = 0.f;
  float* chunk_state = p.chunk_state + (block_index() * p.rows + tm.index) * nchunks * nstate;

  // 1. States at the chunk starts (the first is 0).
  if (nchunks > 1) {
    Carry<kN1> fwd(s.smem + s.lay.carry, tm, nstate);
    for (int c = 0; c + 1 < nchunks; ++c) {
      const int t0 = s.start(c);
      float u[kItems], dt[kItems];
      row.load_u_dt(p, t0, u, dt);
      for (int n = 0; n < nstate; ++n) {
        if (!kN1) block_sync();
        float bv[kItems], a[kItems], beta[kItems];
        Affine total;
        team_scan<false>(tm, row.step_maps(p, n, t0, dt, u, bv, a, beta), &total);
        const float h = fmaf(total.a, fwd.get(c & 1, n), total.b);
        fwd.set(tm, c & 1, n, h);
        if (tm.lane == 0) chunk_state[(c + 1) * nstate + n] = h;
      }
    }
  }
  block_sync();  // chunk_state, dA_row written; the carry area is reused below

  // 2. Chunks in reverse.
  Carry<kN1> rev(s.smem + s.lay.carry, tm, nstate);
  float dD = 0.f, dbias = 0.f;
  for (int k = 0; k < nchunks; ++k) {
    const int c = nchunks - 1 - k;
    const int t0 = s.start(c);
    float u[kItems], dt[kItems], pre[kItems], dy[kItems], du[kItems], ddt[kItems];
    row.load_u_dt(p, t0, u, dt, &pre);
    load_items_or_float<T>(p.dout, p.dout_float, row.offset, t0, p.len, dy);
#pragma unroll
    for (int i = 0; i < kItems; ++i) {
      du[i] = row.D * dy[i];
      ddt[i] = 0.f;
      dD = fmaf(dy[i], u[i], dD);
    }
    for (int n = 0; n < nstate; ++n) {
      if (!kN1) block_sync();
      float bv[kItems], cv[kItems], a[kItems], beta[kItems], hprev[kItems];
      // forward states of this chunk
      Affine total;
      const Affine before = team_scan<false>(tm, row.step_maps(p, n, t0, dt, u, bv, a, beta), &total);
      const float h0 = c == 0 ? 0.f : chunk_state[c * nstate + n];
      float h = fmaf(before.a, h0, before.b);
#pragma unroll
      for (int i = 0; i < kItems; ++i) {
        hprev[i] = h;
        h = fmaf(a[i], h, beta[i]);
      }
      // adjoint: q_t = a_t (C_t dy_t + q_{t+1}), composed backwards in time
      load_items(static_cast<const T*>(p.C) + row.bc + static_cast<long long>(n) * p.len, t0, p.len, cv);
      Affine ragg{1.f, 0.f};
#pragma unroll
      for (int i = kItems - 1; i >= 0; --i) ragg = then(ragg, Affine{a[i], a[i] * cv[i] * dy[i]});
      Affine rtotal;
      const Affine rbefore = team_scan<true>(tm, ragg, &rtotal);
      const float q0 = rev.get(k & 1, n);
      float q = fmaf(rbefore.a, q0, rbefore.b);  // q_{t+1} of this thread's last step
      const float An = row.A[n];
      float dA_part = 0.f, vb[kItems], vc[kItems];
#pragma unroll
      for (int i = kItems - 1; i >= 0; --i) {
        const float g = fmaf(cv[i], dy[i], q);  // dL/dh_t
        q = a[i] * g;
        const float ga = g * hprev[i] * a[i];   // dL/da_t * a_t
        du[i] = fmaf(g * dt[i], bv[i], du[i]);
        ddt[i] += g * bv[i] * u[i] + ga * An;
        dA_part = fmaf(ga, dt[i], dA_part);
        vb[i] = g * dt[i] * u[i];
        vc[i] = dy[i] * fmaf(a[i], hprev[i], beta[i]);
      }
      rev.set(tm, k & 1, n, fmaf(rtotal.a, q0, rtotal.b));
      for (int off = tm.width / 2; off > 0; off >>= 1) dA_part += shfl_xor(dA_part, off, tm.width);
      if (tm.lane % tm.width == 0) atomic_add(dA_row + n, dA_part);
      const long long bcn = row.bc + static_cast<long long>(n) * p.len;
      add_dbc(tm, p.rows, s.smem + s.lay.red, vb, vc, p.dB + bcn, p.dC + bcn, c * chunk, p.len);
    }
#pragma unroll
    for (int i = 0; i < kItems; ++i) {
      if (p.softplus) ddt[i] *= softplus_grad(pre[i]);
      dbias += t0 + i < p.len ? ddt[i] : 0.f;
    }
    store_items(static_cast<T*>(p.du) + row.offset, t0, p.len, du);
    store_items(static_cast<T*>(p.ddelta) + row.offset, t0, p.len, ddt);
  }
  dD = team_sum(tm, dD);
  dbias = team_sum(tm, dbias);
  if (tm.lane == 0) {
    if (p.dD != nullptr) atomic_add(p.dD + row.d, dD);
    if (p.ddelta_bias != nullptr) atomic_add(p.ddelta_bias + row.d, dbias);
  }
  block_sync();
  for (int n = tm.lane; n < nstate; n += tm.size)
    atomic_add(p.dA + static_cast<long long>(row.d) * nstate + n, dA_row[n]);
}

template <typename T>
void launch_typed(const ScanParams& p, const ScanConfig& cfg, void* stream, bool backward) {
  const bool n1 = p.nstate == 1;
  void (*kernel)(ScanParams) = backward ? (n1 ? scan_bwd_kernel<T, true> : scan_bwd_kernel<T, false>)
                                        : (n1 ? scan_fwd_kernel<T, true> : scan_fwd_kernel<T, false>);
  launch(kernel, cfg.blocks, cfg.threads, cfg.smem_bytes, stream, p);
}

}  // namespace

int scan_launch(const ScanParams& p, ScanDtype dtype, const ScanConfig& cfg, void* stream, bool backward) {
  switch (dtype) {
    case ScanDtype::kFloat32: launch_typed<float>(p, cfg, stream, backward); break;
    case ScanDtype::kFloat16: launch_typed<half_t>(p, cfg, stream, backward); break;
    case ScanDtype::kBFloat16: launch_typed<bf16_t>(p, cfg, stream, backward); break;
  }
  return launch_status();
}

const char* scan_error_string(int code) { return status_string(code); }

}  // namespace msvmamba_scan
