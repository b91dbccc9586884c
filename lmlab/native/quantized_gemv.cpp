// Weight-only quantized matrix products for decoding on x86 CPUs with AVX2 and FMA.
//
// y[M, N] = x[M, K] @ W^T in float32, where W is held quantized and never materialised whole:
// - int4_linear: W = (q - 8) * scale + zero per group of `group_size` input columns, q in 0..15
//   packed two a byte (column 2i in the low nibble of byte i, 2i + 1 in the high one), scale and
//   zero bfloat16 [N, groups, 2] (lmlab.quantized.Int4Linear's, transposed: one stream per row).
//   Per group: sum_k x_k W_k = scale * sum_k q_k x_k + (zero - 8 scale) * sum_k x_k. The first sum
//   is taken in integers: x is rounded to int16 per 32 columns (relative error 2^-16 of the
//   chunk's largest |x|, against bfloat16's 2^-9 per element), q x by vpmaddwd; the second sum is
//   exact float32.
// - int8_linear: W = q * scale[n], q int8 [N, K], scale bfloat16 [N]; codes turned into float32
//   and multiplied with the float32 input (the float32 product up to summation order).
// The work is split over output rows (at::parallel_for), a few rows at once so that the FMA chains
// overlap, with up to 4 input rows sharing each decoded weight; weights kAhead rows ahead are
// prefetched (a SmolLM2 token's int4 products on one thread: 7.2 ms without, 5.2 ms with).
// Above kGemvRows input rows (prefill) a tile of kTile output rows is dequantized to float32 at a
// time and multiplied with at::mm.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/mm.h>
#include <c10/util/BFloat16.h>
#include <immintrin.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

constexpr int64_t kChunk = 32;     // input columns per int16 scale (and per vpmaddwd pair)
constexpr int64_t kGrain = 64;     // output rows per parallel task, at least
constexpr int64_t kAhead = 16;     // rows ahead whose weights are prefetched
constexpr int64_t kGemvRows = 16;  // input rows up to which the weights are decoded in registers
constexpr int64_t kTile = 64;      // output rows dequantized at a time above that
constexpr int64_t kMaxGroups = 1024;  // int4 groups per row (in_features <= 32768 at 32)

using BF16 = c10::BFloat16;

inline float bf16(const BF16* p) {
  const uint32_t bits = static_cast<uint32_t>(p->x) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

inline void prefetch(const void* p) { _mm_prefetch(static_cast<const char*>(p), _MM_HINT_T0); }

// Where column j of a 32-column chunk goes in nibble order: the 16 even columns, then the 16 odd.
inline int64_t nibble_slot(int64_t j) { return (j % 2) * 16 + j / 2; }

// The input rows for int4_rows: int16 codes in nibble order with one scale per chunk
// (x ~= xq * xs, rows K and K / kChunk apart), and the exact sum of each weight group (rows
// K / gs apart).
struct Int4Input {
  std::vector<int16_t> xq;
  std::vector<float> xs, gx;
};

Int4Input int4_input(const float* x, int64_t M, int64_t K, int64_t gs) {
  Int4Input in{std::vector<int16_t>(M * K), std::vector<float>(M * K / kChunk),
               std::vector<float>(M * K / gs, 0.f)};
  const __m256 sign = _mm256_set1_ps(-0.f), limit = _mm256_set1_ps(32767.f);
  alignas(32) int32_t codes[kChunk];
  for (int64_t c = 0; c < M * K; c += kChunk) {
    __m256 v[4], amax = _mm256_setzero_ps(), sum = _mm256_setzero_ps();
    for (int i = 0; i < 4; ++i) {
      v[i] = _mm256_loadu_ps(x + c + 8 * i);
      amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, v[i]));
      sum = _mm256_add_ps(sum, v[i]);
    }
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    const float top = _mm_cvtss_f32(_mm_max_ss(h, _mm_movehdup_ps(h)));
    in.xs[c / kChunk] = top / 32767.f;
    const __m256 inv = _mm256_set1_ps(top > 0.f ? 32767.f / top : 0.f);
    for (int i = 0; i < 4; ++i) {  // rounded to nearest; clamped against float rounding
      const __m256 scaled = _mm256_min_ps(_mm256_mul_ps(v[i], inv), limit);
      const __m256i q = _mm256_cvtps_epi32(_mm256_max_ps(scaled, _mm256_sub_ps(sign, limit)));
      _mm256_store_si256(reinterpret_cast<__m256i*>(codes + 8 * i), q);
    }
    for (int64_t j = 0; j < kChunk; ++j) in.xq[c + nibble_slot(j)] = static_cast<int16_t>(codes[j]);
    in.gx[c / gs] += hsum(sum);
  }
  return in;
}

