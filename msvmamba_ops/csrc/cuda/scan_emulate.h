// CPU emulation of the device primitives in scan_platform.cuh, for testing the kernels'
// logic without a GPU (tests/ops/test_cuda_emulated.py). Each CUDA thread of a block is a
// std::thread; the blocks of a launch run one after another on the same threads.
//  * block_sync() is a barrier over the block; a shuffle writes the lane's value to an exchange
//    slot, waits on a barrier over its warp, reads the source lane's slot and waits again, so
//    every lane of the warp must call it (as on the GPU with a full mask).
//  * Shared memory is filled with NaN before every block, so reading a slot that the kernel
//    did not write first shows up in the results.
// Slow (thousands of thread switches per chunk): only for tiny shapes.
#pragma once

#include <algorithm>
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <stdexcept>
#include <thread>
#include <vector>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#define SCAN_DEVICE inline
#define SCAN_KERNEL

struct alignas(16) uint4 {
  unsigned x, y, z, w;
};

namespace msvmamba_scan {

using half_t = c10::Half;
using bf16_t = c10::BFloat16;

namespace emu {

struct Block {
  explicit Block(int threads, size_t smem_bytes)
      : sync(threads), exchange(threads), smem(smem_bytes / sizeof(float) + 1) {
    for (int w = 0; w < threads / 32; ++w) warp_sync.emplace_back(std::make_unique<std::barrier<>>(32));
  }
  std::barrier<> sync;
  std::vector<std::unique_ptr<std::barrier<>>> warp_sync;
  std::vector<float> exchange;
  std::vector<float> smem;
};

inline thread_local int tl_thread = 0;
inline thread_local long long tl_block = 0;
inline thread_local Block* tl_state = nullptr;

template <typename Fn>
void run_blocks(long long blocks, int threads, size_t smem_bytes, Fn&& body) {
  if (threads % 32 != 0) throw std::runtime_error("emulated launch: threads must be whole warps");
  Block state(threads, smem_bytes);
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      tl_thread = t;
      tl_state = &state;
      for (long long b = 0; b < blocks; ++b) {
        if (t == 0) std::fill(state.smem.begin(), state.smem.end(), std::numeric_limits<float>::quiet_NaN());
        state.sync.arrive_and_wait();
        tl_block = b;
        body();
        state.sync.arrive_and_wait();
      }
    });
  }
  for (auto& th : pool) th.join();
}

inline float shuffle(float v, int src_in_warp) {
  Block& st = *tl_state;
  const int warp = tl_thread / 32;
  st.exchange[tl_thread] = v;
  st.warp_sync[warp]->arrive_and_wait();
  const float r = st.exchange[warp * 32 + src_in_warp];
  st.warp_sync[warp]->arrive_and_wait();
  return r;
}

}  // namespace emu

inline int thread_index() { return emu::tl_thread; }
inline long long block_index() { return emu::tl_block; }
inline void block_sync() { emu::tl_state->sync.arrive_and_wait(); }
inline float* shared_memory() { return emu::tl_state->smem.data(); }

inline float shfl_up(float v, int delta, int width) {
  const int lane = emu::tl_thread % 32, seg = lane / width * width, sl = lane % width;
  return emu::shuffle(v, sl >= delta ? seg + sl - delta : lane);
}
inline float shfl_down(float v, int delta, int width) {
  const int lane = emu::tl_thread % 32, seg = lane / width * width, sl = lane % width;
  return emu::shuffle(v, sl + delta < width ? seg + sl + delta : lane);
}
inline float shfl_idx(float v, int src, int width) {
  const int lane = emu::tl_thread % 32;
  return emu::shuffle(v, lane / width * width + src % width);
}
inline float shfl_xor(float v, int mask, int width) {
  const int lane = emu::tl_thread % 32;
  return emu::shuffle(v, lane / width * width + ((lane % width) ^ mask) % width);
}
inline void atomic_add(float* p, float v) { std::atomic_ref<float>(*p).fetch_add(v); }

inline float to_float(float x) { return x; }
inline float to_float(half_t x) { return static_cast<float>(x); }
inline float to_float(bf16_t x) { return static_cast<float>(x); }
template <typename T> inline T from_float(float x) { return static_cast<T>(x); }

template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), long long blocks, int threads, size_t smem_bytes, void*, const Args&... args) {
  emu::run_blocks(blocks, threads, smem_bytes, [&] { kernel(args...); });
}
inline int launch_status() { return 0; }
inline const char* status_string(int) { return "no error"; }

}  // namespace msvmamba_scan
