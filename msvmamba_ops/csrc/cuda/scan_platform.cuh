// The few device primitives the scan kernels use: thread/block indices, block barrier, warp
// shuffles, float atomics, dtype conversions and the kernel launch. With
// MSVMAMBA_SCAN_EMULATE defined they come from scan_emulate.h instead, which runs the same
// kernels on the CPU (one std::thread per CUDA thread) so that their logic can be tested on a
// machine without a GPU.
#pragma once

#include <cstdint>
#include <cstring>

#ifdef MSVMAMBA_SCAN_EMULATE
#include "scan_emulate.h"
#else
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#define SCAN_DEVICE __device__ __forceinline__
#define SCAN_KERNEL __global__

namespace msvmamba_scan {

using half_t = __half;
using bf16_t = __nv_bfloat16;

SCAN_DEVICE int thread_index() { return static_cast<int>(threadIdx.x); }
SCAN_DEVICE long long block_index() { return static_cast<long long>(blockIdx.x); }
SCAN_DEVICE void block_sync() { __syncthreads(); }
SCAN_DEVICE float* shared_memory() {
  extern __shared__ float scan_smem[];
  return scan_smem;
}
// Shuffles inside segments of `width` lanes (a power of two <= 32); every lane of the warp calls.
SCAN_DEVICE float shfl_up(float v, int delta, int width) { return __shfl_up_sync(0xffffffffu, v, delta, width); }
SCAN_DEVICE float shfl_down(float v, int delta, int width) { return __shfl_down_sync(0xffffffffu, v, delta, width); }
SCAN_DEVICE float shfl_idx(float v, int lane, int width) { return __shfl_sync(0xffffffffu, v, lane, width); }
SCAN_DEVICE float shfl_xor(float v, int mask, int width) { return __shfl_xor_sync(0xffffffffu, v, mask, width); }
SCAN_DEVICE void atomic_add(float* p, float v) { atomicAdd(p, v); }

SCAN_DEVICE float to_float(float x) { return x; }
SCAN_DEVICE float to_float(half_t x) { return __half2float(x); }
SCAN_DEVICE float to_float(bf16_t x) { return __bfloat162float(x); }
template <typename T> SCAN_DEVICE T from_float(float x);
template <> SCAN_DEVICE float from_float<float>(float x) { return x; }
template <> SCAN_DEVICE half_t from_float<half_t>(float x) { return __float2half_rn(x); }
template <> SCAN_DEVICE bf16_t from_float<bf16_t>(float x) { return __float2bfloat16_rn(x); }

template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), long long blocks, int threads, size_t smem_bytes, void* stream,
            const Args&... args) {
  kernel<<<static_cast<unsigned>(blocks), threads, smem_bytes, static_cast<cudaStream_t>(stream)>>>(args...);
}
inline int launch_status() { return static_cast<int>(cudaGetLastError()); }
inline const char* status_string(int code) { return cudaGetErrorString(static_cast<cudaError_t>(code)); }

}  // namespace msvmamba_scan
#endif
