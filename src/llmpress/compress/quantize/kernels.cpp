// llmpress weight-only GEMV/GEMM kernels for small batches (decode), float32 activations.
//
// Why our own: aten._weight_int8pack_mm / _weight_int4pack_mm_for_cpu are vectorised only for
// bfloat16 activations and, measured on this project's 2-core AVX-512 machine, read int8
// weights at ~9 GB/s (compute-bound) while the memory system delivers ~22 GB/s to a float32
// GEMV. These loops load each weight row once, widen it in registers (int8 or 4-bit codes ->
// float32) and feed FMAs for every activation row, so decode is bound by weight bytes again.
// Results are plain float32 dot products: the same function as a float GEMM on the
// dequantized weight, up to summation order.
//
// Layouts (built by the Python side from the stored, portable format):
//   int8: q int8 [N, K], s float32 [N]                      y = s[n] * sum_k x[k] q[n,k]
//   int4: q uint8 [N, K/2] as stored (byte j: code 2j low nibble, code 2j+1 high nibble), scales,
//         mins float16 [N, K/G] as stored; w = code * scale + min. The kernel reads the stored
//         tensors themselves (no repacked copy in memory); it pairs the low nibbles of a 32-block
//         with its even activations and the high ones with its odd activations, which it gets by
//         de-interleaving each activation row once per call.

#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <pybind11/stl.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>
#include <tuple>
#include <type_traits>
#include <vector>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace {

constexpr int64_t MB = 4;  // activation rows per register block

#if defined(__AVX512F__)
// 4-bit codes, dequantized in registers per 32-block (the same register blocking as widen_rows below).
template <int R, int NR>
inline void int4_rows(const float* X, int64_t K, int64_t G, const uint8_t* q, const at::Half* sc, const at::Half* mn,
                      float* Y, int64_t ldy) {
  const int64_t NG = K / G;
  __m512 acc[NR][R];
  for (int i = 0; i < NR; ++i)
    for (int r = 0; r < R; ++r) acc[i][r] = _mm512_setzero_ps();
  const __m128i low = _mm_set1_epi8(0x0F);
  for (int64_t g0 = 0; g0 < K; g0 += G) {
    __m512 vs[NR], vm[NR];
    for (int i = 0; i < NR; ++i) {
      vs[i] = _mm512_set1_ps(static_cast<float>(sc[i * NG + g0 / G]));
      vm[i] = _mm512_set1_ps(static_cast<float>(mn[i * NG + g0 / G]));
    }
    for (int64_t k = g0; k < g0 + G; k += 32) {
      if ((k & 127) == 0)
        for (int i = 0; i < NR; ++i) _mm_prefetch((const char*)(q + (2 * NR + i) * (K / 2) + k / 2), _MM_HINT_T0);
      __m512 x0[R], x1[R];
      for (int r = 0; r < R; ++r) {
        x0[r] = _mm512_loadu_ps(X + r * K + k);
        x1[r] = _mm512_loadu_ps(X + r * K + k + 16);
      }
      for (int i = 0; i < NR; ++i) {
        __m128i b = _mm_loadu_si128((const __m128i*)(q + i * (K / 2) + k / 2));
        __m128i lo = _mm_and_si128(b, low);
        __m128i hi = _mm_and_si128(_mm_srli_epi16(b, 4), low);
        __m512 w0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(lo)), vs[i], vm[i]);
        __m512 w1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(hi)), vs[i], vm[i]);
        for (int r = 0; r < R; ++r) {
          acc[i][r] = _mm512_fmadd_ps(w0, x0[r], acc[i][r]);
          acc[i][r] = _mm512_fmadd_ps(w1, x1[r], acc[i][r]);
        }
      }
    }
  }
  for (int i = 0; i < NR; ++i)
    for (int r = 0; r < R; ++r) Y[r * ldy + i] = _mm512_reduce_add_ps(acc[i][r]);
}

// Weights widened to float32 in registers: int8 (scaled per row at the end), float32, bfloat16 (exactly, by a
// 16-bit shift), float16 (vcvtph2ps). For float weights this replaces aten's GEMV, which read float32
// weights at about a third of the memory bandwidth here (SmolLM2 fp32 b1: 29 tok/s of a ~87 tok/s limit).
inline __m512 load_w(const int8_t* w) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w))));
}
inline __m512 load_w(const float* w) { return _mm512_loadu_ps(w); }
inline __m512 load_w(const at::Half* w) { return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w))); }
inline __m512 load_w(const at::BFloat16* w) {
  const __m512i e = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w)));
  return _mm512_castsi512_ps(_mm512_slli_epi32(e, 16));
}

// Each call computes NR output rows (weight rows) for R activation rows: NR * R independent accumulators keep
// the FMA pipes busy (one chain per output would wait on FMA latency); one weight cache line is prefetched
// (two blocks ahead) per line read. `s`: per-row scales (int8 weights) or nullptr.
template <int R, int NR, typename T>
inline void widen_rows(const float* X, int64_t K, const T* w, const float* s, float* Y, int64_t ldy) {
  constexpr int64_t LINE = 64 / sizeof(T);  // weights per cache line
  __m512 acc[NR][R];
  for (int i = 0; i < NR; ++i)
    for (int r = 0; r < R; ++r) acc[i][r] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; k += 16) {
    __m512 x[R];
    for (int r = 0; r < R; ++r) x[r] = _mm512_loadu_ps(X + r * K + k);
    if ((k & (LINE - 1)) == 0)
      for (int i = 0; i < NR; ++i) _mm_prefetch((const char*)(w + (2 * NR + i) * K + k), _MM_HINT_T0);
    for (int i = 0; i < NR; ++i) {
      const __m512 wv = load_w(w + i * K + k);
      for (int r = 0; r < R; ++r) acc[i][r] = _mm512_fmadd_ps(wv, x[r], acc[i][r]);
    }
  }
  for (int i = 0; i < NR; ++i)
    for (int r = 0; r < R; ++r) Y[r * ldy + i] = _mm512_reduce_add_ps(acc[i][r]) * (s ? s[i] : 1.f);
}

