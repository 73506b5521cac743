// Weight-only quantized linear layers on CPU for the few rows of a decode or verify step,
// computing in float32 (torch 2.13's own int8/int4 CPU kernels are vectorized for bf16
// activations only, and rounding activations to bf16 costs more accuracy than int8 weights do).
// x and y are float32, or both bf16: x widened to float32 once, each output rounded once to
// bf16 (to nearest even, as `.to(torch.bfloat16)` does), so the bits equal casting around a
// float32 call, without the two extra torch ops per layer.
//
//   int8_linear(x [R, K], q int8 [N, K], scale [N, K / g], shift [N, K / g] or None, g) -> [R, N]
//       w[n, k] = q[n, k] scale[n, k / g] + shift[n, k / g]
//       (g = K: one scale per output row and no shift)
//   int4_linear(x [R, K], q4 uint8 [N, K / 2], scale [N, K / g], shift [N, K / g], g) -> [R, N]
//       w[n, k] = q[n, k] scale[n, k / g] + shift[n, k / g],  q in [0, 15]
//       q4 holds each run of 32 k values of a row in 16 bytes: byte j = q[k0 + j] | q[k0 + 16 + j] << 4
//       (one load, a mask and a shift give 32 values in order)
// scale and shift float32, all contiguous; K a multiple of 16 (int8) or of g (int4, g a multiple of 32).
//
// Each output n is a task's own: the weights of a tile's outputs are widened to float once per
// W k values (Vec: 8, or 16 with AVX-512) and used for each of its rows (tiles: see `tiles`). A (row, output) pair always sums its k in the same
// order with its own accumulator, so its bits do not depend on R or on which rows are beside
// it: a verified token gets exactly what a decode step would give it.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Optional.h>
#include <torch/library.h>

#if defined(__AVX2__) && defined(__FMA__)  // else the ops are not registered and the layers keep torch's kernels
#include <immintrin.h>

#include <algorithm>

namespace {

constexpr int64_t kAheadBytes = 4096;  // how far ahead weights are prefetched, at least

// A tile's weights are one contiguous block (its NB rows); the prefetch distance is a whole
// number of tiles, so each 64 bytes read prefetch the same place in a tile ahead: every line once.
inline int64_t ahead_bytes(int64_t tile_bytes) { return tile_bytes * ((kAheadBytes + tile_bytes - 1) / tile_bytes); }

// The float vector the tiles are written in: 16 wide where the CPU has AVX-512 (a Zen 5 core
// runs a 16-wide FMA as fast as an 8-wide one: twice the weights per instruction), else 8
// (AVX2). Sums alternate between two accumulators per W k values, so bits differ between
// machines with and without AVX-512, but not between batches on one machine.
#if defined(__AVX512F__)
struct Vec {
  static constexpr int64_t W = 16;
  using T = __m512;
  static T zero() { return _mm512_setzero_ps(); }
  static T set1(float v) { return _mm512_set1_ps(v); }
  static T load(const float* p) { return _mm512_loadu_ps(p); }
  static T fmadd(T a, T b, T c) { return _mm512_fmadd_ps(a, b, c); }
  static float sum(T a, T b) { return _mm512_reduce_add_ps(_mm512_add_ps(a, b)); }
  static T int8s(const int8_t* p) {  // W int8 weights, as floats
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
  }
  // values [W part, W part + W) of a run of 32 nibbles: lo holds values 0..15, hi 16..31, one per byte
  static T nibbles(__m128i lo, __m128i hi, int64_t part) {
    return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(part == 0 ? lo : hi));
  }
};
#else
struct Vec {
  static constexpr int64_t W = 8;
  using T = __m256;
  static T zero() { return _mm256_setzero_ps(); }
  static T set1(float v) { return _mm256_set1_ps(v); }
  static T load(const float* p) { return _mm256_loadu_ps(p); }
  static T fmadd(T a, T b, T c) { return _mm256_fmadd_ps(a, b, c); }
  static float sum(T a, T b) {
    const T v = _mm256_add_ps(a, b);
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static T int8s(const int8_t* p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
  }
  static T nibbles(__m128i lo, __m128i hi, int64_t part) {
    const __m128i bytes = part < 2 ? lo : hi;
    return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(part % 2 ? _mm_srli_si128(bytes, 8) : bytes));
  }
};
#endif

