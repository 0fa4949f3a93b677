// Interface between the PyTorch binding (selective_scan.cpp, host compiler) and the kernels
// (selective_scan.cu, nvcc). Plain C++ only: no torch and no CUDA headers, so that nvcc never
// parses the torch headers and the kernels compile quickly.
#pragma once

#include <cstddef>
#include <cstdint>

namespace msvmamba_scan {

// Consecutive time steps handled by one thread (16-byte vector loads of fp16/bf16, two of fp32).
constexpr int kItems = 8;
// Largest state size N: the per-row carries and dA partial sums live in shared memory.
constexpr int kMaxState = 2048;

enum class ScanDtype : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// Everything a kernel reads. Shapes (all contiguous): u, delta, out, dout, du, ddelta (batch, dim,
// len); A, dA (dim, nstate); B, C, dB, dC (batch, groups, nstate, len); D, delta_bias, dD,
// ddelta_bias (dim,). u/delta/B/C/du/ddelta have the input dtype; everything else is fp32, except
// out (input dtype or fp32, `out_float`) and dout (input dtype or fp32, `dout_float`).
struct ScanParams {
  int batch = 0, dim = 0, len = 0, nstate = 0, groups = 0;
  int team = 0;            // threads that scan one (batch, channel) row together
  int rows = 0;            // rows per block (all in the same batch and group)
  bool softplus = false;
  const void* u = nullptr;
  const void* delta = nullptr;
  const float* A = nullptr;
  const void* B = nullptr;
  const void* C = nullptr;
  const float* D = nullptr;           // optional
  const float* delta_bias = nullptr;  // optional
  // forward
  void* out = nullptr;
  bool out_float = false;
  // backward
  const void* dout = nullptr;
  bool dout_float = false;
  void* du = nullptr;
  void* ddelta = nullptr;
  float* dA = nullptr;           // zero-initialised, accumulated with atomics
  float* dB = nullptr;           // zero-initialised fp32, accumulated with atomics
  float* dC = nullptr;           // zero-initialised fp32, accumulated with atomics
  float* dD = nullptr;           // optional, zero-initialised
  float* ddelta_bias = nullptr;  // optional, zero-initialised
  float* chunk_state = nullptr;  // (batch*dim, nchunks, nstate) workspace, needed if nchunks > 1
};

// Dynamic shared memory of a block, in floats. Computed identically on host and device.
struct SmemLayout {
  int wagg = 0;   // per row: 2 buffers x warps x (a, b): combine of warp totals (team > 32 only)
  int carry = 0;  // per row: 2 buffers x nstate: chunk carries (general-N kernels only)
  int dA = 0;     // per row: nstate partial sums of dA (backward only)
  int red = 0;    // 2 arrays x rows x team x (kItems + 1): dB/dC sums over rows (backward, rows > 1)
  int total = 0;
#if defined(__CUDACC__)
  __host__ __device__
#endif
  SmemLayout(int rows, int team, int nstate, bool backward) {
    const int warps = team > 32 ? team / 32 : 0;
    const bool general = nstate != 1;
    int off = 0;
    wagg = off;
    off += rows * 2 * warps * 2;
    carry = off;
    off += general ? rows * 2 * nstate : 0;
    dA = off;
    off += backward ? rows * nstate : 0;
    red = off;
    off += (backward && rows > 1) ? 2 * rows * team * (kItems + 1) : 0;
    total = off;
  }
};

// Launch configuration. A "team" of `team` threads (a power of two, 4..256) scans one row,
// `kItems` consecutive steps per thread, so a chunk of team * kItems steps per iteration; the
// state is carried from chunk to chunk. Short rows get small teams (several rows per warp),
// long rows with little batch*dim parallelism get teams of several warps.
struct ScanConfig {
  int team = 0, rows = 0, chunk = 0, nchunks = 0, threads = 0;
  long long blocks = 0;
  size_t smem_bytes = 0;
};

inline ScanConfig make_config(int batch, int dim, int len, int nstate, int groups, int sm_count,
                              bool backward) {
  ScanConfig c;
  const long long total_rows = static_cast<long long>(batch) * dim;
  const int steps_per_thread = (len + kItems - 1) / kItems;
  int team = 4;
  while (team < 32 && team < steps_per_thread) team *= 2;
  // Widen the team while the rows alone do not fill the device (about 2048 threads per SM).
  while (team < 256 && len >= 2LL * team * kItems && total_rows * team < sm_count * 2048LL) team *= 2;
  // Rows per block: they share one (batch, group), so that dB/dC are summed over them in shared
  // memory before the atomics; must divide the channels per group. Blocks of 128 threads, 256
  // in the backward (half the atomics; its occupancy is bound by registers either way).
  const int per_group = dim / groups;
  const int block = backward ? 256 : 128;
  int rows = team >= block ? 1 : block / team;
  while (rows > 1 && (per_group % rows != 0 || (nstate != 1 && rows * nstate > kMaxState))) rows /= 2;
  if (rows * team < 32) team = 32 / rows;  // whole warps only (full-mask shuffles)
  c.team = team;
  c.rows = rows;
  c.threads = team * rows;
  c.chunk = team * kItems;
  c.nchunks = len > 0 ? (len + c.chunk - 1) / c.chunk : 0;
  c.blocks = total_rows / rows;
  c.smem_bytes = sizeof(float) * static_cast<size_t>(SmemLayout(rows, team, nstate, backward).total);
  return c;
}

// Launches the forward or backward kernel (selective_scan.cu) on `stream` (a cudaStream_t).
// Returns 0 on success, else a CUDA error code.
int scan_launch(const ScanParams& p, ScanDtype dtype, const ScanConfig& cfg, void* stream, bool backward);
const char* scan_error_string(int code);

}  // namespace msvmamba_scan