// y[m][n + r] for R output rows from n and the MB input rows from m0 of `in` (y rows N apart).
template <int R, int MB>
void int4_rows(const Int4Input& in, int64_t m0, const uint8_t* q, const BF16* sz, int64_t n,
               int64_t N, int64_t K, int64_t gs, float* y) {
  const int64_t groups = K / gs, chunks = K / kChunk;
  const int16_t* xq = in.xq.data() + m0 * K;
  const float* xs = in.xs.data() + m0 * chunks;
  const float* gx = in.gx.data() + m0 * groups;
  // First each row's scales as float32 and its zero term sum_g (zero - 8 scale) * gx[g], eight
  // groups at a time (a bfloat16 (scale, zero) pair is one 32-bit lane: scale low, zero high).
  float scales[R * kMaxGroups];
  float offset[R][MB];
  for (int r = 0; r < R; ++r) {
    const auto* pairs = reinterpret_cast<const int32_t*>(sz + 2 * (n + r) * groups);
    __m256 zero_term[MB];
    for (int m = 0; m < MB; ++m) zero_term[m] = _mm256_setzero_ps();
    int64_t g = 0;
    for (; g + 8 <= groups; g += 8) {
      const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(pairs + g));
      const __m256 s = _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
      const __m256 z = _mm256_castsi256_ps(_mm256_and_si256(v, _mm256_set1_epi32(-65536)));
      _mm256_storeu_ps(scales + r * groups + g, s);
      const __m256 shift = _mm256_fnmadd_ps(_mm256_set1_ps(8.f), s, z);
      for (int m = 0; m < MB; ++m)
        zero_term[m] = _mm256_fmadd_ps(shift, _mm256_loadu_ps(gx + m * groups + g), zero_term[m]);
    }
    for (int m = 0; m < MB; ++m) offset[r][m] = hsum(zero_term[m]);
    for (; g < groups; ++g) {
      const BF16* p = sz + 2 * ((n + r) * groups + g);
      scales[r * groups + g] = bf16(p);
      const float shift = bf16(p + 1) - 8.f * bf16(p);
      for (int m = 0; m < MB; ++m) offset[r][m] += shift * gx[m * groups + g];
    }
  }
  prefetch(sz + 2 * (n + kAhead) * groups);
  __m256 acc[R][MB];
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < MB; ++m) acc[r][m] = _mm256_setzero_ps();
  const __m256i low = _mm256_set1_epi16(0x0F);
  for (int64_t g = 0; g < groups; ++g) {
    __m256 scale[R];
    for (int r = 0; r < R; ++r) scale[r] = _mm256_broadcast_ss(scales + r * groups + g);
    for (int64_t c = g * gs; c < (g + 1) * gs; c += kChunk) {
      if (c % 128 == 0)  // one cache line of each row
        for (int r = 0; r < R; ++r) prefetch(q + (n + r + kAhead) * (K / 2) + c / 2);
      __m256 x_scale[MB];
      __m256i x_lo[MB], x_hi[MB];  // kept in registers where they fit (one or two rows)
      for (int m = 0; m < MB; ++m) {
        x_scale[m] = _mm256_set1_ps(xs[m * chunks + c / kChunk]);
        x_lo[m] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + m * K + c));
        x_hi[m] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + m * K + c + 16));
      }
      for (int r = 0; r < R; ++r) {
        const __m256i w = _mm256_cvtepu8_epi16(
            _mm_loadu_si128(reinterpret_cast<const __m128i*>(q + (n + r) * (K / 2) + c / 2)));
        const __m256i lo = _mm256_and_si256(w, low), hi = _mm256_srli_epi16(w, 4);
        for (int m = 0; m < MB; ++m) {
          const __m256i sum = _mm256_add_epi32(_mm256_madd_epi16(lo, x_lo[m]),
                                               _mm256_madd_epi16(hi, x_hi[m]));
          const __m256 part = _mm256_mul_ps(_mm256_cvtepi32_ps(sum), x_scale[m]);
          acc[r][m] = _mm256_fmadd_ps(part, scale[r], acc[r][m]);
        }
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < MB; ++m) y[m * N + n + r] = hsum(acc[r][m]) + offset[r][m];
}