// Accumulators: two per (row, output), for alternate runs of W k values, so that consecutive
// FMAs do not wait on each other; added before the final horizontal sum.

// int8 tile: rows [r0, r0 + RB) x outputs [n0, n0 + NB); one scale per output (kGrouped false,
// g == K: applied to the sum) or a scale and shift per group of g k values (applied to the
// widened weights)
template <int64_t RB, int64_t NB, bool kGrouped, typename Out>
void int8_tile(const float* x, const int8_t* q, const float* scale, const float* shift, Out* y, int64_t r0,
               int64_t n0, int64_t K, int64_t N, int64_t g) {
  constexpr int64_t W = Vec::W;
  const int64_t groups = K / g, ahead = ahead_bytes(NB * K);
  typename Vec::T acc[2][RB][NB];
  for (auto& a : acc)
    for (auto& row : a)
      for (auto& v : row) v = Vec::zero();
  for (int64_t group = 0; group < groups; ++group) {
    typename Vec::T s[NB], m[NB];
    if constexpr (kGrouped)
      for (int64_t j = 0; j < NB; ++j) {
        s[j] = Vec::set1(scale[(n0 + j) * groups + group]);
        m[j] = Vec::set1(shift[(n0 + j) * groups + group]);
      }
    const int64_t end = (group + 1) * g;
    for (int64_t k = group * g; k < end; k += 2 * W) {
      for (int64_t half = 0; half < 2 && k + W * half < end; ++half) {  // k + W half .. k + W half + W - 1
        typename Vec::T w[NB];
        for (int64_t j = 0; j < NB; ++j) {
          const int8_t* row = q + (n0 + j) * K + k + W * half;
          if (half == 0 && k % 64 == 0) _mm_prefetch(reinterpret_cast<const char*>(row) + ahead, _MM_HINT_T0);
          w[j] = Vec::int8s(row);
          if constexpr (kGrouped) w[j] = Vec::fmadd(w[j], s[j], m[j]);
        }
        for (int64_t r = 0; r < RB; ++r) {
          const typename Vec::T xv = Vec::load(x + (r0 + r) * K + k + W * half);
          for (int64_t j = 0; j < NB; ++j) acc[half][r][j] = Vec::fmadd(xv, w[j], acc[half][r][j]);
        }
      }
    }
  }
  for (int64_t r = 0; r < RB; ++r)
    for (int64_t j = 0; j < NB; ++j) {
      const float sum = Vec::sum(acc[0][r][j], acc[1][r][j]);
      y[(r0 + r) * N + n0 + j] = Out(kGrouped ? sum : sum * scale[n0 + j]);
    }
}

