// PyTorch binding of the CUDA selective scan: argument checks, output allocation, launch.
// torch ops (namespace msvmamba_cuda; msvmamba_cuda_emulated for the emulated build):
//   fwd(u, delta, A, B, C, D?, delta_bias?, delta_softplus, out_float) -> out
//   bwd(u, delta, A, B, C, D?, delta_bias?, dout, delta_softplus)
//       -> (du, ddelta, dA, dB, dC, dD, ddelta_bias)   (dD / ddelta_bias undefined if absent)
//   config(batch, dim, len, nstate, groups, sm_count, backward) -> launch plan (int[])
// Only light ATen headers (not torch/extension.h): this file dominates the build time.
// Built with MSVMAMBA_SCAN_EMULATE it takes CPU tensors and runs the kernels emulated.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <torch/library.h>

#include <atomic>
#include <optional>
#include <tuple>
#include <vector>

#include "selective_scan.h"

#ifdef MSVMAMBA_SCAN_EMULATE
#define SCAN_OPS msvmamba_cuda_emulated
#define SCAN_DISPATCH_KEY CPU
#else
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#define SCAN_OPS msvmamba_cuda
#define SCAN_DISPATCH_KEY CUDA
#endif

namespace msvmamba_scan {
namespace {

using OptTensor = std::optional<at::Tensor>;

ScanDtype scan_dtype(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return ScanDtype::kFloat32;
    case at::kHalf: return ScanDtype::kFloat16;
    case at::kBFloat16: return ScanDtype::kBFloat16;
    default: TORCH_CHECK(false, "selective_scan (cuda): u must be float32, float16 or bfloat16, got ", t.scalar_type());
  }
}

void check_tensor(const at::Tensor& t, const char* name, int dim) {
#ifdef MSVMAMBA_SCAN_EMULATE
  TORCH_CHECK(t.device().is_cpu(), "selective_scan (emulated): ", name, " must be a CPU tensor");
#else
  TORCH_CHECK(t.is_cuda(), "selective_scan (cuda): ", name, " must be a CUDA tensor");
#endif
  TORCH_CHECK(t.dim() == dim, "selective_scan (cuda): ", name, " must have ", dim, " dims, got ", t.sizes());
  TORCH_CHECK(t.is_contiguous(), "selective_scan (cuda): ", name, " must be contiguous");
}

void check_f32(const at::Tensor& t, const char* name, int dim) {
  check_tensor(t, name, dim);
  TORCH_CHECK(t.scalar_type() == at::kFloat, "selective_scan (cuda): ", name, " must be float32");
}

// Multiprocessors of u's device (queried once per device); the emulation plans for one.
int sm_count(const at::Tensor& u) {
#ifdef MSVMAMBA_SCAN_EMULATE
  (void)u;
  return 1;
#else
  static std::atomic<int> cache[256] = {};
  const int device = u.device().index();
  int count = device >= 0 && device < 256 ? cache[device].load() : 0;
  if (count == 0) {
    const cudaError_t err = cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device);
    TORCH_CHECK(err == cudaSuccess, "selective_scan (cuda): ", cudaGetErrorString(err));
    if (device >= 0 && device < 256) cache[device].store(count);
  }
  return count;
#endif
}

