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
// Above kGemvRows input rows (prefill) a tile of 4 MB of output rows is dequantized to float32 at a
// time and multiplied with at::mm.
// Two helpers for Int4Linear: int4_quantize (float32 weights to its codes, scales and zeros,
// bit for bit as lmlab.quantized.int4_params: GRPO re-quantizes its rollout copy every step) and
// int4_dequantize (to float32 or bfloat16: a long prompt's GEMM on CPUs with native bf16).

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
constexpr int64_t kTile = 64;      // output rows dequantized at a time above that, at least,
constexpr int64_t kTileBytes = 1 << 22;  // or as many as fill 4 MB of float32
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

inline float hmin(__m256 v) {
  __m128 s = _mm_min_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_min_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_min_ss(s, _mm_movehdup_ps(s)));
}

inline float hmax(__m256 v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_max_ss(s, _mm_movehdup_ps(s)));
}

inline void store8(__m256 v, float* out) { _mm256_storeu_ps(out, v); }

// Eight floats rounded to bfloat16, to nearest even (finite inputs, as c10::BFloat16 rounds them).
inline void store8(__m256 v, BF16* out) {
  const __m256i bits = _mm256_castps_si256(v);
  const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
  const __m256i up = _mm256_add_epi32(bits, _mm256_add_epi32(odd, _mm256_set1_epi32(0x7FFF)));
  const __m256i top = _mm256_srli_epi32(up, 16);  // 8 x 32-bit, the bfloat16 in the low half
  const __m128i packed =
      _mm_packus_epi32(_mm256_castsi256_si128(top), _mm256_extracti128_si256(top, 1));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(out), packed);
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

// y[:, rows of each tile] = x @ tile^T, each tile of kTileBytes / (4 K) output rows (at least
// kTile) written as float32 into w [rows, K] by `dequantize(n0, n1, w)`.
template <typename Dequantize>
void tiled(const at::Tensor& x, at::Tensor& y, int64_t N, const Dequantize& dequantize) {
  const int64_t K = x.size(1), rows = std::max(kTile, kTileBytes / (4 * K));
  at::parallel_for(0, (N + rows - 1) / rows, 1, [&](int64_t t0, int64_t t1) {
    at::Tensor w = at::empty({std::min(rows, N), K}, x.options());
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n0 = t * rows, n1 = std::min(N, n0 + rows);
      dequantize(n0, n1, w.data_ptr<float>());
      y.narrow(1, n0, n1 - n0).copy_(at::mm(x, w.narrow(0, 0, n1 - n0).t()));
    }
  });
}

// Rows n0 .. n1 of the int4 weight, w = (q - 8) * scale + zero, into out [n1 - n0, K] in the
// natural column order: float32 exactly as Int4Linear.dequantize (the product is exact: a 4-bit
// integer times a bfloat16), or that rounded to bfloat16 (to nearest even).
template <typename Out>
void int4_dequantize_rows(const uint8_t* q, const BF16* sz, int64_t n0, int64_t n1, int64_t K,
                          int64_t gs, Out* out) {
  const int64_t groups = K / gs;
  const __m128i low = _mm_set1_epi8(0x0F);
  const __m256i eight = _mm256_set1_epi32(8);
  for (int64_t n = n0; n < n1; ++n)
    for (int64_t g = 0; g < groups; ++g) {
      const BF16* p = sz + 2 * (n * groups + g);
      const __m256 scale = _mm256_set1_ps(bf16(p)), zero = _mm256_set1_ps(bf16(p + 1));
      for (int64_t c = g * gs; c < (g + 1) * gs; c += kChunk) {
        const auto* bytes = reinterpret_cast<const __m128i*>(q + n * (K / 2) + c / 2);
        const __m128i b = _mm_loadu_si128(bytes);
        const __m128i lo = _mm_and_si128(b, low), hi = _mm_and_si128(_mm_srli_epi16(b, 4), low);
        const __m128i codes[2] = {_mm_unpacklo_epi8(lo, hi), _mm_unpackhi_epi8(lo, hi)};
        Out* o = out + (n - n0) * K + c;
        for (int h = 0; h < 2; ++h)
          for (int e = 0; e < 2; ++e) {
            const __m128i part = e ? _mm_srli_si128(codes[h], 8) : codes[h];
            const __m256i v = _mm256_sub_epi32(_mm256_cvtepu8_epi32(part), eight);
            const __m256 w = _mm256_fmadd_ps(_mm256_cvtepi32_ps(v), scale, zero);
            store8(w, o + 16 * h + 8 * e);
          }
      }
    }
}