// int4 tile: as int8_tile, each 32 k values of an output widened to 32 / W float vectors w = q s + m
template <int64_t RB, int64_t NB, typename Out>
void int4_tile(const float* x, const uint8_t* q4, const float* scale, const float* shift, Out* y, int64_t r0,
               int64_t n0, int64_t K, int64_t N, int64_t g) {
  constexpr int64_t W = Vec::W;
  const int64_t groups = K / g, ahead = ahead_bytes(NB * K / 2);
  const __m128i low4 = _mm_set1_epi8(0x0F);
  typename Vec::T acc[2][RB][NB];
  for (auto& a : acc)
    for (auto& row : a)
      for (auto& v : row) v = Vec::zero();
  for (int64_t group = 0; group < groups; ++group) {
    typename Vec::T s[NB], m[NB];
    for (int64_t j = 0; j < NB; ++j) {
      s[j] = Vec::set1(scale[(n0 + j) * groups + group]);
      m[j] = Vec::set1(shift[(n0 + j) * groups + group]);
    }
    for (int64_t k = group * g; k < (group + 1) * g; k += 32) {
      __m128i lo[NB], hi[NB];  // k .. k + 15 and k + 16 .. k + 31 as bytes
      for (int64_t j = 0; j < NB; ++j) {
        const uint8_t* row = q4 + (n0 + j) * (K / 2) + k / 2;
        if (k % 128 == 0) _mm_prefetch(reinterpret_cast<const char*>(row) + ahead, _MM_HINT_T0);
        const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row));
        lo[j] = _mm_and_si128(b, low4);
        hi[j] = _mm_and_si128(_mm_srli_epi16(b, 4), low4);
      }
      for (int64_t part = 0; part < 32 / W; ++part) {  // k + W part .. k + W part + W - 1
        typename Vec::T w[NB];
        for (int64_t j = 0; j < NB; ++j) w[j] = Vec::fmadd(Vec::nibbles(lo[j], hi[j], part), s[j], m[j]);
        for (int64_t r = 0; r < RB; ++r) {
          const typename Vec::T xv = Vec::load(x + (r0 + r) * K + k + W * part);
          for (int64_t j = 0; j < NB; ++j) acc[part % 2][r][j] = Vec::fmadd(xv, w[j], acc[part % 2][r][j]);
        }
      }
    }
  }
  for (int64_t r = 0; r < RB; ++r)
    for (int64_t j = 0; j < NB; ++j) y[(r0 + r) * N + n0 + j] = Out(Vec::sum(acc[0][r][j], acc[1][r][j]));
}

// tile(RB, r0) over all rows: full tiles of RB rows, then the rest one row at a time
template <int64_t RB, typename Tile>
void rows(int64_t R, Tile&& tile) {
  int64_t r0 = 0;
  for (; r0 + RB <= R; r0 += RB) tile(std::integral_constant<int64_t, RB>{}, r0);
  for (; r0 < R; ++r0) tile(std::integral_constant<int64_t, 1>{}, r0);
}

// x as float32 (a bf16 x widened, exactly)
at::Tensor float_x(const at::Tensor& x, int64_t K, int64_t multiple) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous() && (x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16),
              "x: contiguous float32 or bf16 [R, K]");
  TORCH_CHECK(x.size(1) == K && K % multiple == 0, "x [R, K]: K = the weight's in features, a multiple of ", multiple);
  return x.scalar_type() == at::kFloat ? x : x.to(at::kFloat);
}

// fill(out pointer) on y [R, N] in x's dtype
template <typename Fill>
at::Tensor output(const at::Tensor& x, int64_t N, Fill&& fill) {
  auto y = at::empty({x.size(0), N}, x.options());
  if (x.scalar_type() == at::kBFloat16) fill(y.data_ptr<at::BFloat16>());
  else fill(y.data_ptr<float>());
  return y;
}

// tile(NB, RB, n0, r0) over every output and row, outputs split across threads: fewer than 4
// rows in tiles of 4 outputs x 1 row, more in tiles of 1 output x 4 rows (AVX2: 8 accumulators
// either way, no register spills) or, with AVX-512, 2 outputs x 4 rows; the last outputs one at a time. Every row tile passes over a block
// of kBlock tiles before the next block: the block's weights stay in L1 while the rows go by,
// and x (up to 32 rows of K floats, more than L1) is read once per block, not once per output.
template <typename Tile>
void tiles(int64_t R, int64_t N, Tile&& tile) {
  constexpr int64_t kBlock = 16;
  auto over = [&](auto nb, auto rb) {
    constexpr int64_t NB = decltype(nb)::value;
    const int64_t full = N / NB;
    constexpr int64_t RB = decltype(rb)::value;
    at::parallel_for(0, full + (N % NB ? 1 : 0), kBlock, [&](int64_t begin, int64_t end) {
      for (int64_t block = begin; block < end; block += kBlock) {
        const int64_t block_end = std::min(end, block + kBlock);
        rows<RB>(R, [&](auto row_tile, int64_t r0) {
          for (int64_t t = block; t < block_end; ++t) {
            if (t < full) {
              tile(nb, row_tile, t * NB, r0);
            } else {  // the last N % NB outputs
              for (int64_t n0 = full * NB; n0 < N; ++n0) tile(std::integral_constant<int64_t, 1>{}, row_tile, n0, r0);
            }
          }
        });
      }
    });
  };
  if (R < 4) over(std::integral_constant<int64_t, 4>{}, std::integral_constant<int64_t, 1>{});
#if defined(__AVX512F__)  // 32 vector registers: 2 outputs x 4 rows (16 accumulators), each x load used twice
  else over(std::integral_constant<int64_t, 2>{}, std::integral_constant<int64_t, 4>{});
#else
  else over(std::integral_constant<int64_t, 1>{}, std::integral_constant<int64_t, 4>{});
#endif
}

