// Decode attention on CPU straight from the KV pool's slots: no gathered copy of K/V.
//
// Layouts (runtime/cache/kv_pool.py):
//   q        [R, H, D]        one query row per decode token (a verify token is a row too), D contiguous
//   k_buf    [Hkv, S, D]      a layer's K (v_buf: V), contiguous; token t of a row lives at slot idx[r, t]
//   idx      int64 [R, W]     each row's slots in position order; row r reads idx[r, 0 .. lens[r])
//   lens     int64 [R]        keys each row sees (<= W)
// Query head h reads KV head h / G, G = H / Hkv.
//
// paged_decode_attention(q, k_buf, v_buf, idx, lens, scale) -> [R, H, D] in q's dtype:
//     softmax_t(scale q . k[idx[r, t]]) . v[idx[r, t]] over t < lens[r], in float32, one op
//     per layer (scores, softmax and weighted sum fused: no [R, H, W] tensor, no torch ops
//     between them). Each (row, KV head) is one task: a row's bits do not depend on the
//     other rows of the batch, nor on W (padding past lens is never read).
// Registered as torch.ops.radixflow.paged_decode_attention (no pybind: the light headers
// below compile in a fraction of torch/extension.h's time).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

namespace {

template <typename T>
inline float as_float(T x) { return static_cast<float>(x); }

constexpr int64_t kAhead = 16;  // keys ahead to prefetch

template <typename T>
inline void prefetch_row(const T* row, int64_t D) {
  for (int64_t i = 0; i < D * static_cast<int64_t>(sizeof(T)); i += 64)
    __builtin_prefetch(reinterpret_cast<const char*>(row) + i);
}

// exp(x) for x <= 0 (a score minus its row's max), in plain float code that `omp simd`
// vectorizes for any ISA: x log2(e) = n + f with |f| <= 1/2, 2^f by its Taylor polynomial of
// degree 6 (relative error < 2e-7), 2^n put in the exponent bits; 0 below -87.
inline float exp_nonpositive(float x) {
  const float t = std::max(x, -87.0f) * 1.44269504088896341f;
  const float n = std::floor(t + 0.5f);
  const float f = (t - n) * 0.693147180559945309f;  // 2^(t - n) = e^f, |f| <= ln2 / 2
  float p = 1.f / 720;
  p = p * f + 1.f / 120;
  p = p * f + 1.f / 24;
  p = p * f + 1.f / 6;
  p = p * f + 0.5f;
  p = p * f + 1.f;
  p = p * f + 1.f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float two_n;
  std::memcpy(&two_n, &bits, sizeof two_n);
  return p * two_n;
}

// One task per (row, KV head): its G query heads' scores over the row's n keys, their
// softmax, and the weighted sum of the values, all in float32 in the task's own buffers;
// each key and value row is widened to float32 once and used for the G heads.
// kD: the head dim when known at compile time (the loops then unroll fully), 0 for any D.
template <typename T, int64_t kD>
void decode_attention_kernel(const T* q, const T* k, const T* v, const int64_t* idx, const int64_t* lens, T* out,
                             int64_t R, int64_t H, int64_t Hkv, int64_t d_runtime, int64_t S, int64_t W,
                             int64_t q_stride_r, int64_t q_stride_h, int64_t idx_stride, float scale) {
  const int64_t G = H / Hkv, D = kD ? kD : d_runtime;
  at::parallel_for(0, R * Hkv, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> qf(G * D), row(D), acc(G * D), p(G * W), inv_sum(G);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t r = task / Hkv, kvh = task % Hkv;
      for (int64_t g = 0; g < G; ++g) {
        const T* qrow = q + r * q_stride_r + (kvh * G + g) * q_stride_h;
        for (int64_t d = 0; d < D; ++d) qf[g * D + d] = as_float(qrow[d]) * scale;
      }
      const int64_t n = lens[r];
      const int64_t* slots = idx + r * idx_stride;
      const T* kh = k + kvh * S * D;
      const T* vh = v + kvh * S * D;
      for (int64_t t = 0; t < n; ++t) {  // scores: p[g, t] = scale q_g . k_t
        if (t + kAhead < n) prefetch_row(kh + slots[t + kAhead] * D, D);
        const T* krow = kh + slots[t] * D;
#pragma omp simd
        for (int64_t d = 0; d < D; ++d) row[d] = as_float(krow[d]);
        for (int64_t g = 0; g < G; ++g) {
          const float* qg = qf.data() + g * D;
          float dot = 0.f;
#pragma omp simd reduction(+ : dot)
          for (int64_t d = 0; d < D; ++d) dot += qg[d] * row[d];
          p[g * W + t] = dot;
        }
      }
      for (int64_t g = 0; g < G; ++g) {  // softmax numerators, and 1 / their sum
        float* pg = p.data() + g * W;
        float max = -std::numeric_limits<float>::infinity(), sum = 0.f;
        for (int64_t t = 0; t < n; ++t) max = std::max(max, pg[t]);
#pragma omp simd reduction(+ : sum)
        for (int64_t t = 0; t < n; ++t) {
          pg[t] = exp_nonpositive(pg[t] - max);
          sum += pg[t];
        }
        inv_sum[g] = n ? 1.f / sum : 0.f;
      }
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int64_t t = 0; t < n; ++t) {  // acc[g] = sum_t p[g, t] v_t
        if (t + kAhead < n) prefetch_row(vh + slots[t + kAhead] * D, D);
        const T* vrow = vh + slots[t] * D;
#pragma omp simd
        for (int64_t d = 0; d < D; ++d) row[d] = as_float(vrow[d]);
        for (int64_t g = 0; g < G; ++g) {
          const float w = p[g * W + t];
          float* a = acc.data() + g * D;
#pragma omp simd
          for (int64_t d = 0; d < D; ++d) a[d] += w * row[d];
        }
      }
      T* o = out + (r * H + kvh * G) * D;
      for (int64_t g = 0; g < G; ++g)
        for (int64_t d = 0; d < D; ++d) o[g * D + d] = static_cast<T>(acc[g * D + d] * inv_sum[g]);
    }
  });
}