template <int R, int NR>
inline void int8_rows(const float* X, int64_t K, const int8_t* q, const float* s, float* Y, int64_t ldy) {
  widen_rows<R, NR>(X, K, q, s, Y, ldy);
}

#if defined(__AVX512BF16__)
#define LLMPRESS_BF16A 1
// int8 weights x bfloat16 activations on AVX512-BF16: vdpbf16ps does 32 multiply-adds where a float32 FMA
// does 16, and a batch-32 int8 matmul here runs at the float32 FMA peak. The activation rows are rounded to
// bf16 once per call (round to nearest even); the weight rows of a block are widened to bf16 once (exact:
// |q| <= 127) into a buffer that stays in L1 while every chunk of activation rows reads it.
inline __m512bh as_bh(__m512i v) { return reinterpret_cast<__m512bh&>(v); }

inline void to_bf16(const float* x, int64_t n, at::BFloat16* out) {  // n: a multiple of 32
  for (int64_t k = 0; k < n; k += 32) {
    const __m512bh b = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(x + k + 16), _mm512_loadu_ps(x + k));
    _mm512_storeu_si512(reinterpret_cast<void*>(out + k), reinterpret_cast<const __m512i&>(b));
  }
}

inline void widen_int8(const int8_t* q, int64_t n, at::BFloat16* out) {  // n: a multiple of 32
  for (int64_t k = 0; k < n; k += 32) {
    const __m512 lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)(q + k))));
    const __m512 hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)(q + k + 16))));
    const __m512bh b = _mm512_cvtne2ps_pbh(hi, lo);
    _mm512_storeu_si512(reinterpret_cast<void*>(out + k), reinterpret_cast<const __m512i&>(b));
  }
}

template <int R, int NR>
inline void bf16a_rows(const at::BFloat16* XB, int64_t K, const at::BFloat16* WB, const float* s, float* Y,
                       int64_t ldy) {
  __m512 acc[NR][R];
  for (int i = 0; i < NR; ++i)
    for (int r = 0; r < R; ++r) acc[i][r] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; k += 32) {
    __m512bh x[R];
    for (int r = 0; r < R; ++r) x[r] = as_bh(_mm512_loadu_si512(reinterpret_cast<const void*>(XB + r * K + k)));
    for (int i = 0; i < NR; ++i) {
      const __m512bh w = as_bh(_mm512_loadu_si512(reinterpret_cast<const void*>(WB + i * K + k)));
      for (int r = 0; r < R; ++r) acc[i][r] = _mm512_dpbf16_ps(acc[i][r], w, x[r]);
    }
  }
  for (int i = 0; i < NR; ++i)
    for (int r = 0; r < R; ++r) Y[r * ldy + i] = _mm512_reduce_add_ps(acc[i][r]) * s[i];
}
#endif

#if defined(__AVX512VNNI__)
#define LLMPRESS_Q8 1
// int8 weights x int8 activations (per row, per 32-block scale xs), llama.cpp's Q8_0 x Q8_0 idea on
// AVX512-VNNI: vpdpbusd multiplies unsigned by signed bytes, so the weight bytes are flipped to
// w + 128 (xor 0x80) and the extra 128 * sum(xq) of each activation row (Cr) is subtracted at the end.
template <int R, int NR>
inline void q8_rows(const int8_t* XQ, const float* XSV, const float* Cr, int64_t K, const int8_t* q, const float* s,
                    float* Y, int64_t ldy) {
  // one zmm = two 32-blocks: vpdpbusd's lanes 0-7 sum block 2p, lanes 8-15 block 2p+1, so one
  // per-lane scale vector (XSV, built once per call) scales both; one float conversion per 64 bytes
  const int64_t NP = K / 64;
  __m512 acc[NR][R];
  for (int i = 0; i < NR; ++i)
    for (int r = 0; r < R; ++r) acc[i][r] = _mm512_setzero_ps();
  const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
  for (int64_t p = 0; p < NP; ++p) {
    __m512i x[R];
    __m512 xs[R];
    for (int r = 0; r < R; ++r) {
      x[r] = _mm512_loadu_si512(reinterpret_cast<const void*>(XQ + r * K + p * 64));
      xs[r] = _mm512_loadu_ps(XSV + (r * NP + p) * 16);
    }
    for (int i = 0; i < NR; ++i) _mm_prefetch((const char*)(q + (2 * NR + i) * K + p * 64), _MM_HINT_T0);
    for (int i = 0; i < NR; ++i) {
      const __m512i w = _mm512_xor_si512(_mm512_loadu_si512(reinterpret_cast<const void*>(q + i * K + p * 64)), flip);
      for (int r = 0; r < R; ++r) {
        const __m512i d = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w, x[r]);
        acc[i][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), xs[r], acc[i][r]);
      }
    }
  }
  for (int i = 0; i < NR; ++i)
    for (int r = 0; r < R; ++r) Y[r * ldy + i] = (_mm512_reduce_add_ps(acc[i][r]) - Cr[r]) * s[i];
}
#endif
#else
template <int R, int NR>
inline void int8_rows(const float* X, int64_t K, const int8_t* q, const float* s, float* Y, int64_t ldy) {
  for (int i = 0; i < NR; ++i)
    for (int r = 0; r < R; ++r) {
      float a = 0.f;
      for (int64_t k = 0; k < K; ++k) a += X[r * K + k] * float(q[i * K + k]);
      Y[r * ldy + i] = a * s[i];
    }
}