at::Tensor int8_linear(at::Tensor x, at::Tensor q, at::Tensor scale, c10::optional<at::Tensor> shift, int64_t g) {
  TORCH_CHECK(q.dim() == 2 && q.is_contiguous() && q.scalar_type() == at::kChar, "q: contiguous int8 [N, K]");
  const int64_t R = x.size(0), N = q.size(0), K = q.size(1);
  const at::Tensor xf = float_x(x, K, 16);
  TORCH_CHECK(g > 0 && g % 16 == 0 && K % g == 0, "group size: a multiple of 16 that divides K");
  TORCH_CHECK(shift.has_value() == (g != K), "a shift per group, none per row");
  for (const at::Tensor* t : {&scale, shift ? &*shift : &scale})
    TORCH_CHECK(t->is_contiguous() && t->scalar_type() == at::kFloat && t->numel() == N * (K / g),
                "scale, shift: contiguous float32 [N, K / g]");
  const float* xp = xf.data_ptr<float>();
  const int8_t* qp = q.data_ptr<int8_t>();
  const float* sp = scale.data_ptr<float>();
  const float* mp = shift ? shift->data_ptr<float>() : nullptr;
  return output(x, N, [&](auto* yp) {
    tiles(R, N, [&](auto nb, auto rb, int64_t n0, int64_t r0) {
      constexpr int64_t RB = decltype(rb)::value, NB = decltype(nb)::value;
      if (g == K) int8_tile<RB, NB, false>(xp, qp, sp, mp, yp, r0, n0, K, N, g);
      else int8_tile<RB, NB, true>(xp, qp, sp, mp, yp, r0, n0, K, N, g);
    });
  });
}

at::Tensor int4_linear(at::Tensor x, at::Tensor q4, at::Tensor scale, at::Tensor shift, int64_t g) {
  TORCH_CHECK(q4.dim() == 2 && q4.is_contiguous() && q4.scalar_type() == at::kByte, "q4: contiguous uint8 [N, K / 2]");
  const int64_t R = x.size(0), N = q4.size(0), K = 2 * q4.size(1);
  const at::Tensor xf = float_x(x, K, 32);
  TORCH_CHECK(g % 32 == 0 && K % g == 0, "group size: a multiple of 32 that divides K");
  for (const auto* t : {&scale, &shift})
    TORCH_CHECK(t->is_contiguous() && t->scalar_type() == at::kFloat && t->dim() == 2 && t->size(0) == N &&
                    t->size(1) == K / g,
                "scale, shift: contiguous float32 [N, K / g]");
  const float* xp = xf.data_ptr<float>();
  const uint8_t* qp = q4.data_ptr<uint8_t>();
  const float* sp = scale.data_ptr<float>();
  const float* mp = shift.data_ptr<float>();
  return output(x, N, [&](auto* yp) {
    tiles(R, N, [&](auto nb, auto rb, int64_t n0, int64_t r0) {
      int4_tile<decltype(rb)::value, decltype(nb)::value>(xp, qp, sp, mp, yp, r0, n0, K, N, g);
    });
  });
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(radixflow, m) {
  m.def("int8_linear(Tensor x, Tensor q, Tensor scale, Tensor? shift, int group_size) -> Tensor");
  m.def("int4_linear(Tensor x, Tensor q4, Tensor scale, Tensor shift, int group_size) -> Tensor");
}

TORCH_LIBRARY_IMPL(radixflow, CPU, m) {
  m.impl("int8_linear", &int8_linear);
  m.impl("int4_linear", &int4_linear);
}
#endif