template <int R, int MB>
void int8_rows(const float* x, const int8_t* q, const BF16* scale, int64_t n, int64_t N, int64_t K,
               float* y) {
  __m256 acc[R][MB], acc2[R][MB];  // two chains per output
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < MB; ++m) acc[r][m] = acc2[r][m] = _mm256_setzero_ps();
  int64_t c = 0;
  for (; c + 16 <= K; c += 16) {
    if (c % 64 == 0)
      for (int r = 0; r < R; ++r) prefetch(q + (n + r + kAhead) * K + c);
    __m256 x0[MB], x1[MB];
    for (int m = 0; m < MB; ++m) {
      x0[m] = _mm256_loadu_ps(x + m * K + c);
      x1[m] = _mm256_loadu_ps(x + m * K + c + 8);
    }
    for (int r = 0; r < R; ++r) {
      const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q + (n + r) * K + c));
      const __m256 w0 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b));
      const __m256 w1 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_unpackhi_epi64(b, b)));
      for (int m = 0; m < MB; ++m) {
        acc[r][m] = _mm256_fmadd_ps(w0, x0[m], acc[r][m]);
        acc2[r][m] = _mm256_fmadd_ps(w1, x1[m], acc2[r][m]);
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < MB; ++m) {
      float s = hsum(_mm256_add_ps(acc[r][m], acc2[r][m]));
      for (int64_t t = c; t < K; ++t) s += static_cast<float>(q[(n + r) * K + t]) * x[m * K + t];
      y[m * N + n + r] = s * bf16(scale + n + r);
    }
}

// rows(n) for every R-th output row n in parallel, one(n) for the last N % R.
template <int R, typename Rows, typename One>
void all_rows(int64_t N, const Rows& rows, const One& one) {
  const int64_t grain = std::max<int64_t>(1, kGrain / R);
  at::parallel_for(0, (N + R - 1) / R, grain, [&](int64_t b0, int64_t b1) {
    for (int64_t n = b0 * R; n < std::min(b1 * R, N); n += R) {
      if (n + R <= N)
        rows(n);
      else
        for (int64_t t = n; t < N; ++t) one(t);
    }
  });
}

// y[:, rows of each tile] = x @ tile^T, each tile of kTile output rows written as float32 into
// w [rows, K] by `dequantize(n0, n1, w)` (in the column order of x).
template <typename Dequantize>
void tiled(const at::Tensor& x, at::Tensor& y, int64_t N, const Dequantize& dequantize) {
  const int64_t K = x.size(1);
  at::parallel_for(0, (N + kTile - 1) / kTile, 1, [&](int64_t t0, int64_t t1) {
    at::Tensor w = at::empty({kTile, K}, x.options());
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n0 = t * kTile, n1 = std::min(N, n0 + kTile);
      dequantize(n0, n1, w.data_ptr<float>());
      y.narrow(1, n0, n1 - n0).copy_(at::mm(x, w.narrow(0, 0, n1 - n0).t()));
    }
  });
}

void check(bool ok, const char* what) { TORCH_CHECK(ok, "lmlab_native: ", what); }

void check_input(const at::Tensor& x) {
  check(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous() && x.device().is_cpu(),
        "x must be a contiguous float32 [M, K] CPU tensor");
}

// block.template operator()<MB>(m) for the input rows m .. m + MB: blocks of 4, then the rest.
template <typename Block>
void row_blocks(int64_t M, const Block& block) {
  int64_t m = 0;
  for (; m + 4 <= M; m += 4) block.template operator()<4>(m);
  if (M - m == 3) block.template operator()<3>(m);
  if (M - m == 2) block.template operator()<2>(m);
  if (M - m == 1) block.template operator()<1>(m);
}

template <int MB>
void int4_block(const Int4Input& in, int64_t m0, const uint8_t* q, const BF16* sz, int64_t N,
                int64_t K, int64_t gs, float* y) {
  constexpr int R = MB == 1 ? 4 : 2;  // at most 8 accumulators
  all_rows<R>(
      N, [&](int64_t n) { int4_rows<R, MB>(in, m0, q, sz, n, N, K, gs, y + m0 * N); },
      [&](int64_t n) { int4_rows<1, MB>(in, m0, q, sz, n, N, K, gs, y + m0 * N); });
}