template <int R, int NR>
inline void int4_rows(const float* X, int64_t K, int64_t G, const uint8_t* q, const at::Half* sc, const at::Half* mn,
                      float* Y, int64_t ldy) {
  const int64_t NG = K / G;
  for (int i = 0; i < NR; ++i)
    for (int r = 0; r < R; ++r) {
      float a = 0.f;
      for (int64_t k = 0; k < K; k += 32)
        for (int j = 0; j < 16; ++j) {
          uint8_t b = q[i * (K / 2) + k / 2 + j];
          float s = static_cast<float>(sc[i * NG + k / G]), m = static_cast<float>(mn[i * NG + k / G]);
          a += X[r * K + k + j] * (float(b & 0x0F) * s + m) + X[r * K + k + 16 + j] * (float(b >> 4) * s + m);
        }
      Y[r * ldy + i] = a;
    }
}
#endif

constexpr int64_t NB = 4;  // weight rows per register block (a multiple of every NR below)

// Dispatch `rows` (<= MB) activation rows and `nr` (NB, or 1 for a tail) weight rows to a
// fixed-size inner loop f(R, NR): R * NR accumulators (at most 16 of the 32 zmm registers).
template <typename F>
inline void by_rows(int64_t rows, int64_t nr, F&& f) {
  using std::integral_constant;
  if (nr == 1) {
    switch (rows) {
      case 1: f(integral_constant<int, 1>{}, integral_constant<int, 1>{}); break;
      case 2: f(integral_constant<int, 2>{}, integral_constant<int, 1>{}); break;
      case 3: f(integral_constant<int, 3>{}, integral_constant<int, 1>{}); break;
      default: f(integral_constant<int, 4>{}, integral_constant<int, 1>{}); break;
    }
    return;
  }
  switch (rows) {
    case 1: f(integral_constant<int, 1>{}, integral_constant<int, 4>{}); break;
    case 2: f(integral_constant<int, 2>{}, integral_constant<int, 4>{}); break;
    case 3: f(integral_constant<int, 3>{}, integral_constant<int, 4>{}); break;
    default: f(integral_constant<int, 4>{}, integral_constant<int, 4>{}); break;
  }
}

// Weight rows split across threads; per thread, blocks of NB weight rows (1 for the tail), each
// against the activation rows in chunks of MB: f(n, m0, R, NR) computes one such block.
template <typename F>
void for_blocks(int64_t N, int64_t M, F&& f) {
  at::parallel_for(0, N, 64, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1;) {
      const int64_t nr = n + NB <= n1 ? NB : 1;
      for (int64_t m0 = 0; m0 < M; m0 += MB)
        by_rows(std::min(MB, M - m0), nr, [&](auto R, auto NR) { f(n, m0, R, NR); });
      n += nr;
    }
  });
}

void check_x(const torch::Tensor& x, int64_t K) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == torch::kFloat32, "x must be float32 [M, K]");
  TORCH_CHECK(x.size(1) == K, "x has ", x.size(1), " columns, the weight ", K);
}

}  // namespace

static int64_t q8_min_rows = 0;
inline int64_t q8_threshold() { return q8_min_rows; }
static int64_t bf16a_min_rows = 0;
constexpr int64_t BF16A_TILE = 64;     // activation rows per tile of the prompt-sized bf16 path
constexpr int64_t INT8_MAX_ROWS = 64;  // float32 activations: our kernel up to here, a GEMM beyond
inline int64_t bf16a_threshold() { return bf16a_min_rows; }

