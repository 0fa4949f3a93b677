// The residual add and LayerNorm between the products of an MSVMamba block under bf16
// autocast (projects/msvmamba, VSSBlock), CPU, in one pass over each row:
//
//   s = x + y                  x: the float32 residual stream; y (optional): the branch
//                              output that joins it, bf16 or float32
//   n = LayerNorm(s) * w + b   computed in float32, rounded to bf16 (nearest even); without
//                              w and b only the add
//
// returning s (float32; empty without y), n (bf16; empty without w) and, with `twice`, also
// the rows [n, n] (bf16, (..., 2C); else empty). Under autocast the stream stays float32
// (adding bf16 branch outputs to a bf16 stream rounds the stream at every block), while the
// products after the norm take bf16: ATen would run the add, the LayerNorm and a cast to
// bf16 as three passes over the map. [n, n] is the input of a product on a weight split
// into bf16 high and low parts ([n, n] @ [W_hi, W_lo]^T = n @ W with the weight exact to
// about 16 bits); n itself feeds the ordinary bf16 products (a strided view of [n, n] would
// be copied first). Exposed as msvmamba_cpu::residual_layer_norm.
//
// And the squeeze-excite scaling of a bf16 map, in place: y[b, p, e] *= scale[b, e], the
// product of the float32 scale and the widened y rounded once (ATen's in-place multiply of
// a bf16 tensor by a float32 one converts both whole tensors around it), exposed as
// msvmamba_cpu::scale_channels_.
//
// msvmamba_ops/cpu_fused.py documents both; tests/ops/test_cpu_fused.py checks them against
// the ATen ops.
#include "cpu_common.h"