at::Tensor int4_linear(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& sz,
                       int64_t group_size) {
  check_input(x);
  const int64_t M = x.size(0), K = x.size(1), N = qweight.size(0);
  check(qweight.scalar_type() == at::kByte && qweight.is_contiguous() && qweight.dim() == 2 &&
            qweight.size(1) * 2 == K,
        "qweight must be contiguous uint8 [N, K / 2]");
  check(group_size % kChunk == 0 && K % group_size == 0,
        "group_size must be a multiple of 32 dividing K");
  check(K / group_size <= kMaxGroups, "at most 1024 groups per row (in_features / group_size)");
  const int64_t groups = K / group_size;
  check(sz.scalar_type() == at::kBFloat16 && sz.is_contiguous() && sz.dim() == 3 &&
            sz.size(0) == N && sz.size(1) == groups && sz.size(2) == 2,
        "scales_and_zeros must be contiguous bfloat16 [N, K / group_size, 2]");
  at::Tensor y = at::empty({M, N}, x.options());
  if (M == 0 || N == 0) return y;
  const uint8_t* q = qweight.data_ptr<uint8_t>();
  const auto* s = reinterpret_cast<const BF16*>(sz.data_ptr<at::BFloat16>());
  const float* xd = x.data_ptr<float>();
  if (M > kGemvRows) {  // x and the tiles in nibble order (a permutation of K)
    at::Tensor xn = at::empty_like(x);
    float* xo = xn.data_ptr<float>();
    for (int64_t i = 0; i < M * K; ++i) xo[i - i % kChunk + nibble_slot(i % kChunk)] = xd[i];
    tiled(xn, y, N, [&](int64_t n0, int64_t n1, float* w) {
      for (int64_t n = n0; n < n1; ++n)
        for (int64_t g = 0; g < groups; ++g) {
          const BF16* p = s + 2 * (n * groups + g);
          const float scale = bf16(p), shift = bf16(p + 1) - 8.f * scale;
          for (int64_t c = g * group_size; c < (g + 1) * group_size; c += kChunk) {
            const uint8_t* b = q + n * (K / 2) + c / 2;
            float* out = w + (n - n0) * K + c;
            for (int64_t j = 0; j < 16; ++j) out[j] = (b[j] & 0x0F) * scale + shift;
            for (int64_t j = 0; j < 16; ++j) out[16 + j] = (b[j] >> 4) * scale + shift;
          }
        }
    });
    return y;
  }
  const Int4Input in = int4_input(xd, M, K, group_size);
  float* yd = y.data_ptr<float>();
  row_blocks(M, [&]<int MB>(int64_t m) { int4_block<MB>(in, m, q, s, N, K, group_size, yd); });
  return y;
}

template <int MB>
void int8_block(const float* x, const int8_t* q, const BF16* s, int64_t N, int64_t K, float* y) {
  constexpr int R = MB == 1 ? 4 : 2;
  all_rows<R>(
      N, [&](int64_t n) { int8_rows<R, MB>(x, q, s, n, N, K, y); },
      [&](int64_t n) { int8_rows<1, MB>(x, q, s, n, N, K, y); });
}

at::Tensor int8_linear(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& scale) {
  check_input(x);
  const int64_t M = x.size(0), K = x.size(1), N = qweight.size(0);
  check(qweight.scalar_type() == at::kChar && qweight.is_contiguous() && qweight.dim() == 2 &&
            qweight.size(1) == K,
        "qweight must be contiguous int8 [N, K]");
  check(scale.scalar_type() == at::kBFloat16 && scale.is_contiguous() && scale.numel() == N,
        "scale must be contiguous bfloat16 [N]");
  at::Tensor y = at::empty({M, N}, x.options());
  if (M == 0 || N == 0) return y;
  const float* xd = x.data_ptr<float>();
  const int8_t* q = qweight.data_ptr<int8_t>();
  const auto* s = reinterpret_cast<const BF16*>(scale.data_ptr<at::BFloat16>());
  if (M > kGemvRows) {
    tiled(x, y, N, [&](int64_t n0, int64_t n1, float* w) {
      for (int64_t n = n0; n < n1; ++n) {
        const float sn = bf16(s + n);
        for (int64_t k = 0; k < K; ++k) w[(n - n0) * K + k] = q[n * K + k] * sn;
      }
    });
    return y;
  }
  float* yd = y.data_ptr<float>();
  row_blocks(M, [&]<int MB>(int64_t m) { int8_block<MB>(xd + m * K, q, s, N, K, yd + m * N); });
  return y;
}

}  // namespace

TORCH_LIBRARY(lmlab_native, m) {
  m.def("int4_linear(Tensor x, Tensor qweight, Tensor scales_and_zeros, int group_size) -> Tensor");
  m.def("int8_linear(Tensor x, Tensor qweight, Tensor scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(lmlab_native, CPU, m) {
  m.impl("int4_linear", &int4_linear);
  m.impl("int8_linear", &int8_linear);
}
