// The weights of the quantized linear layers (runtime/layers/quant.py), dequantized in one pass
// for the rows above its kernels' (a prefill chunk's matmul):
//
//   int8_dequantize(q int8 [N, K], scale [N, K / g], shift [N, K / g] or None, g, dtype) -> [N, K]
//   int4_dequantize(q4 uint8 [N, K / 2], scale [N, K / g], shift [N, K / g], g, dtype) -> [N, K]
//       w = q * scale (+ shift), in float32 as two roundings (a product, then a sum: what the
//       torch expression in quant.py gives, so neither path changes the weights), then rounded
//       once to dtype. q4: each run of 32 k values in 16 bytes, byte j = q[j] | q[16 + j] << 4.
// scale, shift float32 and contiguous [N, K / g]; g a multiple of 32 that divides K.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Optional.h>
#include <torch/library.h>

#pragma GCC optimize("fp-contract=off")  // q * scale + shift: two roundings, never one fused multiply-add

namespace {

void check_scales(const at::Tensor& t, int64_t N, int64_t groups) {
  TORCH_CHECK(t.is_contiguous() && t.scalar_type() == at::kFloat && t.numel() == N * groups,
              "scale, shift: contiguous float32 [N, K / g]");
}

// run(n, k, q) gives a pointer to q[n, k .. k + 31] (int8, or float levels it fills into q);
// out = q * scale + shift, rounded to T
template <typename T, typename Run>
void dequantize_rows(T* out, const float* scale, const float* shift, int64_t N, int64_t K, int64_t g, Run&& run) {
  const int64_t groups = K / g;
  at::parallel_for(0, N, 16, [&](int64_t begin, int64_t end) {
    float levels[32];
    for (int64_t n = begin; n < end; ++n)
      for (int64_t k = 0; k < K; k += 32) {
        const int64_t group = n * groups + k / g;
        const float s = scale[group], m = shift ? shift[group] : 0.0f;
        const auto* q = run(n, k, levels);
        T* o = out + n * K + k;
        if (shift)
          for (int j = 0; j < 32; ++j) o[j] = static_cast<T>(static_cast<float>(q[j]) * s + m);
        else
          for (int j = 0; j < 32; ++j) o[j] = static_cast<T>(static_cast<float>(q[j]) * s);
      }
  });
}

at::Tensor int8_dequantize(at::Tensor q, at::Tensor scale, c10::optional<at::Tensor> shift, int64_t g,
                           at::ScalarType dtype) {
  TORCH_CHECK(q.dim() == 2 && q.is_contiguous() && q.scalar_type() == at::kChar, "q: contiguous int8 [N, K]");
  const int64_t N = q.size(0), K = q.size(1);
  TORCH_CHECK(g > 0 && g % 32 == 0 && K % g == 0, "group size: a multiple of 32 that divides K");
  check_scales(scale, N, K / g);
  if (shift) check_scales(*shift, N, K / g);
  auto out = at::empty({N, K}, q.options().dtype(dtype));
  const int8_t* qp = q.data_ptr<int8_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dtype, "int8_dequantize", [&] {
    dequantize_rows(out.data_ptr<scalar_t>(), scale.data_ptr<float>(), shift ? shift->data_ptr<float>() : nullptr,
                    N, K, g, [&](int64_t n, int64_t k, float*) { return qp + n * K + k; });
  });
  return out;
}

at::Tensor int4_dequantize(at::Tensor q4, at::Tensor scale, at::Tensor shift, int64_t g, at::ScalarType dtype) {
  TORCH_CHECK(q4.dim() == 2 && q4.is_contiguous() && q4.scalar_type() == at::kByte, "q4: contiguous uint8 [N, K / 2]");
  const int64_t N = q4.size(0), K = 2 * q4.size(1);
  TORCH_CHECK(g % 32 == 0 && K % g == 0, "group size: a multiple of 32 that divides K");
  check_scales(scale, N, K / g);
  check_scales(shift, N, K / g);
  auto out = at::empty({N, K}, q4.options().dtype(dtype));
  const uint8_t* qp = q4.data_ptr<uint8_t>();
  auto levels = [&](int64_t n, int64_t k, float* q) {
    const uint8_t* run = qp + n * (K / 2) + k / 2;
    for (int j = 0; j < 16; ++j) {
      q[j] = static_cast<float>(run[j] & 0x0F);
      q[16 + j] = static_cast<float>(run[j] >> 4);
    }
    return static_cast<const float*>(q);
  };
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dtype, "int4_dequantize", [&] {
    dequantize_rows(out.data_ptr<scalar_t>(), scale.data_ptr<float>(), shift.data_ptr<float>(), N, K, g, levels);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(radixflow, m) {
  m.def("int8_dequantize(Tensor q, Tensor scale, Tensor? shift, int group_size, ScalarType dtype) -> Tensor");
  m.def("int4_dequantize(Tensor q4, Tensor scale, Tensor shift, int group_size, ScalarType dtype) -> Tensor");
}

TORCH_LIBRARY_IMPL(radixflow, CPU, m) {
  m.impl("int8_dequantize", &int8_dequantize);
  m.impl("int4_dequantize", &int4_dequantize);
}