namespace msv {
namespace {

struct NormArgs {
  using acc_t = float;
  const float* x;       // (rows, C)
  const float* y;       // (rows, C) float32 branch output, or null
  const bf16_bits* y16; // the same in bf16 (at most one of y, y16)
  float* sum;           // (rows, C) x + y, or null (no y)
  bf16_bits* out;       // (rows, C), or null: the add only
  bf16_bits* twice;     // (rows, 2C) or null
  const float* w;       // (C)
  const float* b;       // (C)
  float eps;
  int64_t rows, C;
};

constexpr int64_t kRowsPerTask = 16;

struct NormKernel {
  template <typename Args, typename Next>
  MSV_INLINE static void run(const Args& a, const Next& next) {
    const int64_t C = a.C;
    std::vector<float> row(static_cast<size_t>(C));
    float* __restrict s = row.data();
    for (int64_t task = next(); task >= 0; task = next()) {
      const int64_t r1 = std::min(a.rows, (task + 1) * kRowsPerTask);
      for (int64_t r = task * kRowsPerTask; r < r1; ++r) {
        const float* __restrict x = a.x + r * C;
        if (a.y16) {
          const bf16_bits* __restrict y = a.y16 + r * C;
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) s[c] = x[c] + bf16_to_float(y[c]);
        } else if (a.y) {
          const float* __restrict y = a.y + r * C;
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) s[c] = x[c] + y[c];
        } else {
          std::copy(x, x + C, s);
        }
        if (a.sum) std::copy(s, s + C, a.sum + r * C);
        if (!a.out) continue;
        layer_norm_(s, C, a.w, a.b, a.eps);
        bf16_bits* o = a.out + r * C;
        store_bf16_row(o, s, C);
        if (a.twice) {
          std::copy(o, o + C, a.twice + 2 * r * C);
          std::copy(o, o + C, a.twice + (2 * r + 1) * C);
        }
      }
    }
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> residual_layer_norm(
    const at::Tensor& x, const std::optional<at::Tensor>& y,
    const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias, double eps,
    bool twice) {
  const char* name = "msvmamba_cpu::residual_layer_norm: ";
  TORCH_CHECK(x.dim() >= 1 && x.device().is_cpu() && x.scalar_type() == at::kFloat &&
                  x.is_contiguous(),
              name, "x must be a contiguous float32 CPU tensor");
  const int64_t C = x.size(-1);
  if (y.has_value()) {
    TORCH_CHECK(y->device().is_cpu() && (y->scalar_type() == at::kFloat ||
                                         y->scalar_type() == at::kBFloat16) &&
                    y->is_contiguous() && y->sizes() == x.sizes(),
                name, "y must be a contiguous float32 or bfloat16 CPU tensor shaped as x ",
                x.sizes(), ", got ", y->sizes());
  }
  const bool norm = weight.has_value();
  TORCH_CHECK(norm == bias.has_value(), name, "give weight and bias together");
  TORCH_CHECK(norm || (y.has_value() && !twice), name,
              "without weight and bias (the add only) y is needed and twice is not");
  for (const auto* t : {&weight, &bias}) {
    if (!t->has_value()) continue;
    const at::Tensor& v = **t;
    TORCH_CHECK(v.device().is_cpu() && v.scalar_type() == at::kFloat && v.is_contiguous() &&
                    v.dim() == 1 && v.size(0) == C,
                name, "weight and bias must be contiguous float32 (C,) CPU tensors, C = ", C);
  }
  const int64_t rows = C > 0 ? x.numel() / C : 0;
  const auto bf16 = x.options().dtype(at::kBFloat16);
  at::Tensor out = norm ? empty_cached(x.sizes(), bf16) : at::empty({0}, bf16);
  std::vector<int64_t> twice_sizes(x.sizes().begin(), x.sizes().end());
  twice_sizes.back() = 2 * C;
  at::Tensor out2 = twice ? empty_cached(twice_sizes, bf16) : at::empty({0}, bf16);
  // without y the sum is x itself: an empty tensor here (an op's output must not alias its
  // input), the Python wrapper returns x
  at::Tensor sum = y.has_value() ? empty_cached(x.sizes(), x.options()) : at::empty({0}, x.options());
  if (rows == 0 || C == 0) return {sum, out, out2};
  NormArgs args{};
  args.x = x.const_data_ptr<float>();
  const bool y16 = y.has_value() && y->scalar_type() == at::kBFloat16;
  args.y = y.has_value() && !y16 ? y->const_data_ptr<float>() : nullptr;
  args.y16 = y16 ? static_cast<const bf16_bits*>(y->const_data_ptr()) : nullptr;
  args.sum = y.has_value() ? sum.data_ptr<float>() : nullptr;
  args.out = norm ? static_cast<bf16_bits*>(out.data_ptr()) : nullptr;
  args.twice = twice ? static_cast<bf16_bits*>(out2.data_ptr()) : nullptr;
  args.w = norm ? weight->const_data_ptr<float>() : nullptr;
  args.b = norm ? bias->const_data_ptr<float>() : nullptr;
  args.eps = static_cast<float>(eps);
  args.rows = rows;
  args.C = C;
  run_tasks<NormKernel>(detect_isa(), args, (rows + kRowsPerTask - 1) / kRowsPerTask,
                        rows * C * 4);
  return {sum, out, out2};
}

struct ScaleArgs {
  using acc_t = float;
  bf16_bits* y;         // (Bt, P, E)
  const float* scale;   // (Bt, E)
  int64_t P, E;
};

constexpr int64_t kPositionsPerTask = 32;

struct ScaleKernel {
  template <typename Args, typename Next>
  MSV_INLINE static void run(const Args& a, const Next& next) {
    const int64_t E = a.E, tasks_per_item = (a.P + kPositionsPerTask - 1) / kPositionsPerTask;
    std::vector<float> row(static_cast<size_t>(E));
    float* __restrict v = row.data();
    for (int64_t task = next(); task >= 0; task = next()) {
      const int64_t b = task / tasks_per_item, p0 = task % tasks_per_item * kPositionsPerTask;
      const float* __restrict sc = a.scale + b * E;
      for (int64_t p = p0; p < std::min(a.P, p0 + kPositionsPerTask); ++p) {
        bf16_bits* y = a.y + (b * a.P + p) * E;
#pragma omp simd
        for (int64_t e = 0; e < E; ++e) v[e] = bf16_to_float(y[e]) * sc[e];
        store_bf16_row(y, v, E);
      }
    }
  }
};

at::Tensor& scale_channels_(at::Tensor& y, const at::Tensor& scale) {
  const char* name = "msvmamba_cpu::scale_channels_: ";
  TORCH_CHECK(y.dim() == 3 && y.device().is_cpu() && y.scalar_type() == at::kBFloat16 &&
                  y.is_contiguous(),
              name, "y must be a contiguous bfloat16 (B, P, E) CPU tensor");
  TORCH_CHECK(scale.device().is_cpu() && scale.scalar_type() == at::kFloat &&
                  scale.is_contiguous() && scale.dim() == 2 && scale.size(0) == y.size(0) &&
                  scale.size(1) == y.size(2),
              name, "scale must be a contiguous float32 (B, E) CPU tensor, B, E = ", y.size(0),
              ", ", y.size(2));
  if (y.numel() == 0) return y;
  const ScaleArgs args{static_cast<bf16_bits*>(y.data_ptr()), scale.const_data_ptr<float>(),
                       y.size(1), y.size(2)};
  const int64_t tasks = y.size(0) * ((y.size(1) + kPositionsPerTask - 1) / kPositionsPerTask);
  run_tasks<ScaleKernel>(detect_isa(), args, tasks, y.numel());
  return y;
}

}  // namespace
}  // namespace msv

TORCH_LIBRARY_FRAGMENT(msvmamba_cpu, m) {
  m.def(
      "residual_layer_norm(Tensor x, Tensor? y, Tensor? weight, Tensor? bias, float eps, "
      "bool twice=False) -> (Tensor, Tensor, Tensor)");
  m.def("scale_channels_(Tensor(a!) y, Tensor scale) -> Tensor(a!)");
}

TORCH_LIBRARY_IMPL(msvmamba_cpu, CPU, m) {
  m.impl("residual_layer_norm", &msv::residual_layer_norm);
  m.impl("scale_channels_", &msv::scale_channels_);
}
