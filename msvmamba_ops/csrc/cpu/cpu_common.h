// Shared by the CPU kernels of msvmamba_ops (selective_scan_cpu.cpp, ms2d_cpu.cpp):
// vectorisable float math, the block cache, run-time instruction-set dispatch and the
// task runner. Everything is inline (one definition across the translation units).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <new>
#include <string>
#include <type_traits>
#include <vector>

#if defined(__GNUC__)
#define MSV_INLINE inline __attribute__((always_inline))
#else
#define MSV_INLINE inline
#endif

#if defined(__x86_64__) && defined(__GNUC__)
#define MSV_X86 1
#define MSV_TARGET_AVX2 __attribute__((target("avx2,fma")))
#define MSV_TARGET_AVX512 \
  __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")))
#endif

namespace msv {

template <typename T>
struct AccT {
  using type = float;
};
template <>
struct AccT<double> {
  using type = double;
};

// ---------------------------------------------------------------------------------------
// Math. float: vectorisable polynomial versions; double: libm (used by the float64 tests).

// exp(x) = 2^k exp(r), k = round(x / ln2), |r| <= ln2 / 2 (Cephes-style minimax polynomial),
// for x already in [-87, 88.7] (or NaN, which propagates). Branch-free, so it vectorises.
MSV_INLINE float exp_reduced_(float x) {
  const float magic = 12582912.f;  // 1.5 * 2^23: adding it rounds to an integer
  const float shifted = x * 1.44269504088896341f + magic;
  const float k = shifted - magic;
  const uint32_t kbits = std::bit_cast<uint32_t>(shifted) - 0x4B400000u;
  const float scale = std::bit_cast<float>((kbits + 127u) << 23);  // 2^k
  const float r = (x - k * 0.693359375f) + k * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.f;
  return p * scale;
}

// exp(x) for x <= 0 (the decays exp(dt * A) with A <= 0, dt >= 0, and inside softplus):
// one clamp; x < -87 gives exp(-87) ~ 1.6e-38 instead of a denormal or 0.
MSV_INLINE float exp_nonpos_(float x) { return exp_reduced_(x < -87.f ? -87.f : x); }

// exp(x) for any x: +inf above 88 (exp(88.7) is the float maximum), 0 below -87.
MSV_INLINE float exp_(float x) {
  const float y = exp_reduced_(x < -87.f ? -87.f : (x > 88.f ? 88.f : x));
  return x > 88.f ? INFINITY : (x < -87.f ? 0.f : y);
}
MSV_INLINE double exp_(double x) { return std::exp(x); }
MSV_INLINE double exp_nonpos_(double x) { return std::exp(x); }

// log1p(z) for z in [0, 1] (or NaN): w = 1 + z = 2^e m, m in [sqrt(.5), sqrt(2)), f = m - 1
// computed without rounding loss, log(1 + f) by a polynomial.
MSV_INLINE float log1p_unit_(float z) {
  const bool big = z > 0.41421356f;
  // f = big ? (z - 1) / 2 : z, as one multiply-add (keeps the compiler from evaluating the
  // polynomial once per branch)
  const float f = z * (big ? 0.5f : 1.f) + (big ? -0.5f : 0.f);
  const float e = big ? 0.693147180559945f : 0.f;
  const float f2 = f * f;
  float p = 7.0376836292e-2f;
  p = p * f - 1.1514610310e-1f;
  p = p * f + 1.1676998740e-1f;
  p = p * f - 1.2420140846e-1f;
  p = p * f + 1.4249322787e-1f;
  p = p * f - 1.6668057665e-1f;
  p = p * f + 2.0000714765e-1f;
  p = p * f - 2.4999993993e-1f;
  p = p * f + 3.3333331174e-1f;
  return f + f2 * (f * p - 0.5f) + e;
}

// softplus(v) = log1p(exp(v)) for v <= 20, v above (torch's threshold), NaN -> NaN.
MSV_INLINE float softplus_(float v) {
  const float neg_abs = std::bit_cast<float>(std::bit_cast<uint32_t>(v) | 0x80000000u);
  return (v > 0.f ? v : 0.f) + log1p_unit_(exp_nonpos_(neg_abs));
}
MSV_INLINE double softplus_(double v) { return v > 20.0 ? v : std::log1p(std::exp(v)); }

// SiLU(v) = v * sigmoid(v) = v / (1 + exp(-v)).
MSV_INLINE float silu_(float v) { return v / (1.f + exp_(-v)); }

// Large outputs, temporaries and the backward's per-thread workspaces come from a small cache
// of recently freed blocks of the same size: the first touch of fresh pages (page faults)
// costs up to a third of the forward scan (more in VMs), and torch's CPU allocator does not
// cache. The cache holds at most kCacheBlocks blocks and MSVMAMBA_CPU_CACHE_MB megabytes
// (default 512; 0 disables it).
class BlockCache {
 public:
  static BlockCache& get() {
    static BlockCache* cache = new BlockCache();  // never destroyed: deleters may run at exit
    return *cache;
  }
  void* take(size_t bytes) {
    {
      std::lock_guard<std::mutex> guard(mutex_);
      auto it = free_.find(bytes);
      if (it != free_.end()) {
        void* p = it->second;
        free_.erase(it);
        cached_ -= bytes;
        return p;
      }
    }
    void* p = nullptr;
    if (posix_memalign(&p, 64, bytes) != 0) throw std::bad_alloc();
    return p;
  }
  void give(void* p, size_t bytes) {
    {
      std::lock_guard<std::mutex> guard(mutex_);
      if (free_.size() < kCacheBlocks && cached_ + bytes <= limit_) {
        free_.emplace(bytes, p);
        cached_ += bytes;
        return;
      }
    }
    std::free(p);
  }
  size_t limit() const { return limit_; }

