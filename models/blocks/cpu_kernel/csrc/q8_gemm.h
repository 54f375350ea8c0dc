// The int8 step product of the quantized inference path (q8_forward.h): C (M, Gp) int32 = A (M, K) x W^T, exact,
// both operands int8 values in [-127, 127]; W (Gp, K) per-output-channel quantized, packed by
// models/blocks/cpu_kernel/q8.py. Three products give the same integers (tests/blocks/test_quantize.py checks them
// bit for bit), chosen per call (Product):
//
// kVnni (AVX-512 VNNI, the avx512 build on a CPU that has it, checked at run time): vpdpbusd multiplies u8 by s8 in
// groups of 4 and adds the 4 products to an s32 lane. The activations are stored offset, a + 128 in [1, 255] (u8),
// so each lane gets sum (a + 128) w = sum a w + 128 sum w; the kernel subtracts 128 sum_k w[j, k], precomputed per
// channel by q8.pack, at the store. Exact: vpdpbusd does not saturate (vpdpbusds would), s32 adds wrap modulo 2^32
// and the true result fits s32 (below), so the wrapped intermediate sums still give it exactly. Chosen over
// vpdpwssd on the s16 layout by measurement (Zen 4, 256-bit forms, one thread): vpdpbusd took 0.34-0.43x the
// AVX2 product's time at H = 128 and 256, M = 1, 16, 64, vpdpwssd 0.67-0.86x (4 products an instruction
// instead of 2, and half the weight bytes). 256-bit vectors: Zen 4 runs a 512-bit one as two halves anyway.
// Layout: W in blocks of 8 channels, block nb, quad p is 32 bytes [w(j, 4p .. 4p + 3)] for j = 8 nb .. 8 nb + 7;
// A row m is Kq = ceil(K / 4) quads of u8, read as one int32 per quad (padding: 128, i.e. a = 0; W pads 0).
//
// kAvx2 (and kScalar, the portable loop): both operands sign-extended to s16 and multiplied by vpmaddwd (pairs of
// s16 products summed into s32: at most 2 * 127 * 127 = 32258 a lane), then added in s32 (exact for
// K < 2^31 / 16129, about 133 000 inputs: the bound of every product). vpmaddubsw, the usual u8 x s8 instruction,
// would saturate its s16 pair sums (2 * 255 * 127 > 32767) and lose exactness; on Zen 1 and Skylake it has the same
// throughput per multiply-accumulate as vpmaddwd on s16 anyway.
// Layout: A row m holds its activations as s16 pairs, read as one int32 per pair p (K padded to 2 Kp with 0).
// W is packed in blocks of 8 output channels: block nb, pair p is 16 s16, [w(j,2p), w(j,2p+1)] for j = 8 nb ..
// 8 nb + 7, so one load gives the 8 lanes' pairs and one vpmaddwd with the broadcast activation pair gives 8
// channels' partial sums. The packed weights are kept sign-extended (s16, half the bytes of float32) rather than
// as int8 widened at every load: on Zen 1 the vpmovsxbw per weight vector cost more than the memory it saves
// (measured 0.71-0.74x the time at one row, 0.83-0.92x at 64, H = 128 and 256, s16 over s8 + vpmovsxbw).
//
// Both layouts take 4 bytes per channel and int32 of a row (a pair of s16, a quad of s8), so a row of A is Ku int32
// (Ku = Kp or Kq) and a direction's weights Gp * Ku * 4 bytes. Gp is a multiple of 16 (two blocks a tile).
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace birnn {
namespace q8 {

// The products (q8.py's PRODUCTS): the codes a call passes in Q8Args.product.
enum Product : int32_t { kScalar = 0, kAvx2 = 1, kVnni = 2 };

// Inputs per int32 of a row of A (and per 4 bytes of a channel's packed weights).
inline int unit_of(int product) { return product == kVnni ? 4 : 2; }

// Bytes of one direction's packed weights of Gp channels and Ku input units (pairs or quads).
inline int64_t packed_bytes(int gp, int ku) { return int64_t(gp) * ku * 4; }

// The portable product, the reference for the vector one (tests/blocks/test_quantize.py compares them bit for bit).
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

#if defined(__AVX512F__)
// The VNNI product (layout above). target: only this code may use vpdpbusd; best_product() calls it only on a CPU
// that has AVX512_VNNI (the rest of the avx512 build runs on any AVX-512 CPU).
#define BIRNN_Q8_VNNI __attribute__((target("avx512vnni")))

// MR rows x 16 channels (blocks nb, nb + 1), each weight vector loaded once for MR rows; comp: the 16 channels'
// offset corrections, subtracted at the store.
template <int MR>
BIRNN_Q8_VNNI inline void tile_vnni(int Kq, int Gp, const int32_t* a, const int8_t* w0, const int32_t* comp,
                                    int32_t* c) {
  __m256i acc0[MR], acc1[MR];
  for (int m = 0; m < MR; ++m) acc0[m] = acc1[m] = _mm256_setzero_si256();
  const int8_t* w1 = w0 + int64_t(Kq) * 32;
  for (int p = 0; p < Kq; ++p) {
    const __m256i b0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w0 + p * 32));
    const __m256i b1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w1 + p * 32));
    for (int m = 0; m < MR; ++m) {
      const __m256i av = _mm256_set1_epi32(a[int64_t(m) * Kq + p]);
      acc0[m] = _mm256_dpbusd_epi32(acc0[m], av, b0);
      acc1[m] = _mm256_dpbusd_epi32(acc1[m], av, b1);
    }
  }
  const __m256i k0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(comp));
  const __m256i k1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(comp + 8));
  for (int m = 0; m < MR; ++m) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(c + int64_t(m) * Gp), _mm256_sub_epi32(acc0[m], k0));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(c + int64_t(m) * Gp + 8), _mm256_sub_epi32(acc1[m], k1));
  }
}