// q8_from > 0: from that many activation rows, int8 activations on VNNI (where built); bf16_from > 0: from
// that many rows, bfloat16 activations on AVX512-BF16 (where built; q8 first when both apply); 0: exact float32.
torch::Tensor int8_linear(torch::Tensor x, torch::Tensor q, torch::Tensor s, int64_t q8_from, int64_t bf16_from) {
  TORCH_CHECK(q.scalar_type() == torch::kInt8 && q.is_contiguous(), "q must be contiguous int8 [N, K]");
  TORCH_CHECK(s.scalar_type() == torch::kFloat32 && s.is_contiguous(), "s must be contiguous float32 [N]");
  const int64_t N = q.size(0), K = q.size(1);
  TORCH_CHECK(K % 16 == 0, "K must be a multiple of 16");
  check_x(x, K);
  x = x.contiguous();
  const int64_t M = x.size(0);
  auto y = torch::empty({M, N}, x.options());
  const float* X = x.data_ptr<float>();
  const int8_t* Q = q.data_ptr<int8_t>();
  const float* S = s.data_ptr<float>();
  float* Y = y.data_ptr<float>();
#ifdef LLMPRESS_Q8
  if (q8_from > 0 && M >= q8_from && K % 64 == 0) {
    // activations to int8 per row and 32-block (scale = absmax / 127), then integer dot products
    const int64_t NBK = K / 32;
    std::vector<int8_t> xq(M * K);
    std::vector<float> xsv(M * NBK * 8), cr(M, 0.f);
    at::parallel_for(0, M, 1, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        double c = 0.0;
        for (int64_t b = 0; b < NBK; ++b) {
          const float* xb = X + r * K + b * 32;
          float amax = 0.f;
          for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(xb[j]));
          const float sc = amax / 127.f, inv = amax > 0.f ? 127.f / amax : 0.f;
          int sum = 0;
          for (int j = 0; j < 32; ++j) {
            const int v = static_cast<int>(std::nearbyint(xb[j] * inv));
            xq[r * K + b * 32 + j] = static_cast<int8_t>(v);
            sum += v;
          }
          for (int j = 0; j < 8; ++j) xsv[(r * NBK + b) * 8 + j] = sc;  // lanes of this block in its zmm
          c += 128.0 * sc * sum;
        }
        cr[r] = static_cast<float>(c);
      }
    });
    const int8_t* XQ = xq.data();
    const float* XS = xsv.data();
    const float* CR = cr.data();
    for_blocks(N, M, [&](int64_t n, int64_t m0, auto R, auto NR) {
      q8_rows<decltype(R)::value, decltype(NR)::value>(XQ + m0 * K, XS + m0 * NBK * 8, CR + m0, K, Q + n * K, S + n,
                                                       Y + m0 * N + n, N);
    });
    return y;
  }
#endif
#ifdef LLMPRESS_BF16A
  if (bf16_from > 0 && M >= bf16_from && K % 32 == 0 && M > BF16A_TILE) {
    // prompt-sized: the whole weight widened once (it stays in L3), then tiles of BF16A_TILE activation rows
    // (in L2) against blocks of NB weight rows (in L1)
    std::vector<at::BFloat16> xb(M * K), wall(N * K);
    at::parallel_for(0, M, 16, [&](int64_t r0, int64_t r1) { to_bf16(X + r0 * K, (r1 - r0) * K, xb.data() + r0 * K); });
    at::parallel_for(0, N, 64, [&](int64_t n0, int64_t n1) { widen_int8(Q + n0 * K, (n1 - n0) * K, wall.data() + n0 * K); });
    const at::BFloat16* XB = xb.data();
    const at::BFloat16* WB = wall.data();
    for (int64_t t0 = 0; t0 < M; t0 += BF16A_TILE) {
      const int64_t t1 = std::min(M, t0 + BF16A_TILE);
      at::parallel_for(0, N, 64, [&](int64_t n0, int64_t n1) {
        for (int64_t n = n0; n < n1;) {
          const int64_t nr = n + NB <= n1 ? NB : 1;
          for (int64_t m0 = t0; m0 < t1; m0 += MB)
            by_rows(std::min(MB, t1 - m0), nr, [&](auto R, auto NR) {
              bf16a_rows<decltype(R)::value, decltype(NR)::value>(XB + m0 * K, K, WB + n * K, S + n, Y + m0 * N + n, N);
            });
          n += nr;
        }
      });
    }
    return y;
  }
  if (bf16_from > 0 && M >= bf16_from && K % 32 == 0) {
    std::vector<at::BFloat16> xb(M * K);
    to_bf16(X, M * K, xb.data());
    const at::BFloat16* XB = xb.data();
    at::parallel_for(0, N, 64, [&](int64_t n0, int64_t n1) {
      std::vector<at::BFloat16> wb(NB * K);  // this thread's widened weight block
      for (int64_t n = n0; n < n1;) {
        const int64_t nr = n + NB <= n1 ? NB : 1;
        widen_int8(Q + n * K, nr * K, wb.data());
        for (int64_t m0 = 0; m0 < M; m0 += MB)
          by_rows(std::min(MB, M - m0), nr, [&](auto R, auto NR) {
            bf16a_rows<decltype(R)::value, decltype(NR)::value>(XB + m0 * K, K, wb.data(), S + n, Y + m0 * N + n, N);
          });
        n += nr;
      }
    });
    return y;
  }
#endif
  if (M > INT8_MAX_ROWS)  // prompt-sized in float32: a BLAS GEMM on the dequantized weight, as the modules do
    return at::linear(x, q.to(torch::kFloat32).mul_(s.unsqueeze(1)));
  for_blocks(N, M, [&](int64_t n, int64_t m0, auto R, auto NR) {
    int8_rows<decltype(R)::value, decltype(NR)::value>(X + m0 * K, K, Q + n * K, S + n, Y + m0 * N + n, N);
  });
  return y;
}

// int8_linear with the fused decoder's batched-activation settings (the decode step's head calls it).
torch::Tensor int8_linear_decode(torch::Tensor x, torch::Tensor q, torch::Tensor s) {
  return int8_linear(x, q, s, q8_threshold(), bf16a_threshold());
}

// The fused decoder's batched bf16-activation threshold; 0 = off. Set from Python (kernels.py).
int64_t set_bf16a_min_rows(int64_t rows) {
#ifdef LLMPRESS_BF16A
  bf16a_min_rows = rows;
  return rows;
#else
  (void)rows;
  return 0;
#endif
}