 private:
  static constexpr size_t kCacheBlocks = 16;
  BlockCache() {
    const char* env = std::getenv("MSVMAMBA_CPU_CACHE_MB");
    limit_ = (env != nullptr ? std::strtoull(env, nullptr, 10) : 512ull) << 20;
  }
  std::mutex mutex_;
  std::multimap<size_t, void*> free_;
  size_t cached_ = 0, limit_ = 0;
};

// A block from the cache for the lifetime of the object.
template <typename T>
class CachedBuffer {
 public:
  explicit CachedBuffer(int64_t n)
      : bytes_(static_cast<size_t>(std::max<int64_t>(n, 1)) * sizeof(T)),
        data_(static_cast<T*>(BlockCache::get().take(bytes_))) {}
  ~CachedBuffer() { BlockCache::get().give(data_, bytes_); }
  CachedBuffer(const CachedBuffer&) = delete;
  CachedBuffer& operator=(const CachedBuffer&) = delete;
  T* data() const { return data_; }

 private:
  size_t bytes_;
  T* data_;
};

// ---------------------------------------------------------------------------------------
// Explicit vectors for the fused inference kernels: 16 floats as a GCC vector, one zmm
// register in the AVX-512 copy of a kernel, two ymm or four xmm in the others. Used where
// the compiler's own vectorisation falls short (register-blocked accumulations).
typedef float vf16 __attribute__((vector_size(64)));
typedef float vf16u __attribute__((vector_size(64), aligned(4)));  // unaligned access
constexpr int64_t kLanes = 16;

template <typename V>
MSV_INLINE V loadv(const float* p) {
  if constexpr (std::is_same_v<V, float>) {
    return *p;
  } else {
    return *reinterpret_cast<const vf16u*>(p);
  }
}
template <typename V>
MSV_INLINE void storev(float* p, V v) {
  if constexpr (std::is_same_v<V, float>) {
    *p = v;
  } else {
    *reinterpret_cast<vf16u*>(p) = v;
  }
}

// bfloat16 activations (under bf16 autocast the projections around the fused ops read and
// write bf16), held as their raw 16 bits: the upper half of a float32. Widening is exact
// (a zero-extend and a shift: vpmovzxwd + vpslld in the vector copies); narrowing rounds to
// nearest even, bit for bit as torch's float -> bfloat16 conversion for every number
// (so a bf16 output equals the float32 op's output cast to bf16), and turns NaN into the
// quiet NaN 0x7FC0 (torch writes another NaN pattern, 0xFFFF). Both are plain integer math, which the compiler vectorises in every instruction-set
// copy of a kernel; avx512_bf16's vcvtneps2bf16 would differ on denormals (it flushes them).
typedef uint16_t bf16_bits;
typedef uint16_t vbf16u __attribute__((vector_size(32), aligned(2)));  // 16 lanes, unaligned
typedef uint32_t vu32x16 __attribute__((vector_size(64)));

MSV_INLINE float bf16_to_float(bf16_bits v) {
  return std::bit_cast<float>(static_cast<uint32_t>(v) << 16);
}
MSV_INLINE bf16_bits float_to_bf16(float v) {
  const uint32_t bits = std::bit_cast<uint32_t>(v);
  const uint32_t rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
  return static_cast<bf16_bits>(v != v ? 0x7FC0u : rounded);
}

template <typename V>
MSV_INLINE V loadv(const bf16_bits* p) {
  if constexpr (std::is_same_v<V, float>) {
    return bf16_to_float(*p);
  } else {
    const vu32x16 wide = __builtin_convertvector(*reinterpret_cast<const vbf16u*>(p), vu32x16);
    return std::bit_cast<V>(wide << 16);
  }
}

// dst[0 : n] = src[0 : n] as bf16 (n floats; vectorised).
MSV_INLINE void store_bf16_row(bf16_bits* __restrict dst, const float* __restrict src,
                               int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) dst[i] = float_to_bf16(src[i]);
}

