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
//   int4: q uint8 [N, K/2], per 32-element block byte j holds code j (low nibble) and code
//         j+16 (high nibble); scales, mins float32 [N, K/G]   w = code * scale + min

#include <torch/extension.h>
#include <ATen/Parallel.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace {

constexpr int64_t MB = 4;  // activation rows per register block

// Each call computes NR output rows (weight rows) for R activation rows: NR * R independent
// accumulators keep the FMA pipes busy (one chain per output would wait on FMA latency).
#if defined(__AVX512F__)
template <int R, int NR>
inline void int8_rows(const float* X, int64_t K, const int8_t* q, const float* s, float* Y, int64_t ldy) {
  __m512 acc[NR][R];
  for (int i = 0; i < NR; ++i)
    for (int r = 0; r < R; ++r) acc[i][r] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; k += 16) {
    __m512 x[R];
    for (int r = 0; r < R; ++r) x[r] = _mm512_loadu_ps(X + r * K + k);
    if ((k & 63) == 0)  // fetch the next block's rows while this one computes (DRAM latency hiding)
      for (int i = 0; i < NR; ++i) _mm_prefetch((const char*)(q + (2 * NR + i) * K + k), _MM_HINT_T0);
    for (int i = 0; i < NR; ++i) {
      __m512 w = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)(q + i * K + k))));
      for (int r = 0; r < R; ++r) acc[i][r] = _mm512_fmadd_ps(w, x[r], acc[i][r]);
    }
  }
  for (int i = 0; i < NR; ++i)
    for (int r = 0; r < R; ++r) Y[r * ldy + i] = _mm512_reduce_add_ps(acc[i][r]) * s[i];
}

template <int R, int NR>
inline void int4_rows(const float* X, int64_t K, int64_t G, const uint8_t* q, const float* sc, const float* mn,
                      float* Y, int64_t ldy) {
  const int64_t NG = K / G;
  __m512 acc[NR][R];
  for (int i = 0; i < NR; ++i)
    for (int r = 0; r < R; ++r) acc[i][r] = _mm512_setzero_ps();
  const __m128i low = _mm_set1_epi8(0x0F);
  for (int64_t g0 = 0; g0 < K; g0 += G) {
    __m512 vs[NR], vm[NR];
    for (int i = 0; i < NR; ++i) {
      vs[i] = _mm512_set1_ps(sc[i * NG + g0 / G]);
      vm[i] = _mm512_set1_ps(mn[i * NG + g0 / G]);
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
inline void int4_rows(const float* X, int64_t K, int64_t G, const uint8_t* q, const float* sc, const float* mn,
                      float* Y, int64_t ldy) {
  const int64_t NG = K / G;
  for (int i = 0; i < NR; ++i)
    for (int r = 0; r < R; ++r) {
      float a = 0.f;
      for (int64_t k = 0; k < K; k += 32)
        for (int j = 0; j < 16; ++j) {
          uint8_t b = q[i * (K / 2) + k / 2 + j];
          float s = sc[i * NG + k / G], m = mn[i * NG + k / G];
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

torch::Tensor int8_linear(torch::Tensor x, torch::Tensor q, torch::Tensor s) {
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
  for_blocks(N, M, [&](int64_t n, int64_t m0, auto R, auto NR) {
    int8_rows<decltype(R)::value, decltype(NR)::value>(X + m0 * K, K, Q + n * K, S + n, Y + m0 * N + n, N);
  });
  return y;
}

torch::Tensor int4_linear(torch::Tensor x, torch::Tensor q, torch::Tensor scales, torch::Tensor mins,
                          int64_t group) {
  TORCH_CHECK(q.scalar_type() == torch::kUInt8 && q.is_contiguous(), "q must be contiguous uint8 [N, K/2]");
  const int64_t N = q.size(0), K = q.size(1) * 2;
  TORCH_CHECK(group % 32 == 0 && K % group == 0, "group must be a multiple of 32 dividing K");
  TORCH_CHECK(scales.scalar_type() == torch::kFloat32 && mins.scalar_type() == torch::kFloat32 &&
                  scales.is_contiguous() && mins.is_contiguous() && scales.size(1) == K / group,
              "scales / mins must be contiguous float32 [N, K/group]");
  check_x(x, K);
  x = x.contiguous();
  const int64_t M = x.size(0), NG = K / group;
  auto y = torch::empty({M, N}, x.options());
  const float* X = x.data_ptr<float>();
  const uint8_t* Q = q.data_ptr<uint8_t>();
  const float* SC = scales.data_ptr<float>();
  const float* MN = mins.data_ptr<float>();
  float* Y = y.data_ptr<float>();
  for_blocks(N, M, [&](int64_t n, int64_t m0, auto R, auto NR) {
    int4_rows<decltype(R)::value, decltype(NR)::value>(X + m0 * K, K, group, Q + n * (K / 2), SC + n * NG,
                                                       MN + n * NG, Y + m0 * N + n, N);
  });
  return y;
}

bool vectorized() {
#if defined(__AVX512F__)
  return true;
#else
  return false;
#endif
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("int8_linear", &int8_linear, "y = x @ (q * s[:, None]).T for int8 q, float32 x");
  m.def("int4_linear", &int4_linear, "y = x @ dequant(q).T for 4-bit codes in 32-blocks, float32 x");
  m.def("vectorized", &vectorized, "true when built with AVX-512");
}