// The fused decoder's batched int8 x int8 (VNNI) threshold; 0 = off. Set from Python (kernels.py).
int64_t set_q8_min_rows(int64_t rows) {
#ifdef LLMPRESS_Q8
  q8_min_rows = rows;
  return rows;
#else
  (void)rows;
  return 0;
#endif
}

torch::Tensor int4_linear(torch::Tensor x, torch::Tensor q, torch::Tensor scales, torch::Tensor mins,
                          int64_t group) {
  TORCH_CHECK(q.scalar_type() == torch::kUInt8 && q.is_contiguous(), "q must be contiguous uint8 [N, K/2]");
  const int64_t N = q.size(0), K = q.size(1) * 2;
  TORCH_CHECK(group % 32 == 0 && K % group == 0, "group must be a multiple of 32 dividing K");
  TORCH_CHECK(scales.scalar_type() == torch::kHalf && mins.scalar_type() == torch::kHalf &&
                  scales.is_contiguous() && mins.is_contiguous() && scales.size(1) == K / group,
              "scales / mins must be contiguous float16 [N, K/group]");
  check_x(x, K);
  x = x.contiguous();
  const int64_t M = x.size(0), NG = K / group;
  auto y = torch::empty({M, N}, x.options());
  // de-interleave each 32-block of the activations: evens first (low nibbles), then odds (high nibbles)
  auto xp = torch::empty({M, K}, x.options());
  const float* X0 = x.data_ptr<float>();
  float* XP = xp.data_ptr<float>();
  for (int64_t r = 0; r < M; ++r)
    for (int64_t k = 0; k < K; k += 32)
      for (int j = 0; j < 16; ++j) {
        XP[r * K + k + j] = X0[r * K + k + 2 * j];
        XP[r * K + k + 16 + j] = X0[r * K + k + 2 * j + 1];
      }
  const float* X = XP;
  const uint8_t* Q = q.data_ptr<uint8_t>();
  const at::Half* SC = scales.data_ptr<at::Half>();
  const at::Half* MN = mins.data_ptr<at::Half>();
  float* Y = y.data_ptr<float>();
  for_blocks(N, M, [&](int64_t n, int64_t m0, auto R, auto NR) {
    int4_rows<decltype(R)::value, decltype(NR)::value>(X + m0 * K, K, group, Q + n * (K / 2), SC + n * NG,
                                                       MN + n * NG, Y + m0 * N + n, N);
  });
  return y;
}


// ---------------------------------------------------------------------------------------------
// Fused decode step (llmpress.engine.fastpath): every decoder layer of a Llama-family model for
// B decode rows (one new token each) in one call, over the engine's paged KV cache. Per layer:
// rmsnorm -> qkv -> rope -> KV write -> attention (read in place through the block tables, no
// gather) -> o_proj + residual -> rmsnorm -> gate/up -> silu*mul -> down + residual. The Python
// runner did the same with ~40 operator calls per layer, each paying Python + dispatcher
// overhead that, for a 30-layer x 576-wide model, costs as much as reading the weights.
// Float weights: our kernel for decode-sized batches, aten's linear otherwise and without AVX-512. Measured
// here (576x1536 and the 49152x576 head, 2 threads): aten's float32 GEMM runs at a third to a fifth of our
// kernel's speed at 1-8 rows and is still slower at 32; its bfloat16 GEMM (AVX512-BF16) wins from 16 rows;
// float16 weights (no native CPU GEMM here) are widened like bfloat16 ones, up to 32 rows.
constexpr int64_t FLOAT32_MAX_ROWS = 32;
constexpr int64_t BF16_MAX_ROWS = 8;

bool float_kernel_applies(const torch::Tensor& x, const torch::Tensor& w) {
#if defined(__AVX512F__)
  const auto t = w.scalar_type();
  return (t == torch::kFloat32 || t == torch::kBFloat16 || t == torch::kHalf) && w.dim() == 2 && w.is_contiguous() &&
         w.size(1) % 16 == 0 && x.dim() == 2 && x.scalar_type() == torch::kFloat32 && x.size(1) == w.size(1) &&
         x.size(0) <= (t == torch::kBFloat16 ? BF16_MAX_ROWS : FLOAT32_MAX_ROWS);
#else
  (void)x;
  (void)w;
  return false;
#endif
}

torch::Tensor float_linear(torch::Tensor x, torch::Tensor w) {
  if (!float_kernel_applies(x, w)) {
    return w.scalar_type() == x.scalar_type() ? at::linear(x, w) : at::linear(x.to(w.scalar_type()), w).to(x.scalar_type());
  }
#if defined(__AVX512F__)
  x = x.contiguous();
  const int64_t M = x.size(0), N = w.size(0), K = w.size(1);
  auto y = torch::empty({M, N}, x.options());
  const float* X = x.data_ptr<float>();
  float* Y = y.data_ptr<float>();
  auto run = [&](auto* W) {
    for_blocks(N, M, [&](int64_t n, int64_t m0, auto R, auto NR) {
      widen_rows<decltype(R)::value, decltype(NR)::value>(X + m0 * K, K, W + n * K, nullptr, Y + m0 * N + n, N);
    });
  };
  if (w.scalar_type() == torch::kFloat32) run(w.data_ptr<float>());
  else if (w.scalar_type() == torch::kHalf) run(w.data_ptr<at::Half>());
  else run(w.data_ptr<at::BFloat16>());
  return y;
#else
  return at::linear(x, w);
#endif
}