// y[0 : E] = LayerNorm(y) * w + b in place: mean, then the variance about it (two passes
// over a row that sits in L1).
MSV_INLINE void layer_norm_(float* __restrict y, int64_t E, const float* __restrict w,
                            const float* __restrict b, float eps) {
  float sum = 0.f;
#pragma omp simd reduction(+ : sum)
  for (int64_t e = 0; e < E; ++e) sum += y[e];
  const float mean = sum / static_cast<float>(E);
  float sq = 0.f;
#pragma omp simd reduction(+ : sq)
  for (int64_t e = 0; e < E; ++e) sq += (y[e] - mean) * (y[e] - mean);
  // 1 / sqrt rounded once, as a division (no approximate reciprocal square root)
  const float rstd = 1.f / std::sqrt(sq / static_cast<float>(E) + eps);
#pragma omp simd
  for (int64_t e = 0; e < E; ++e) y[e] = (y[e] - mean) * rstd * w[e] + b[e];
}

// A float32 tensor of ``sizes`` holding src in its leading corner and zeros elsewhere (the
// fused kernels' weights, padded to whole vectors); all zeros for a missing src.
inline at::Tensor zero_padded(const std::optional<at::Tensor>& src, at::IntArrayRef sizes) {
  at::Tensor out = at::zeros(sizes, at::TensorOptions().dtype(at::kFloat));
  if (src.has_value()) {
    at::Tensor corner = out;
    for (int64_t d = 0; d < src->dim(); ++d) corner = corner.narrow(d, 0, src->size(d));
    corner.copy_(*src);
  }
  return out;
}

