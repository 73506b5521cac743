// Decode attention on CPU straight from the KV pool's slots: no gathered copy of K/V.
//
// Layouts (runtime/cache/kv_pool.py):
//   q        [R, H, D]        one query row per decode token (a verify token is a row too), D contiguous
//   k_buf    [Hkv, S, D]      a layer's K (v_buf: V), contiguous; token t of a row lives at slot idx[r, t]
//   idx      int64 [R, W]     each row's slots in position order; row r reads idx[r, 0 .. lens[r])
//   lens     int64 [R]        keys each row sees (<= W)
// Query head h reads KV head h / G, G = H / Hkv.
//
// paged_scores      -> float32 [R, H, W]: scale * q . k for the row's keys, -inf past lens[r]
// paged_weighted_sum(probs [R, H, W] float32) -> [R, H, D] in v's dtype: sum_t probs[r, h, t] * v[idx[r, t]]
// The softmax between them is torch's. Each (row, KV head) is one task: a row's bits do not
// depend on the other rows of the batch, nor on W (padding past lens is never read).
// Registered as torch.ops.radixflow.paged_scores / paged_weighted_sum (no pybind: the
// light headers below compile in a fraction of torch/extension.h's time).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <torch/library.h>

#include <algorithm>
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

// kD: the head dim when known at compile time (the loops then unroll fully), 0 for any D
template <typename T, int64_t kD>
void scores_kernel(const T* q, const T* k, const int64_t* idx, const int64_t* lens, float* out,
                   int64_t R, int64_t H, int64_t Hkv, int64_t d_runtime, int64_t S, int64_t W,
                   int64_t q_stride_r, int64_t q_stride_h, int64_t idx_stride, float scale) {
  const int64_t G = H / Hkv, D = kD ? kD : d_runtime;
  at::parallel_for(0, R * Hkv, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> qf(G * D);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t r = task / Hkv, kvh = task % Hkv;
      for (int64_t g = 0; g < G; ++g) {
        const T* qrow = q + r * q_stride_r + (kvh * G + g) * q_stride_h;
        for (int64_t d = 0; d < D; ++d) qf[g * D + d] = as_float(qrow[d]) * scale;
      }
      const int64_t n = lens[r];
      const int64_t* slots = idx + r * idx_stride;
      const T* kh = k + kvh * S * D;
      float* o = out + (r * H + kvh * G) * W;
      for (int64_t t = 0; t < n; ++t) {
        if (t + kAhead < n) prefetch_row(kh + slots[t + kAhead] * D, D);
        const T* krow = kh + slots[t] * D;
        for (int64_t g = 0; g < G; ++g) {
          const float* qg = qf.data() + g * D;
          float acc = 0.f;
#pragma omp simd reduction(+ : acc)
          for (int64_t d = 0; d < D; ++d) acc += qg[d] * as_float(krow[d]);
          o[g * W + t] = acc;
        }
      }
      for (int64_t g = 0; g < G; ++g)
        for (int64_t t = n; t < W; ++t) o[g * W + t] = -std::numeric_limits<float>::infinity();
    }
  });
}