// Hidden states are float32; weights are float (any dtype, aten GEMM), int8 or int4 (the
// kernels above); the KV cache is float32, bfloat16 or float16.
namespace fast {

struct Lin {
  int64_t kind = 0;  // 0 float weight (aten), 1 int8 [N, K] + scales, 2 int4 packed + scales + mins
  torch::Tensor w, s, m, bias;
  int64_t group = 0;
};

using LinSpec = std::tuple<int64_t, torch::Tensor, torch::Tensor, torch::Tensor, int64_t, torch::Tensor>;

Lin make_lin(const LinSpec& t) {
  Lin l;
  l.kind = std::get<0>(t);
  l.w = std::get<1>(t);
  l.s = std::get<2>(t);
  l.m = std::get<3>(t);
  l.group = std::get<4>(t);
  l.bias = std::get<5>(t);
  return l;
}

torch::Tensor apply(const Lin& l, const torch::Tensor& x) {
  torch::Tensor y;
  if (l.kind == 1) {
    y = int8_linear(x, l.w, l.s, q8_threshold(), bf16a_threshold());
  } else if (l.kind == 2) {
    y = int4_linear(x, l.w, l.s, l.m, l.group);
  } else if (float_kernel_applies(x, l.w)) {
    y = float_linear(x, l.w);
  } else if (l.w.scalar_type() == torch::kFloat32) {
    y = at::linear(x, l.w);
  } else {
    y = at::linear(x.to(l.w.scalar_type()), l.w).to(torch::kFloat32);
  }
  if (l.bias.defined() && l.bias.numel()) y.add_(l.bias);
  return y;
}

torch::Tensor apply_all(const std::vector<Lin>& ls, const torch::Tensor& x) {
  if (ls.size() == 1) return apply(ls[0], x);
  std::vector<torch::Tensor> ys;
  for (const auto& l : ls) ys.push_back(apply(l, x));
  return at::cat(ys, 1);
}

template <typename T> inline float tof(T v) { return static_cast<float>(v); }

// 16 independent partial sums: vectorisable without -ffast-math (no reassociation needed).
inline float dot(const float* a, const float* b, int64_t n) {
  float acc[16] = {0};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    for (int j = 0; j < 16; ++j) acc[j] += a[i + j] * b[i + j];
  float s = 0.f;
  for (; i < n; ++i) s += a[i] * b[i];
  for (int j = 0; j < 16; ++j) s += acc[j];
  return s;
}

template <typename T>
inline float dot_t(const float* a, const T* b, int64_t n) {
  float acc[16] = {0};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    for (int j = 0; j < 16; ++j) acc[j] += a[i + j] * tof(b[i + j]);
  float s = 0.f;
  for (; i < n; ++i) s += a[i] * tof(b[i]);
  for (int j = 0; j < 16; ++j) s += acc[j];
  return s;
}

void rmsnorm(const float* x, const float* w, float eps, float* y, int64_t D) {
  const float r = 1.f / std::sqrt(dot(x, x, D) / float(D) + eps);
  for (int64_t d = 0; d < D; ++d) y[d] = w[d] * (x[d] * r);
}

// x = x * cos + rotate_half(x) * sin for one head (HF's cos/sin: the two halves repeat).
inline void rope(float* x, const float* c, const float* s, int64_t hd) {
  const int64_t h = hd / 2;
  for (int64_t i = 0; i < h; ++i) {
    const float a = x[i], b = x[i + h];
    x[i] = a * c[i] - b * s[i];
    x[i + h] = b * c[i + h] + a * s[i + h];
  }
}

struct Layer {
  torch::Tensor ln1, ln2;
  float eps1 = 1e-5f, eps2 = 1e-5f;
  std::vector<Lin> qkv, gate_up;
  Lin o, down;
  int64_t nq = 0, nkv = 0;
  float scale = 1.f;
  torch::Tensor kc, vc;  // [slots, nkv, hd]
};

// exp(x) for x <= 0 (softmax scores after subtracting their max), in place. Cephes' expf: x = k ln2 + r,
// |r| <= ln2 / 2, a degree-7 polynomial for e^r and 2^k from the exponent bits; relative error ~2e-7.
// Written without calls or branches so that -O3 vectorises it (std::exp stays a scalar libm call).
inline void exp_nonpositive(float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float v = std::max(x[i], -87.f);
    const int32_t k = static_cast<int32_t>(v * 1.44269504088896341f - 0.5f);  // v <= 0: round(v / ln2)
    const float kf = static_cast<float>(k);
    const float r = v - kf * 0.693359375f + kf * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.f;
    const int32_t bits = (k + 127) << 23;
    float scale;
    std::memcpy(&scale, &bits, sizeof scale);
    x[i] = p * scale;
  }
}

