// Fused inference middle of the MSVMamba ConvFFN (projects/msvmamba), CPU:
//
//   t = h + in_bias                      h = x W1^T, linear1 without its bias (a plain matmul:
//                                        adding the bias there costs a pass of its own)
//   g = GELU(t + dwconv(t) + conv_bias)  depthwise k x k conv, stride 1, zero 'same' padding
//
// on a channel-last (B, H, W, F) map, in one pass; the unfused path runs addmm (bias copy),
// the conv, an add and the GELU, each over the whole map. GELU is the exact (erf) form; erf
// uses Abramowitz & Stegun 7.1.26 (absolute error below 1.5e-7), as ATen's vectorised erf
// does. h and the output are float32, or both bf16 (under bf16 autocast: linear1's bf16
// output is read and linear2's bf16 input written here, widened and rounded as they stream
// through, instead of two cast passes over the map; the math stays float32). Tasks are
// (image, row) pairs. Exposed as msvmamba_cpu::convffn_dwconv_gelu;
// msvmamba_ops/cpu_fused.py documents it, tests/ops/test_cpu_fused.py checks it against
// the unfused ops.
#include "cpu_common.h"

namespace msv {
namespace {

// T: float (float32 h and output) or bf16_bits (bf16 h and output).
template <typename T>
struct ConvFfnArgs {
  using acc_t = float;
  const T* h;            // (Bt, H, W, F)
  const float* in_bias;  // (FP) zero-padded (zeros when there is none)
  const float* w;        // (k * k, FP) taps, transposed, zero-padded
  const float* bias;     // (FP) zero-padded
  T* out;                // (Bt, H, W, F)
  int64_t H, W, F, FP, k;  // FP: F rounded up to a multiple of 16
};

// erf(x), Abramowitz & Stegun 7.1.26: 1 - (a1 t + ... + a5 t^5) exp(-x^2), t = 1 / (1 + p|x|).
MSV_INLINE float erf_(float x) {
  const float a = std::fabs(x);
  const float t = 1.f / (1.f + 0.3275911f * a);
  float r = 1.061405429f;
  r = r * t - 1.453152027f;
  r = r * t + 1.421413741f;
  r = r * t - 0.284496736f;
  r = r * t + 0.254829592f;
  const float e = 1.f - r * t * exp_nonpos_(-a * a);
  return std::copysign(e, x);
}

MSV_INLINE float gelu_(float x) { return 0.5f * x * (1.f + erf_(x * 0.70710678118654752f)); }

template <typename T, typename Next>
MSV_INLINE void convffn_rows(const ConvFfnArgs<T>& a, const Next& next) {
  const int64_t H = a.H, W = a.W, F = a.F, FP = a.FP, k = a.k, r = k / 2;
  std::vector<float> rows(static_cast<size_t>(W * FP));
  float* __restrict s = rows.data();  // (W, FP) the pre-activation row
  for (int64_t task = next(); task >= 0; task = next()) {
    const int64_t b = task / H, i = task % H;
    const T* hb = a.h + b * H * W * F;
    for (int64_t j = 0; j < W; ++j) {
      const T* __restrict hc = hb + (i * W + j) * F;
      float* __restrict sj = s + j * FP;
#pragma omp simd
      for (int64_t f = 0; f < F; ++f) sj[f] = loadv<float>(hc + f) + a.in_bias[f] + a.bias[f];
    }
    dwconv_row(hb, H, W, F, i - r, -r, 1, k, a.w, FP, a.in_bias, W, s, FP);
    for (int64_t j = 0; j < W; ++j) {
      float* __restrict sj = s + j * FP;
      T* o = a.out + ((b * H + i) * W + j) * F;
      if constexpr (std::is_same_v<T, float>) {
#pragma omp simd
        for (int64_t f = 0; f < F; ++f) o[f] = gelu_(sj[f]);
      } else {
#pragma omp simd
        for (int64_t f = 0; f < F; ++f) sj[f] = gelu_(sj[f]);
        store_bf16_row(o, sj, F);
      }
    }
  }
}

struct ConvFfnKernel {
  template <typename Args, typename Next>
  MSV_INLINE static void run(const Args& a, const Next& next) { convffn_rows(a, next); }
};

at::Tensor convffn_dwconv_gelu(const at::Tensor& h, const std::optional<at::Tensor>& in_bias,
                               const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  const char* name = "msvmamba_cpu::convffn_dwconv_gelu: ";
  TORCH_CHECK(h.dim() == 4, name, "h must be (B, H, W, F)");
  TORCH_CHECK(h.device().is_cpu() && (h.scalar_type() == at::kFloat ||
                                      h.scalar_type() == at::kBFloat16) && h.is_contiguous(),
              name, "h must be a contiguous float32 or bfloat16 CPU tensor");
  const int64_t F = h.size(3);
  TORCH_CHECK(weight.dim() == 4 && weight.size(0) == F && weight.size(1) == 1 &&
                  weight.size(2) == weight.size(3) && weight.size(2) % 2 == 1,
              name, "weight must be a depthwise (F, 1, k, k) kernel with odd k");
  TORCH_CHECK(weight.device().is_cpu() && weight.scalar_type() == at::kFloat &&
                  weight.is_contiguous(),
              name, "weight must be a contiguous float32 CPU tensor");
  for (const auto* t : {&in_bias, &bias}) {
    if (t->has_value()) {
      TORCH_CHECK((*t)->device().is_cpu() && (*t)->scalar_type() == at::kFloat &&
                      (*t)->is_contiguous() && (*t)->dim() == 1 && (*t)->size(0) == F,
                  name, "biases must be contiguous float32 (F,) CPU tensors");
    }
  }
  const int64_t k = weight.size(2);
  at::Tensor out = empty_cached(h.sizes(), h.options());
  if (h.numel() == 0) return out;
  const int64_t FP = (F + kLanes - 1) / kLanes * kLanes;
  const at::Tensor w_t = zero_padded(weight.view({F, k * k}).t(), {k * k, FP});
  const at::Tensor ib = zero_padded(in_bias, {FP}), cb = zero_padded(bias, {FP});
  const auto run = [&](auto* out_ptr) {
    using T = std::remove_pointer_t<decltype(out_ptr)>;
    const ConvFfnArgs<T> args{static_cast<const T*>(h.const_data_ptr()), ib.const_data_ptr<float>(),
                              w_t.const_data_ptr<float>(), cb.const_data_ptr<float>(), out_ptr,
                              h.size(1), h.size(2), F, FP, k};
    run_tasks<ConvFfnKernel>(detect_isa(), args, h.size(0) * h.size(1), h.numel() * k * k);
  };
  if (h.scalar_type() == at::kBFloat16) {
    run(static_cast<bf16_bits*>(out.data_ptr()));
  } else {
    run(out.data_ptr<float>());
  }
  return out;
}

}  // namespace
}  // namespace msv

TORCH_LIBRARY_FRAGMENT(msvmamba_cpu, m) {
  m.def(
      "convffn_dwconv_gelu(Tensor h, Tensor? in_bias, Tensor weight, Tensor? bias) -> Tensor");
}

TORCH_LIBRARY_IMPL(msvmamba_cpu, CPU, m) {
  m.impl("convffn_dwconv_gelu", &msv::convffn_dwconv_gelu);
}