// Checks the inputs and fills sizes, pointers and the launch configuration.
ScanConfig prepare(ScanParams& p, const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                   const at::Tensor& B, const at::Tensor& C, const OptTensor& D, const OptTensor& delta_bias,
                   bool softplus, bool backward) {
  check_tensor(u, "u", 3);
  check_tensor(delta, "delta", 3);
  check_tensor(B, "B", 4);
  check_tensor(C, "C", 4);
  check_f32(A, "A", 2);
  const int64_t batch = u.size(0), dim = u.size(1), len = u.size(2);
  const int64_t groups = B.size(1), nstate = B.size(2);
  TORCH_CHECK(delta.sizes() == u.sizes(), "selective_scan (cuda): delta must have u's shape");
  TORCH_CHECK(A.size(0) == dim && A.size(1) == nstate, "selective_scan (cuda): A must be (D, N)");
  TORCH_CHECK(B.size(0) == batch && B.size(3) == len && C.sizes() == B.sizes(),
              "selective_scan (cuda): B and C must be (Bt, G, N, L)");
  TORCH_CHECK(groups > 0 && dim % groups == 0, "selective_scan (cuda): D must be a multiple of G");
  TORCH_CHECK(nstate >= 1 && nstate <= kMaxState, "selective_scan (cuda): N must be in [1, ", kMaxState, "]");
  for (const at::Tensor* t : {&delta, &B, &C})
    TORCH_CHECK(t->scalar_type() == u.scalar_type(), "selective_scan (cuda): u, delta, B, C must share a dtype");
  TORCH_CHECK(len < (int64_t{1} << 31) - kItems * 256 && batch * dim < (int64_t{1} << 31),
              "selective_scan (cuda): tensor too large");
  if (D) check_f32(*D, "D", 1);
  if (delta_bias) check_f32(*delta_bias, "delta_bias", 1);
  TORCH_CHECK(!D || D->size(0) == dim, "selective_scan (cuda): D must be (D,)");
  TORCH_CHECK(!delta_bias || delta_bias->size(0) == dim, "selective_scan (cuda): delta_bias must be (D,)");

  p.batch = static_cast<int>(batch);
  p.dim = static_cast<int>(dim);
  p.len = static_cast<int>(len);
  p.nstate = static_cast<int>(nstate);
  p.groups = static_cast<int>(groups);
  p.softplus = softplus;
  p.u = u.data_ptr();
  p.delta = delta.data_ptr();
  p.A = A.data_ptr<float>();
  p.B = B.data_ptr();
  p.C = C.data_ptr();
  p.D = D ? D->data_ptr<float>() : nullptr;
  p.delta_bias = delta_bias ? delta_bias->data_ptr<float>() : nullptr;
  const ScanConfig cfg = make_config(p.batch, p.dim, p.len, p.nstate, p.groups, sm_count(u), backward);
  p.team = cfg.team;
  p.rows = cfg.rows;
  return cfg;
}

void* current_stream() {
#ifdef MSVMAMBA_SCAN_EMULATE
  return nullptr;
#else
  return c10::cuda::getCurrentCUDAStream().stream();
#endif
}

void check_launch(int status) {
  TORCH_CHECK(status == 0, "selective_scan (cuda): kernel launch failed: ", scan_error_string(status));
}

