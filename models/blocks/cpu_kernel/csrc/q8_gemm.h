// The int8 step product of the quantized inference path (q8_forward.h): C (M, Gp) int32 = A (M, 2 Kp) x W^T, both
// int8 values in [-127, 127] held as s16; W (Gp, 2 Kp) per-output-channel quantized, packed by
// models/blocks/cpu_kernel/q8.py.
//
// Exact integer arithmetic, no saturation anywhere: both operands lie in [-127, 127], are sign-extended to s16
// and multiplied by vpmaddwd (pairs of s16 products summed into s32: at most 2 * 127 * 127 = 32258 a lane), then
// added in s32 (exact for K < 2^31 / 16129, about 133 000 inputs). vpmaddubsw, the usual u8 x s8 instruction, would
// saturate its s16 pair sums (2 * 255 * 127 > 32767) and lose exactness; on Zen 1 and Skylake it has the same
// throughput per multiply-accumulate as vpmaddwd on s16 anyway.
//
// Layouts: A row m holds its activations as s16 pairs, read as one int32 per pair p (K padded to 2 Kp with 0).
// W is packed in blocks of 8 output channels: block nb, pair p is 16 s16, [w(j,2p), w(j,2p+1)] for j = 8 nb ..
// 8 nb + 7, so one load gives the 8 lanes' pairs and one vpmaddwd with the broadcast activation pair gives 8
// channels' partial sums. Gp is a multiple of 16 (two blocks a tile). The packed weights are kept sign-extended
// (s16, half the bytes of float32) rather than as int8 widened at every load: on Zen 1 the vpmovsxbw per weight
// vector cost more than the memory it saves (measured 0.71-0.74x the time at one row, 0.83-0.92x at 64, H = 128
// and 256, s16 over s8 + vpmovsxbw).
// Without AVX2 (a build for another instruction set) the scalar loop below gives the same integers.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace birnn {
namespace q8 {

// s16 elements of one direction's packed weights of Gp channels and Kp input pairs.
inline int64_t packed_size(int gp, int kp) { return int64_t(gp) * kp * 2; }

// The portable product, the reference for the vector one (tests/test_quantize.py compares them bit for bit).
inline void gemm_scalar(int M, int Kp, int Gp, const int32_t* a, const int16_t* w, int32_t* c) {
  for (int m = 0; m < M; ++m) {
    const int16_t* am = reinterpret_cast<const int16_t*>(a + int64_t(m) * Kp);
    for (int nb = 0; nb < Gp / 8; ++nb) {
      int32_t acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      const int16_t* wb = w + int64_t(nb) * Kp * 16;
      for (int p = 0; p < Kp; ++p)
        for (int i = 0; i < 8; ++i)
          acc[i] += int32_t(am[2 * p]) * wb[p * 16 + 2 * i] + int32_t(am[2 * p + 1]) * wb[p * 16 + 2 * i + 1];
      std::memcpy(c + int64_t(m) * Gp + 8 * nb, acc, sizeof(acc));
    }
  }
}

#if defined(__AVX2__)
// MR rows x 16 channels (blocks nb, nb + 1): 2 MR accumulators, each weight vector loaded once for MR rows.
template <int MR>
inline void tile(int Kp, int Gp, const int32_t* a, const int16_t* w0, int32_t* c) {
  __m256i acc0[MR], acc1[MR];
  for (int m = 0; m < MR; ++m) acc0[m] = acc1[m] = _mm256_setzero_si256();
  const int16_t* w1 = w0 + int64_t(Kp) * 16;
  for (int p = 0; p < Kp; ++p) {
    const __m256i b0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w0 + p * 16));
    const __m256i b1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w1 + p * 16));
    for (int m = 0; m < MR; ++m) {
      const __m256i av = _mm256_set1_epi32(a[int64_t(m) * Kp + p]);
      acc0[m] = _mm256_add_epi32(acc0[m], _mm256_madd_epi16(av, b0));
      acc1[m] = _mm256_add_epi32(acc1[m], _mm256_madd_epi16(av, b1));
    }
  }
  for (int m = 0; m < MR; ++m) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(c + int64_t(m) * Gp), acc0[m]);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(c + int64_t(m) * Gp + 8), acc1[m]);
  }
}

// One row x 32 channels (blocks nb .. nb + 3): the step product of a single sequence. Four independent
// accumulators per broadcast instead of two: measured 0.79x the time of tile<1> at H = 128 on Zen 1.
inline void row_tile32(int Kp, const int32_t* a, const int16_t* w0, int32_t* c) {
  __m256i s0 = _mm256_setzero_si256(), s1 = s0, s2 = s0, s3 = s0;
  const int64_t block = int64_t(Kp) * 16;
  for (int p = 0; p < Kp; ++p) {
    const __m256i av = _mm256_set1_epi32(a[p]);
    const int16_t* wp = w0 + p * 16;
    s0 = _mm256_add_epi32(s0, _mm256_madd_epi16(av, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wp))));
    s1 = _mm256_add_epi32(s1, _mm256_madd_epi16(av, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wp + block))));
    s2 = _mm256_add_epi32(s2, _mm256_madd_epi16(av, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wp + 2 * block))));
    s3 = _mm256_add_epi32(s3, _mm256_madd_epi16(av, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wp + 3 * block))));
  }
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(c), s0);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(c + 8), s1);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(c + 16), s2);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(c + 24), s3);
}

inline void gemm_avx2(int M, int Kp, int Gp, const int32_t* a, const int16_t* w, int32_t* c) {
  if (M == 1) {
    int nb = 0;
    for (; nb + 4 <= Gp / 8; nb += 4) row_tile32(Kp, a, w + int64_t(nb) * Kp * 16, c + 8 * nb);
    if (nb < Gp / 8) tile<1>(Kp, Gp, a, w + int64_t(nb) * Kp * 16, c + 8 * nb);
    return;
  }
  // Channel tiles outside, rows inside: a tile's weights (Kp * 64 bytes, 8 KB at H = 256) stay in L1 for every row.
  for (int nb = 0; nb < Gp / 8; nb += 2) {
    const int16_t* wb = w + int64_t(nb) * Kp * 16;
    int m = 0;
    for (; m + 4 <= M; m += 4) tile<4>(Kp, Gp, a + int64_t(m) * Kp, wb, c + int64_t(m) * Gp + 8 * nb);
    const int32_t* am = a + int64_t(m) * Kp;
    int32_t* cm = c + int64_t(m) * Gp + 8 * nb;
    switch (M - m) {
      case 3: tile<3>(Kp, Gp, am, wb, cm); break;
      case 2: tile<2>(Kp, Gp, am, wb, cm); break;
      case 1: tile<1>(Kp, Gp, am, wb, cm); break;
      default: break;
    }
  }
}
#endif

// C = A x W^T on the best code this build has (scalar: force the portable loop).
inline void gemm(int M, int Kp, int Gp, const int32_t* a, const int16_t* w, int32_t* c, bool scalar = false) {
#if defined(__AVX2__)
  if (!scalar) {
    gemm_avx2(M, Kp, Gp, a, w, c);
    return;
  }
#endif
  (void)scalar;
  gemm_scalar(M, Kp, Gp, a, w, c);
}

}  // namespace q8
}  // namespace birnn