// Channels [c0, c0 + CV lanes) of a depthwise k x k conv at JB output positions along a row,
// on a channel-last map x (Hin x Win pixels, rows of C elements), accumulated in registers
// onto what dst holds: dst[jb][c] += sum over the taps inside the map of w[tap][c] *
// (x[pixel][c] + shift[c]) (taps outside are zero padding). Output jb's window starts at
// input pixel (i0, j0 + jb * stride); dst rows are ld floats apart. Each tap's weights are
// loaded once for the JB outputs. w: (k * k) rows of CP floats; shift: null or CP floats.
// V = vf16 or float (a tail lane).
template <typename V, int CV, int JB, typename T>
MSV_INLINE void dwconv_block(const T* __restrict x, int64_t Hin, int64_t Win, int64_t C,
                             int64_t i0, int64_t j0, int64_t stride, int64_t k,
                             const float* __restrict w, int64_t CP, const float* __restrict shift,
                             int64_t c0, float* __restrict dst, int64_t ld) {
  constexpr int64_t L = sizeof(V) / sizeof(float);
  V acc[JB][CV], sh[CV];
  for (int c = 0; c < CV; ++c) {
    sh[c] = shift ? loadv<V>(shift + c0 + c * L) : V{};
    for (int jb = 0; jb < JB; ++jb) acc[jb][c] = loadv<V>(dst + jb * ld + c0 + c * L);
  }
  for (int64_t di = 0; di < k; ++di) {
    const int64_t ii = i0 + di;
    if (ii < 0 || ii >= Hin) continue;
    const T* xrow = x + ii * Win * C + c0;
    for (int64_t dj = 0; dj < k; ++dj) {
      V wv[CV];
      for (int c = 0; c < CV; ++c) wv[c] = loadv<V>(w + (di * k + dj) * CP + c0 + c * L);
      for (int jb = 0; jb < JB; ++jb) {
        const int64_t jj = j0 + jb * stride + dj;
        if (jj < 0 || jj >= Win) continue;
        const T* src = xrow + jj * C;
        for (int c = 0; c < CV; ++c) {
          acc[jb][c] += wv[c] * (shift ? loadv<V>(src + c * L) + sh[c] : loadv<V>(src + c * L));
        }
      }
    }
  }
  for (int c = 0; c < CV; ++c) {
    for (int jb = 0; jb < JB; ++jb) storev<V>(dst + jb * ld + c0 + c * L, acc[jb][c]);
  }
}

// dwconv_block over all C channels: whole vectors, then single lanes (the rows of x are C
// elements long, so no vector may run past C).
template <int JB, typename T>
MSV_INLINE void dwconv_block_channels(const T* x, int64_t Hin, int64_t Win, int64_t C,
                                      int64_t i0, int64_t j0, int64_t stride, int64_t k,
                                      const float* w, int64_t CP, const float* shift,
                                      float* dst, int64_t ld) {
  constexpr int CV = JB > 1 ? 2 : 4;  // JB x CV accumulators fit the 32 zmm registers
  const int64_t C16 = C / kLanes * kLanes;
  int64_t c0 = 0;
  for (; c0 + CV * kLanes <= C16; c0 += CV * kLanes) {
    dwconv_block<vf16, CV, JB>(x, Hin, Win, C, i0, j0, stride, k, w, CP, shift, c0, dst, ld);
  }
  for (; c0 < C16; c0 += kLanes) {
    dwconv_block<vf16, 1, JB>(x, Hin, Win, C, i0, j0, stride, k, w, CP, shift, c0, dst, ld);
  }
  for (; c0 < C; ++c0) {
    dwconv_block<float, 1, JB>(x, Hin, Win, C, i0, j0, stride, k, w, CP, shift, c0, dst, ld);
  }
}

// n consecutive output positions of one output row (windows starting at input column j0,
// j0 + stride, ...), in blocks of 8. x: float32 or bf16 (widened as it is read).
template <typename T>
MSV_INLINE void dwconv_row(const T* x, int64_t Hin, int64_t Win, int64_t C, int64_t i0,
                           int64_t j0, int64_t stride, int64_t k, const float* w, int64_t CP,
                           const float* shift, int64_t n, float* dst, int64_t ld) {
  constexpr int JB = 8;
  int64_t q = 0;
  for (; q + JB <= n; q += JB) {
    dwconv_block_channels<JB>(x, Hin, Win, C, i0, j0 + q * stride, stride, k, w, CP, shift,
                              dst + q * ld, ld);
  }
  for (; q < n; ++q) {
    dwconv_block_channels<1>(x, Hin, Win, C, i0, j0 + q * stride, stride, k, w, CP, shift,
                             dst + q * ld, ld);
  }
}