// Attention of the `rep` query heads that share KV head `g` (GQA), for one row, over `ctx` cached
// positions read through the row's block table. Each K and V row is read once for all `rep` heads,
// positions are walked block by block (no division per position), and the softmax exp is vectorised.
// q: rep heads x hd (contiguous), out: the same layout; buf: rep * ctx floats, vrow: hd floats.
template <typename T>
void attend_group(const float* q, const T* kc, const T* vc, int64_t stride, int64_t g, const int64_t* bt, int64_t bs,
                  int64_t ctx, int64_t hd, int64_t rep, float scale, float* out, float* buf, float* vrow) {
  for (int64_t t = 0, blk = 0; t < ctx; ++blk) {
    const int64_t base = bt[blk] * bs, e = std::min(bs, ctx - t);
    for (int64_t u = 0; u < e; ++u, ++t) {
      const T* k = kc + (base + u) * stride + g * hd;
      for (int64_t r = 0; r < rep; ++r) buf[r * ctx + t] = dot_t(q + r * hd, k, hd) * scale;
    }
  }
  for (int64_t r = 0; r < rep; ++r) {
    float* s = buf + r * ctx;
    float mx = -std::numeric_limits<float>::infinity();
    for (int64_t t = 0; t < ctx; ++t) mx = std::max(mx, s[t]);
    for (int64_t t = 0; t < ctx; ++t) s[t] -= mx;
    exp_nonpositive(s, ctx);
    float sum = 0.f;
    for (int64_t t = 0; t < ctx; ++t) sum += s[t];
    const float inv = 1.f / sum;
    for (int64_t t = 0; t < ctx; ++t) s[t] *= inv;
  }
  for (int64_t i = 0; i < rep * hd; ++i) out[i] = 0.f;
  for (int64_t t = 0, blk = 0; t < ctx; ++blk) {
    const int64_t base = bt[blk] * bs, e = std::min(bs, ctx - t);
    for (int64_t u = 0; u < e; ++u, ++t) {
      const T* v = vc + (base + u) * stride + g * hd;
      const float* vf;
      if constexpr (std::is_same_v<T, float>) {
        vf = v;
      } else {
        for (int64_t i = 0; i < hd; ++i) vrow[i] = tof(v[i]);
        vf = vrow;
      }
      for (int64_t r = 0; r < rep; ++r) {
        const float p = buf[r * ctx + t];
        float* o = out + r * hd;
        for (int64_t i = 0; i < hd; ++i) o[i] += p * vf[i];
      }
    }
  }
}

template <typename T>
void write_kv(T* kc, T* vc, int64_t stride, int64_t slot, const float* k, const float* v, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    kc[slot * stride + i] = static_cast<T>(k[i]);
    vc[slot * stride + i] = static_cast<T>(v[i]);
  }
}

class Decoder {
 public:
  explicit Decoder(int64_t head_dim) : hd_(head_dim) {}

  void add_layer(torch::Tensor ln1, double eps1, torch::Tensor ln2, double eps2, std::vector<LinSpec> qkv,
                 LinSpec o, std::vector<LinSpec> gate_up, LinSpec down, int64_t nq, int64_t nkv, double scale,
                 torch::Tensor kc, torch::Tensor vc) {
    TORCH_CHECK(ln1.scalar_type() == torch::kFloat32 && ln2.scalar_type() == torch::kFloat32, "norm weights: float32");
    TORCH_CHECK(kc.is_contiguous() && vc.is_contiguous() && kc.size(1) == nkv && kc.size(2) == hd_,
                "KV cache must be contiguous [slots, kv_heads, head_dim]");
    TORCH_CHECK(nkv > 0 && nq % nkv == 0, "query heads must be a multiple of KV heads");
    Layer L;
    L.ln1 = ln1.contiguous();
    L.ln2 = ln2.contiguous();
    L.eps1 = float(eps1);
    L.eps2 = float(eps2);
    for (const auto& t : qkv) L.qkv.push_back(make_lin(t));
    for (const auto& t : gate_up) L.gate_up.push_back(make_lin(t));
    L.o = make_lin(o);
    L.down = make_lin(down);
    L.nq = nq;
    L.nkv = nkv;
    L.scale = float(scale);
    L.kc = kc;
    L.vc = vc;
    layers_.push_back(std::move(L));
  }

  void set_profile(bool on) { prof_ = on; times_.assign(4, 0.0); }
  std::vector<double> times() const { return times_; }  // seconds: matmul, attention, kv_write, elementwise