// f(std::integral_constant<int64_t, kD>) for the common head dims, kD = 0 otherwise
template <typename F>
void with_head_dim(int64_t D, F&& f) {
  if (D == 64) f(std::integral_constant<int64_t, 64>{});
  else if (D == 128) f(std::integral_constant<int64_t, 128>{});
  else f(std::integral_constant<int64_t, 0>{});
}

void check(const at::Tensor& k_buf, const at::Tensor& v_buf, const at::Tensor& idx, const at::Tensor& lens,
           int64_t rows) {
  for (const at::Tensor* buf : {&k_buf, &v_buf})
    TORCH_CHECK(buf->dim() == 3 && buf->is_contiguous() && buf->device().is_cpu(),
                "KV buffers: contiguous CPU [Hkv, slots, D]");
  TORCH_CHECK(idx.dim() == 2 && idx.size(0) == rows && idx.stride(1) == 1 && idx.scalar_type() == at::kLong,
              "idx: int64 [R, W], last dim contiguous");
  TORCH_CHECK(lens.dim() == 1 && lens.size(0) == rows && lens.is_contiguous() && lens.scalar_type() == at::kLong,
              "lens: contiguous int64 [R]");
  TORCH_CHECK(idx.device().is_cpu() && lens.device().is_cpu(), "CPU tensors only");
  const int64_t* n = lens.data_ptr<int64_t>();
  for (int64_t r = 0; r < rows; ++r)
    TORCH_CHECK(n[r] >= 0 && n[r] <= idx.size(1), "lens[", r, "] = ", n[r], " is outside [0, W = ", idx.size(1), "]");
}

}  // namespace

at::Tensor paged_decode_attention(at::Tensor q, at::Tensor k_buf, at::Tensor v_buf, at::Tensor idx, at::Tensor lens,
                                  double scale) {
  TORCH_CHECK(q.dim() == 3 && q.stride(2) == 1, "q: [R, H, D], last dim contiguous");
  check(k_buf, v_buf, idx, lens, q.size(0));
  TORCH_CHECK(q.scalar_type() == k_buf.scalar_type() && q.scalar_type() == v_buf.scalar_type(),
              "q and the KV buffers: one dtype");
  const int64_t R = q.size(0), H = q.size(1), D = q.size(2), Hkv = k_buf.size(0), W = idx.size(1);
  TORCH_CHECK(k_buf.sizes() == v_buf.sizes() && k_buf.size(2) == D && H % Hkv == 0,
              "q heads must be a multiple of the KV heads, K and V [Hkv, S, D] alike");
  auto out = at::empty({R, H, D}, q.options().memory_format(at::MemoryFormat::Contiguous));
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, q.scalar_type(), "paged_decode_attention", [&] {
    with_head_dim(D, [&](auto dim) {
      decode_attention_kernel<scalar_t, decltype(dim)::value>(
          q.data_ptr<scalar_t>(), k_buf.data_ptr<scalar_t>(), v_buf.data_ptr<scalar_t>(), idx.data_ptr<int64_t>(),
          lens.data_ptr<int64_t>(), out.data_ptr<scalar_t>(), R, H, Hkv, D, k_buf.size(1), W, q.stride(0),
          q.stride(1), idx.stride(0), static_cast<float>(scale));
    });
  });
  return out;
}

TORCH_LIBRARY(radixflow, m) {
  m.def("paged_decode_attention(Tensor q, Tensor k_buf, Tensor v_buf, Tensor idx, Tensor lens, float scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(radixflow, CPU, m) {
  m.impl("paged_decode_attention", &paged_decode_attention);
}