template <typename T, int64_t kD>
void weighted_sum_kernel(const float* p, const T* v, const int64_t* idx, const int64_t* lens, T* out,
                         int64_t R, int64_t H, int64_t Hkv, int64_t d_runtime, int64_t S, int64_t W,
                         int64_t idx_stride) {
  const int64_t G = H / Hkv, D = kD ? kD : d_runtime;
  at::parallel_for(0, R * Hkv, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> acc(G * D);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t r = task / Hkv, kvh = task % Hkv;
      std::fill(acc.begin(), acc.end(), 0.f);
      const int64_t n = lens[r];
      const int64_t* slots = idx + r * idx_stride;
      const T* vh = v + kvh * S * D;
      const float* pr = p + (r * H + kvh * G) * W;
      for (int64_t t = 0; t < n; ++t) {
        if (t + kAhead < n) prefetch_row(vh + slots[t + kAhead] * D, D);
        const T* vrow = vh + slots[t] * D;
        for (int64_t g = 0; g < G; ++g) {
          const float w = pr[g * W + t];
          float* a = acc.data() + g * D;
#pragma omp simd
          for (int64_t d = 0; d < D; ++d) a[d] += w * as_float(vrow[d]);
        }
      }
      T* o = out + (r * H + kvh * G) * D;
      for (int64_t i = 0; i < G * D; ++i) o[i] = static_cast<T>(acc[i]);
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

void check(const at::Tensor& buf, const at::Tensor& idx, const at::Tensor& lens, int64_t rows) {
  TORCH_CHECK(buf.dim() == 3 && buf.is_contiguous(), "KV buffer: contiguous [Hkv, slots, D]");
  TORCH_CHECK(idx.dim() == 2 && idx.size(0) == rows && idx.stride(1) == 1 && idx.scalar_type() == at::kLong,
              "idx: int64 [R, W], last dim contiguous");
  TORCH_CHECK(lens.dim() == 1 && lens.size(0) == rows && lens.is_contiguous() && lens.scalar_type() == at::kLong,
              "lens: contiguous int64 [R]");
  TORCH_CHECK(buf.device().is_cpu() && idx.device().is_cpu() && lens.device().is_cpu(), "CPU tensors only");
  const int64_t* n = lens.data_ptr<int64_t>();
  for (int64_t r = 0; r < rows; ++r)
    TORCH_CHECK(n[r] >= 0 && n[r] <= idx.size(1), "lens[", r, "] = ", n[r], " is outside [0, W = ", idx.size(1), "]");
}

}  // namespace

at::Tensor paged_scores(at::Tensor q, at::Tensor k_buf, at::Tensor idx, at::Tensor lens, double scale) {
  TORCH_CHECK(q.dim() == 3 && q.stride(2) == 1, "q: [R, H, D], last dim contiguous");
  check(k_buf, idx, lens, q.size(0));
  TORCH_CHECK(q.scalar_type() == k_buf.scalar_type(), "q and the KV buffer: one dtype");
  const int64_t R = q.size(0), H = q.size(1), D = q.size(2), Hkv = k_buf.size(0), W = idx.size(1);
  TORCH_CHECK(k_buf.size(2) == D && H % Hkv == 0, "q heads must be a multiple of the KV heads, same D");
  auto out = at::empty({R, H, W}, q.options().dtype(at::kFloat));
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, q.scalar_type(), "paged_scores", [&] {
    with_head_dim(D, [&](auto dim) {
      scores_kernel<scalar_t, decltype(dim)::value>(
          q.data_ptr<scalar_t>(), k_buf.data_ptr<scalar_t>(), idx.data_ptr<int64_t>(), lens.data_ptr<int64_t>(),
          out.data_ptr<float>(), R, H, Hkv, D, k_buf.size(1), W, q.stride(0), q.stride(1), idx.stride(0),
          static_cast<float>(scale));
    });
  });
  return out;
}

at::Tensor paged_weighted_sum(at::Tensor probs, at::Tensor v_buf, at::Tensor idx, at::Tensor lens) {
  TORCH_CHECK(probs.dim() == 3 && probs.is_contiguous() && probs.scalar_type() == at::kFloat,
              "probs: contiguous float32 [R, H, W]");
  check(v_buf, idx, lens, probs.size(0));
  const int64_t R = probs.size(0), H = probs.size(1), W = probs.size(2), Hkv = v_buf.size(0), D = v_buf.size(2);
  TORCH_CHECK(idx.size(1) == W && H % Hkv == 0, "probs [R, H, W] vs idx [R, W]");
  auto out = at::empty({R, H, D}, v_buf.options());
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, v_buf.scalar_type(), "paged_weighted_sum", [&] {
    with_head_dim(D, [&](auto dim) {
      weighted_sum_kernel<scalar_t, decltype(dim)::value>(
          probs.data_ptr<float>(), v_buf.data_ptr<scalar_t>(), idx.data_ptr<int64_t>(), lens.data_ptr<int64_t>(),
          out.data_ptr<scalar_t>(), R, H, Hkv, D, v_buf.size(1), W, idx.stride(0));
    });
  });
  return out;
}

TORCH_LIBRARY(radixflow, m) {
  m.def("paged_scores(Tensor q, Tensor k_buf, Tensor idx, Tensor lens, float scale) -> Tensor");
  m.def("paged_weighted_sum(Tensor probs, Tensor v_buf, Tensor idx, Tensor lens) -> Tensor");
}

TORCH_LIBRARY_IMPL(radixflow, CPU, m) {
  m.impl("paged_scores", &paged_scores);
  m.impl("paged_weighted_sum", &paged_weighted_sum);
}