  // h [B, D] float32 (embedded tokens), cos / sin [B, hd], pos: each row's position, bts: block tables.
  torch::Tensor forward(torch::Tensor h, torch::Tensor cos, torch::Tensor sin, std::vector<int64_t> pos,
                        std::vector<std::vector<int64_t>> bts, int64_t bs) {
    TORCH_CHECK(h.scalar_type() == torch::kFloat32 && h.dim() == 2, "h must be float32 [B, D]");
    h = h.contiguous().clone();
    cos = cos.to(torch::kFloat32).contiguous();
    sin = sin.to(torch::kFloat32).contiguous();
    const int64_t B = h.size(0), D = h.size(1), hd = hd_;
    TORCH_CHECK(int64_t(pos.size()) == B && int64_t(bts.size()) == B, "one position and block table per row");
    int64_t nb = 1;
    for (const auto& b : bts) nb = std::max<int64_t>(nb, int64_t(b.size()));
    std::vector<int64_t> bt(B * nb, 0), slot(B);
    int64_t max_ctx = 0;
    for (int64_t b = 0; b < B; ++b) {
      TORCH_CHECK(pos[b] / bs < int64_t(bts[b].size()), "block table too short for position ", pos[b]);
      std::copy(bts[b].begin(), bts[b].end(), bt.begin() + b * nb);
      slot[b] = bts[b][pos[b] / bs] * bs + pos[b] % bs;
      max_ctx = std::max(max_ctx, pos[b] + 1);
    }
    auto x = torch::empty({B, D}, h.options());
    float* H = h.data_ptr<float>();
    float* X = x.data_ptr<float>();
    const float* C = cos.data_ptr<float>();
    const float* S = sin.data_ptr<float>();
    auto clock = std::chrono::steady_clock::now();
    auto lap = [&](int i) {
      if (!prof_) return;
      auto now = std::chrono::steady_clock::now();
      times_[i] += std::chrono::duration<double>(now - clock).count();
      clock = now;
    };
    for (auto& L : layers_) {
      const float* w1 = L.ln1.data_ptr<float>();
      for (int64_t b = 0; b < B; ++b) rmsnorm(H + b * D, w1, L.eps1, X + b * D, D);
      lap(3);
      auto y = apply_all(L.qkv, x).contiguous();  // [B, (nq + 2 nkv) hd]
      lap(0);
      const int64_t nq = L.nq, nkv = L.nkv, W = (nq + 2 * nkv) * hd;
      TORCH_CHECK(y.size(1) == W, "q/k/v widths do not match the head counts");
      float* Y = y.data_ptr<float>();
      for (int64_t b = 0; b < B; ++b)
        for (int64_t j = 0; j < nq + nkv; ++j) rope(Y + b * W + j * hd, C + b * hd, S + b * hd, hd);
      lap(3);
      const int64_t stride = nkv * hd;
      auto kv_dispatch = [&](auto* kp, auto* vp) {
        using T = std::remove_pointer_t<decltype(kp)>;
        for (int64_t b = 0; b < B; ++b)
          write_kv<T>(kp, vp, stride, slot[b], Y + b * W + nq * hd, Y + b * W + (nq + nkv) * hd, stride);
        lap(2);
        auto attn = torch::empty({B, nq * hd}, h.options());
        float* A = attn.data_ptr<float>();
        const int64_t rep = nq / nkv;
        at::parallel_for(0, B * nkv, 1, [&](int64_t i0, int64_t i1) {
          std::vector<float> buf(rep * max_ctx + hd);
          for (int64_t i = i0; i < i1; ++i) {
            const int64_t b = i / nkv, g = i % nkv;
            attend_group<T>(Y + b * W + g * rep * hd, kp, vp, stride, g, bt.data() + b * nb, bs, pos[b] + 1, hd, rep,
                            L.scale, A + b * nq * hd + g * rep * hd, buf.data(), buf.data() + rep * max_ctx);
          }
        });
        return attn;
      };
      torch::Tensor attn;
      if (L.kc.scalar_type() == torch::kFloat32) {
        attn = kv_dispatch(L.kc.data_ptr<float>(), L.vc.data_ptr<float>());
      } else if (L.kc.scalar_type() == torch::kBFloat16) {
        attn = kv_dispatch(L.kc.data_ptr<c10::BFloat16>(), L.vc.data_ptr<c10::BFloat16>());
      } else {
        TORCH_CHECK(L.kc.scalar_type() == torch::kHalf, "KV cache dtype must be float32, bfloat16 or float16");
        attn = kv_dispatch(L.kc.data_ptr<c10::Half>(), L.vc.data_ptr<c10::Half>());
      }
      lap(1);
      auto o = apply(L.o, attn);
      lap(0);
      h.add_(o);
      const float* w2 = L.ln2.data_ptr<float>();
      for (int64_t b = 0; b < B; ++b) rmsnorm(H + b * D, w2, L.eps2, X + b * D, D);
      lap(3);
      auto gu = apply_all(L.gate_up, x);
      lap(0);
      const int64_t I = gu.size(1) / 2;
      auto a = at::silu(gu.narrow(1, 0, I)).mul_(gu.narrow(1, I, I));
      lap(3);
      auto d = apply(L.down, a);
      lap(0);
      h.add_(d);
      lap(3);
    }
    return h;
  }

 private:
  int64_t hd_;
  std::vector<Layer> layers_;
  bool prof_ = false;
  std::vector<double> times_ = std::vector<double>(4, 0.0);
};

}  // namespace fast

bool vectorized() {
#if defined(__AVX512F__)
  return true;
#else
  return false;
#endif
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("int8_linear", &int8_linear, pybind11::arg("x"), pybind11::arg("q"), pybind11::arg("s"),
        pybind11::arg("q8_from") = 0, pybind11::arg("bf16_from") = 0,
        "y = x @ (q * s[:, None]).T for int8 q, float32 x");
  m.def("int8_linear_decode", &int8_linear_decode, "int8_linear with the engine's q8 / bf16 thresholds (any row count)");
  m.def("set_bf16a_min_rows", &set_bf16a_min_rows,
        "int8 x bf16 (AVX512-BF16) from this many rows (0 off); returns the setting, 0 without AVX512-BF16");
  m.def("int4_linear", &int4_linear, "y = x @ dequant(q).T for 4-bit codes in 32-blocks, float32 x");
  m.def("float_linear", &float_linear, "y = x @ w.T for float32 x and float32 / bfloat16 / float16 w (our kernel for decode batches)");
  m.def("vectorized", &vectorized, "true when built with AVX-512");
  m.def("set_q8_min_rows", &set_q8_min_rows, "int8 x int8 VNNI from this many rows (0 off); returns the setting, 0 without VNNI");
  pybind11::class_<fast::Decoder>(m, "Decoder")
      .def(pybind11::init<int64_t>())
      .def("add_layer", &fast::Decoder::add_layer)
      .def("set_profile", &fast::Decoder::set_profile)
      .def("times", &fast::Decoder::times)
      .def("forward", &fast::Decoder::forward);
}