// ---------------------------------------------------------------------------------------
// Instruction-set variants (x86-64): always-inline kernels are compiled again inside
// functions carrying a target attribute.

enum class Isa { kDefault, kAvx2, kAvx512 };

inline Isa detect_isa() {
#ifdef MSV_X86
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") &&
                      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512dq");
  Isa best = avx512 ? Isa::kAvx512 : (avx2 ? Isa::kAvx2 : Isa::kDefault);
#else
  Isa best = Isa::kDefault;
#endif
  // MSVMAMBA_CPU_ISA asks for a lower level (never a higher one than the CPU has).
  const char* env = std::getenv("MSVMAMBA_CPU_ISA");
  if (env != nullptr) {
    Isa want = best;
    if (std::strcmp(env, "default") == 0) want = Isa::kDefault;
    if (std::strcmp(env, "avx2") == 0) want = Isa::kAvx2;
    if (std::strcmp(env, "avx512") == 0) want = Isa::kAvx512;
    if (static_cast<int>(want) < static_cast<int>(best)) best = want;
  }
  return best;
}

inline const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx2: return "avx2";
    default:
#ifdef MSV_X86
      return "x86-64 baseline (sse2)";
#else
      return "baseline";
#endif
  }
}

template <typename K, typename Args, typename Next>
void run_default(const Args& a, const Next& next) { K::run(a, next); }
#ifdef MSV_X86
template <typename K, typename Args, typename Next>
MSV_TARGET_AVX2 void run_avx2(const Args& a, const Next& next) { K::run(a, next); }
template <typename K, typename Args, typename Next>
MSV_TARGET_AVX512 void run_avx512(const Args& a, const Next& next) { K::run(a, next); }
#endif

// float64 is for tests only: it runs the baseline copy (libm calls do not vectorise).
template <typename K, typename Args, typename Next>
void run_isa(Isa isa, const Args& a, const Next& next) {
#ifdef MSV_X86
  if constexpr (!std::is_same_v<typename Args::acc_t, double>) {
    if (isa == Isa::kAvx512) return run_avx512<K>(a, next);
    if (isa == Isa::kAvx2) return run_avx2<K>(a, next);
  }
#endif
  run_default<K>(a, next);
}


// Output tensors: large ones from the block cache.
inline at::Tensor empty_cached(at::IntArrayRef sizes, const at::TensorOptions& options) {
  int64_t numel = 1;
  for (int64_t s : sizes) numel *= s;
  const size_t bytes = static_cast<size_t>(numel) * c10::elementSize(options.dtype().toScalarType());
  auto& cache = BlockCache::get();
  if (bytes < (1u << 20) || bytes > cache.limit()) return at::empty(sizes, options);
  void* p = cache.take(bytes);
  return at::from_blob(p, sizes, [bytes](void* q) { BlockCache::get().give(q, bytes); }, options);
}

// Runs the kernel K on the intra-op (OpenMP) threads: each thread calls K once and takes
// tasks [0, ntasks) one at a time from a shared counter, so a thread that gets less CPU time
// (a busy machine) just takes fewer. Small problems (< ~64k element-steps) run on the calling
// thread.
template <typename K, typename Args>
void run_tasks(Isa isa, const Args& args, int64_t ntasks, int64_t work) {
  std::atomic<int64_t> counter{0};
  const auto next = [&]() -> int64_t {
    const int64_t i = counter.fetch_add(1, std::memory_order_relaxed);
    return i < ntasks ? i : -1;
  };
  const int64_t threads = std::min<int64_t>(
      {static_cast<int64_t>(at::get_num_threads()), ntasks, std::max<int64_t>(1, work >> 16)});
  if (threads <= 1 || at::in_parallel_region()) {
    run_isa<K>(isa, args, next);
    return;
  }
  at::parallel_for(0, threads, 1, [&](int64_t, int64_t) { run_isa<K>(isa, args, next); });
}

}  // namespace msv