// Rows n0 .. n1 of float32 w [N, K] rounded to int4 groups exactly as lmlab.quantized.int4_params
// (the same float32 operations in the same order): scale = bf16(max(hi - lo) / 15, 1e-8)),
// zero = bf16(lo + 8 scale), q = clamp(round((w - zero) / scale + 8), 0, 15), packed two a byte.
void int4_quantize_rows(const float* w, int64_t n0, int64_t n1, int64_t K, int64_t gs,
                        uint8_t* q, BF16* sz) {
  const int64_t groups = K / gs;
  const __m256 eight = _mm256_set1_ps(8.f), top = _mm256_set1_ps(15.f);
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);  // undoes the lane-wise packs
  for (int64_t n = n0; n < n1; ++n)
    for (int64_t g = 0; g < groups; ++g) {
      const float* x = w + n * K + g * gs;
      __m256 lo = _mm256_loadu_ps(x), hi = lo;
      for (int64_t j = 8; j < gs; j += 8) {
        lo = _mm256_min_ps(lo, _mm256_loadu_ps(x + j));
        hi = _mm256_max_ps(hi, _mm256_loadu_ps(x + j));
      }
      const float mn = hmin(lo), mx = hmax(hi);
      const BF16 scale(std::max((mx - mn) / 15.f, 1e-8f));
      const BF16 zero(mn + 8.f * static_cast<float>(scale));
      sz[2 * (n * groups + g)] = scale;
      sz[2 * (n * groups + g) + 1] = zero;
      const __m256 s = _mm256_set1_ps(scale), z = _mm256_set1_ps(zero);
      for (int64_t c = 0; c < gs; c += kChunk) {
        __m256i v[4];
        for (int i = 0; i < 4; ++i) {
          __m256 f = _mm256_div_ps(_mm256_sub_ps(_mm256_loadu_ps(x + c + 8 * i), z), s);
          f = _mm256_round_ps(_mm256_add_ps(f, eight),
                              _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
          v[i] = _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(f, _mm256_setzero_ps()), top));
        }
        // 32 codes to 32 bytes in column order, then each 16-bit pair (even | odd << 8) to
        // one byte (even | odd << 4)
        const __m256i bytes = _mm256_permutevar8x32_epi32(
            _mm256_packus_epi16(_mm256_packs_epi32(v[0], v[1]), _mm256_packs_epi32(v[2], v[3])),
            order);
        const __m256i pairs = _mm256_and_si256(_mm256_or_si256(bytes, _mm256_srli_epi16(bytes, 4)),
                                               _mm256_set1_epi16(0xFF));
        const __m256i packed = _mm256_permute4x64_epi64(
            _mm256_packus_epi16(pairs, _mm256_setzero_si256()), 0xD8);
        _mm_storeu_si128(reinterpret_cast<__m128i*>(q + n * (K / 2) + (g * gs + c) / 2),
                         _mm256_castsi256_si128(packed));
      }
    }
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

// Every block of input rows against R output rows at a time, while those rows' weights are in
// cache (16 rows: the weights stream from memory once, not once per block of 4). R = 4 for one
// input row, else 2: at most 8 accumulators.
template <int R>
void int4_all(const Int4Input& in, int64_t M, const uint8_t* q, const BF16* sz, int64_t N,
              int64_t K, int64_t gs, float* y) {
  const auto rows = [&]<int RR>(int64_t n) {
    row_blocks(M, [&]<int MB>(int64_t m) {
      int4_rows<RR, MB>(in, m, q, sz, n, N, K, gs, y + m * N);
    });
  };
  all_rows<R>(
      N, [&](int64_t n) { rows.template operator()<R>(n); },
      [&](int64_t n) { rows.template operator()<1>(n); });
}

void check_int4(const at::Tensor& qweight, const at::Tensor& sz, int64_t K, int64_t group_size) {
  check(qweight.scalar_type() == at::kByte && qweight.is_contiguous() && qweight.dim() == 2 &&
            qweight.size(1) * 2 == K && qweight.device().is_cpu(),
        "qweight must be contiguous uint8 [N, K / 2] on the CPU");
  check(group_size % kChunk == 0 && K % group_size == 0,
        "group_size must be a multiple of 32 dividing K");
  check(K / group_size <= kMaxGroups, "at most 1024 groups per row (in_features / group_size)");
  check(sz.scalar_type() == at::kBFloat16 && sz.is_contiguous() && sz.dim() == 3 &&
            sz.size(0) == qweight.size(0) && sz.size(1) == K / group_size && sz.size(2) == 2,
        "scales_and_zeros must be contiguous bfloat16 [N, K / group_size, 2]");
}