// One row x 32 channels (blocks nb .. nb + 3): four independent accumulators per broadcast, as row_tile32.
BIRNN_Q8_VNNI inline void row_tile32_vnni(int Kq, const int32_t* a, const int8_t* w0, const int32_t* comp,
                                          int32_t* c) {
  __m256i s[4] = {_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256()};
  const int64_t block = int64_t(Kq) * 32;
  for (int p = 0; p < Kq; ++p) {
    const __m256i av = _mm256_set1_epi32(a[p]);
    const int8_t* wp = w0 + p * 32;
    for (int i = 0; i < 4; ++i)
      s[i] = _mm256_dpbusd_epi32(s[i], av, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wp + i * block)));
  }
  for (int i = 0; i < 4; ++i)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(c + 8 * i),
                        _mm256_sub_epi32(s[i], _mm256_loadu_si256(reinterpret_cast<const __m256i*>(comp + 8 * i))));
}

BIRNN_Q8_VNNI inline void gemm_vnni(int M, int Kq, int Gp, const int32_t* a, const int8_t* w, const int32_t* comp,
                                    int32_t* c) {
  if (M == 1) {
    int nb = 0;
    for (; nb + 4 <= Gp / 8; nb += 4) row_tile32_vnni(Kq, a, w + int64_t(nb) * Kq * 32, comp + 8 * nb, c + 8 * nb);
    if (nb < Gp / 8) tile_vnni<1>(Kq, Gp, a, w + int64_t(nb) * Kq * 32, comp + 8 * nb, c + 8 * nb);
    return;
  }
  for (int nb = 0; nb < Gp / 8; nb += 2) {
    const int8_t* wb = w + int64_t(nb) * Kq * 32;
    const int32_t* kb = comp + 8 * nb;
    int m = 0;
    for (; m + 4 <= M; m += 4) tile_vnni<4>(Kq, Gp, a + int64_t(m) * Kq, wb, kb, c + int64_t(m) * Gp + 8 * nb);
    const int32_t* am = a + int64_t(m) * Kq;
    int32_t* cm = c + int64_t(m) * Gp + 8 * nb;
    switch (M - m) {
      case 3: tile_vnni<3>(Kq, Gp, am, wb, kb, cm); break;
      case 2: tile_vnni<2>(Kq, Gp, am, wb, kb, cm); break;
      case 1: tile_vnni<1>(Kq, Gp, am, wb, kb, cm); break;
      default: break;
    }
  }
}
#endif

// The fastest product this build and this CPU have (kVnni only from the avx512 build on a VNNI CPU).
inline int best_product() {
#if defined(__AVX512F__)
  if (__builtin_cpu_supports("avx512vnni")) return kVnni;
#endif
#if defined(__AVX2__)
  return kAvx2;
#else
  return kScalar;
#endif
}

// C = A x W^T by `product` (callers pass one best_product() allows: q8.py checks; comp: kVnni's corrections).
inline void gemm(int product, int M, int Ku, int Gp, const int32_t* a, const void* w, const int32_t* comp,
                 int32_t* c) {
#if defined(__AVX512F__)
  if (product == kVnni) {
    gemm_vnni(M, Ku, Gp, a, static_cast<const int8_t*>(w), comp, c);
    return;
  }
#endif
#if defined(__AVX2__)
  if (product == kAvx2) {
    gemm_avx2(M, Ku, Gp, a, static_cast<const int16_t*>(w), c);
    return;
  }
#endif
  (void)comp;
  gemm_scalar(M, Ku, Gp, a, static_cast<const int16_t*>(w), c);
}

}  // namespace q8
}  // namespace birnn