at::Tensor fwd(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B,
               const at::Tensor& C, const OptTensor& D, const OptTensor& delta_bias, bool delta_softplus,
               bool out_float) {
#ifndef MSVMAMBA_SCAN_EMULATE
  const c10::cuda::CUDAGuard guard(u.device());
#endif
  ScanParams p;
  const ScanConfig cfg = prepare(p, u, delta, A, B, C, D, delta_bias, delta_softplus, false);
  at::Tensor out = at::empty(u.sizes(), u.options().dtype(out_float ? at::kFloat : u.scalar_type()));
  p.out = out.data_ptr();
  p.out_float = out.scalar_type() == at::kFloat;
  if (cfg.blocks > 0 && p.len > 0) check_launch(scan_launch(p, scan_dtype(u), cfg, current_stream(), false));
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> bwd(
    const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B, const at::Tensor& C,
    const OptTensor& D, const OptTensor& delta_bias, const at::Tensor& dout, bool delta_softplus) {
#ifndef MSVMAMBA_SCAN_EMULATE
  const c10::cuda::CUDAGuard guard(u.device());
#endif
  ScanParams p;
  const ScanConfig cfg = prepare(p, u, delta, A, B, C, D, delta_bias, delta_softplus, true);
  check_tensor(dout, "dout", 3);
  TORCH_CHECK(dout.sizes() == u.sizes(), "selective_scan (cuda): dout must have u's shape");
  TORCH_CHECK(dout.scalar_type() == u.scalar_type() || dout.scalar_type() == at::kFloat,
              "selective_scan (cuda): dout must have u's dtype or be float32");
  const auto f32 = u.options().dtype(at::kFloat);
  at::Tensor du = at::empty_like(u), ddelta = at::empty_like(delta);
  at::Tensor dA = at::zeros_like(A);
  // dB/dC are sums over channels, accumulated with fp32 atomics.
  at::Tensor dB = at::zeros(B.sizes(), f32), dC = at::zeros(C.sizes(), f32);
  at::Tensor dD, ddelta_bias, chunk_state;  // undefined unless needed
  if (D) dD = at::zeros_like(*D);
  if (delta_bias) ddelta_bias = at::zeros_like(*delta_bias);
  if (cfg.nchunks > 1) chunk_state = at::empty({int64_t{p.batch} * p.dim, cfg.nchunks, p.nstate}, f32);
  p.dout = dout.data_ptr();
  p.dout_float = dout.scalar_type() == at::kFloat;
  p.du = du.data_ptr();
  p.ddelta = ddelta.data_ptr();
  p.dA = dA.data_ptr<float>();
  p.dB = dB.data_ptr<float>();
  p.dC = dC.data_ptr<float>();
  p.dD = D ? dD.data_ptr<float>() : nullptr;
  p.ddelta_bias = delta_bias ? ddelta_bias.data_ptr<float>() : nullptr;
  p.chunk_state = cfg.nchunks > 1 ? chunk_state.data_ptr<float>() : nullptr;
  if (cfg.blocks > 0 && p.len > 0) {
    check_launch(scan_launch(p, scan_dtype(u), cfg, current_stream(), true));
  } else {
    du.zero_();
    ddelta.zero_();
  }
  return {du, ddelta, dA, dB.to(B.scalar_type()), dC.to(C.scalar_type()), dD, ddelta_bias};
}

// Launch plan, for tests and benchmarks: [team, rows per block, threads, chunk, n_chunks,
// shared memory bytes] for the given sizes and SM count.
std::vector<int64_t> config(int64_t batch, int64_t dim, int64_t len, int64_t nstate, int64_t groups,
                            int64_t sm_count, bool backward) {
  const ScanConfig c = make_config(static_cast<int>(batch), static_cast<int>(dim), static_cast<int>(len),
                                   static_cast<int>(nstate), static_cast<int>(groups), static_cast<int>(sm_count),
                                   backward);
  return {c.team, c.rows, c.threads, c.chunk, c.nchunks, static_cast<int64_t>(c.smem_bytes)};
}

}  // namespace
}  // namespace msvmamba_scan

// TORCH_LIBRARY pastes its namespace argument: expand SCAN_OPS first.
#define SCAN_LIBRARY(ns, m) TORCH_LIBRARY(ns, m)
#define SCAN_LIBRARY_IMPL(ns, key, m) TORCH_LIBRARY_IMPL(ns, key, m)

SCAN_LIBRARY(SCAN_OPS, m) {
  m.def("fwd(Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor? D, Tensor? delta_bias, "
        "bool delta_softplus, bool out_float) -> Tensor");
  m.def("bwd(Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor? D, Tensor? delta_bias, "
        "Tensor dout, bool delta_softplus) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("config(int batch, int dim, int len, int nstate, int groups, int sm_count, bool backward) -> int[]",
        &msvmamba_scan::config);
}

SCAN_LIBRARY_IMPL(SCAN_OPS, SCAN_DISPATCH_KEY, m) {
  m.impl("fwd", &msvmamba_scan::fwd);
  m.impl("bwd", &msvmamba_scan::bwd);
}