at::Tensor int4_dequantize(const at::Tensor& qweight, const at::Tensor& sz, int64_t group_size,
                           at::ScalarType dtype) {
  const int64_t N = qweight.size(0), K = 2 * qweight.size(1);
  check_int4(qweight, sz, K, group_size);
  check(dtype == at::kFloat || dtype == at::kBFloat16, "dtype must be float32 or bfloat16");
  at::Tensor w = at::empty({N, K}, qweight.options().dtype(dtype));
  const uint8_t* q = qweight.data_ptr<uint8_t>();
  const auto* s = reinterpret_cast<const BF16*>(sz.data_ptr<at::BFloat16>());
  at::parallel_for(0, N, kGrain, [&](int64_t n0, int64_t n1) {
    if (dtype == at::kFloat)
      int4_dequantize_rows(q, s, n0, n1, K, group_size, w.data_ptr<float>() + n0 * K);
    else
      int4_dequantize_rows(q, s, n0, n1, K, group_size,
                           reinterpret_cast<BF16*>(w.data_ptr<at::BFloat16>()) + n0 * K);
  });
  return w;
}

std::tuple<at::Tensor, at::Tensor> int4_quantize(const at::Tensor& w, int64_t group_size) {
  check(w.dim() == 2 && w.scalar_type() == at::kFloat && w.is_contiguous() && w.device().is_cpu(),
        "w must be a contiguous float32 [N, K] CPU tensor");
  const int64_t N = w.size(0), K = w.size(1);
  check(group_size % kChunk == 0 && K % group_size == 0,
        "group_size must be a multiple of 32 dividing K");
  at::Tensor q = at::empty({N, K / 2}, w.options().dtype(at::kByte));
  at::Tensor sz = at::empty({N, K / group_size, 2}, w.options().dtype(at::kBFloat16));
  at::parallel_for(0, N, kGrain, [&](int64_t n0, int64_t n1) {
    int4_quantize_rows(w.data_ptr<float>(), n0, n1, K, group_size, q.data_ptr<uint8_t>(),
                       reinterpret_cast<BF16*>(sz.data_ptr<at::BFloat16>()));
  });
  return {q, sz};
}

at::Tensor int4_linear(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& sz,
                       int64_t group_size) {
  check_input(x);
  const int64_t M = x.size(0), K = x.size(1), N = qweight.size(0);
  check_int4(qweight, sz, K, group_size);
  at::Tensor y = at::empty({M, N}, x.options());
  if (M == 0 || N == 0) return y;
  const uint8_t* q = qweight.data_ptr<uint8_t>();
  const auto* s = reinterpret_cast<const BF16*>(sz.data_ptr<at::BFloat16>());
  const float* xd = x.data_ptr<float>();
  if (M > kGemvRows) {
    tiled(x, y, N, [&](int64_t n0, int64_t n1, float* w) {
      int4_dequantize_rows(q, s, n0, n1, K, group_size, w);
    });
    return y;
  }
  const Int4Input in = int4_input(xd, M, K, group_size);
  float* yd = y.data_ptr<float>();
  if (M == 1)
    int4_all<4>(in, M, q, s, N, K, group_size, yd);
  else
    int4_all<2>(in, M, q, s, N, K, group_size, yd);
  return y;
}

template <int R>  // as int4_all
void int8_all(const float* x, int64_t M, const int8_t* q, const BF16* s, int64_t N, int64_t K,
              float* y) {
  const auto rows = [&]<int RR>(int64_t n) {
    row_blocks(M, [&]<int MB>(int64_t m) {
      int8_rows<RR, MB>(x + m * K, q, s, n, N, K, y + m * N);
    });
  };
  all_rows<R>(
      N, [&](int64_t n) { rows.template operator()<R>(n); },
      [&](int64_t n) { rows.template operator()<1>(n); });
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
  if (M == 1)
    int8_all<4>(xd, M, q, s, N, K, yd);
  else
    int8_all<2>(xd, M, q, s, N, K, yd);
  return y;
}

}  // namespace

TORCH_LIBRARY(lmlab_native, m) {
  m.def("int4_linear(Tensor x, Tensor qweight, Tensor scales_and_zeros, int group_size) -> Tensor");
  m.def("int8_linear(Tensor x, Tensor qweight, Tensor scale) -> Tensor");
  m.def(
      "int4_dequantize(Tensor qweight, Tensor scales_and_zeros, int group_size, ScalarType dtype)"
      " -> Tensor");
  m.def("int4_quantize(Tensor w, int group_size) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(lmlab_native, CPU, m) {
  m.impl("int4_linear", &int4_linear);
  m.impl("int8_linear", &int8_linear);
  m.impl("int4_dequantize", &int4_dequantize);
  m.impl("int4_quantize", &int4_quantize);
}
