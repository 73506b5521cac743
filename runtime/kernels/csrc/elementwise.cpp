// The decoder layer's element-wise ops on CPU, one pass each (the eager torch versions are
// 6-10 small ops per call: ~75 us for a 576-wide row, where one pass takes a few us).
// Numerics follow runtime/layers/norm.py and rotary.py, as the Triton kernels (elementwise.py) do:
//
//   add_rmsnorm(x [T, N], weight [N], eps, residual [T, N] or None) -> out [T, N]
//       with residual: residual = x + residual (rounded to the dtype, in place), then normed from it
//       out = weight * round(v / sqrt(mean(v^2) + eps)), the statistics in float32
//   rotary_(x [T, heads, D], cos [P, D / 2], sin [P, D / 2], positions int64 [T]) -> x, in place
//       (x1, x2) -> (x1 c - x2 s, x2 c + x1 s) in float32 at each token's position, rounded once
// x and residual: last dim contiguous, any row stride; x and weight in one dtype (float32 or bf16).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Optional.h>
#include <torch/library.h>

#include <cmath>

namespace {

template <typename T>
inline T round_to(float v) { return static_cast<T>(v); }

template <typename T>
void add_rmsnorm_kernel(const T* x, int64_t x_stride, T* residual, int64_t r_stride, const T* w, T* out,
                        int64_t rows, int64_t n, float eps) {
  at::parallel_for(0, rows, 8, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const T* xr = x + t * x_stride;
      const T* v = xr;
      if (residual) {
        T* rr = residual + t * r_stride;
        for (int64_t i = 0; i < n; ++i) rr[i] = round_to<T>(static_cast<float>(xr[i]) + static_cast<float>(rr[i]));
        v = rr;
      }
      float partial[8] = {0, 0, 0, 0, 0, 0, 0, 0};  // 8 interleaved sums: vectorizable without reassociation
      int64_t i = 0;
      for (; i + 8 <= n; i += 8)
        for (int64_t l = 0; l < 8; ++l) {
          const float f = static_cast<float>(v[i + l]);
          partial[l] += f * f;
        }
      float sum = 0;
      for (; i < n; ++i) sum += static_cast<float>(v[i]) * static_cast<float>(v[i]);
      for (int64_t l = 0; l < 8; ++l) sum += partial[l];
      const float inv = 1.0f / std::sqrt(sum / static_cast<float>(n) + eps);
      T* o = out + t * n;
      for (int64_t j = 0; j < n; ++j) {
        const T normed = round_to<T>(static_cast<float>(v[j]) * inv);
        o[j] = round_to<T>(static_cast<float>(w[j]) * static_cast<float>(normed));
      }
    }
  });
}

at::Tensor add_rmsnorm(at::Tensor x, at::Tensor weight, double eps, c10::optional<at::Tensor> residual) {
  TORCH_CHECK(x.dim() == 2 && x.stride(1) == 1, "x: [T, N], last dim contiguous");
  const int64_t rows = x.size(0), n = x.size(1);
  TORCH_CHECK(weight.dim() == 1 && weight.size(0) == n && weight.is_contiguous() &&
                  weight.scalar_type() == x.scalar_type(),
              "weight: contiguous [N] in x's dtype");
  if (residual) {
    TORCH_CHECK(residual->sizes() == x.sizes() && residual->stride(1) == 1 &&
                    residual->scalar_type() == x.scalar_type(),
                "residual: [T, N] like x, last dim contiguous");
  }
  auto out = at::empty({rows, n}, x.options());
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "add_rmsnorm", [&] {
    add_rmsnorm_kernel<scalar_t>(x.data_ptr<scalar_t>(), x.stride(0),
                                 residual ? residual->data_ptr<scalar_t>() : nullptr,
                                 residual ? residual->stride(0) : 0, weight.data_ptr<scalar_t>(),
                                 out.data_ptr<scalar_t>(), rows, n, static_cast<float>(eps));
  });
  return out;
}

template <typename T>
void rotary_kernel(T* x, int64_t stride_t, int64_t stride_h, int64_t tokens, int64_t heads, int64_t half,
                   const float* cos, const float* sin, int64_t table_stride, const int64_t* positions) {
  at::parallel_for(0, tokens, 4, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const float* c = cos + positions[t] * table_stride;
      const float* s = sin + positions[t] * table_stride;
      for (int64_t h = 0; h < heads; ++h) {
        T* x1 = x + t * stride_t + h * stride_h;
        T* x2 = x1 + half;
        for (int64_t j = 0; j < half; ++j) {
          const float a = static_cast<float>(x1[j]), b = static_cast<float>(x2[j]);
          x1[j] = round_to<T>(a * c[j] - b * s[j]);
          x2[j] = round_to<T>(b * c[j] + a * s[j]);
        }
      }
    }
  });
}

at::Tensor rotary_(at::Tensor x, at::Tensor cos, at::Tensor sin, at::Tensor positions) {
  TORCH_CHECK(x.dim() == 3 && x.stride(2) == 1 && x.size(2) % 2 == 0, "x: [T, heads, D], D even and contiguous");
  const int64_t half = x.size(2) / 2;
  TORCH_CHECK(cos.dim() == 2 && cos.sizes() == sin.sizes() && cos.strides() == sin.strides() &&
                  cos.size(1) == half && cos.stride(1) == 1 && cos.scalar_type() == at::kFloat &&
                  sin.scalar_type() == at::kFloat,
              "cos, sin: float32 [P, D / 2], last dim contiguous");
  TORCH_CHECK(positions.dim() == 1 && positions.size(0) == x.size(0) && positions.is_contiguous() &&
                  positions.scalar_type() == at::kLong,
              "positions: int64 [T]");
  const int64_t* pos = positions.data_ptr<int64_t>();
  for (int64_t t = 0; t < x.size(0); ++t)
    TORCH_CHECK(pos[t] >= 0 && pos[t] < cos.size(0), "position ", pos[t], " outside the rotary table");
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "rotary_", [&] {
    rotary_kernel<scalar_t>(x.data_ptr<scalar_t>(), x.stride(0), x.stride(1), x.size(0), x.size(1), half,
                            cos.data_ptr<float>(), sin.data_ptr<float>(), cos.stride(0), pos);
  });
  return x;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(radixflow, m) {
  m.def("add_rmsnorm(Tensor x, Tensor weight, float eps, Tensor(a!)? residual) -> Tensor");
  m.def("rotary_(Tensor(a!) x, Tensor cos, Tensor sin, Tensor positions) -> Tensor(a!)");
}

TORCH_LIBRARY_IMPL(radixflow, CPU, m) {
  m.impl("add_rmsnorm", &add_rmsnorm);
  m.impl("rotary_", &rotary_);
}
