// The int8 step product of the quantized inference path (q8_forward.h): C (M, Gp) int32 = A (M, K) x W^T, exact,
// both operands int8 values in [-127, 127]; W (Gp, K) per-output-channel quantized, packed by
// models/blocks/cpu_kernel/q8.py. Four products give the same integers (tests/blocks/test_quantize.py checks them
// bit for bit), chosen per call (Product):
//
// kVnni (AVX-512 VNNI in the avx512 build, AVX-VNNI in the avx2 build, on a CPU that has it, checked at run time):
// vpdpbusd multiplies u8 by s8 in groups of 4 and adds the 4 products to an s32 lane. The activations are stored
// offset, a + 128 in [1, 255] (u8), so each lane gets sum (a + 128) w = sum a w + 128 sum w; the sums start from k[j] =
// -128 sum_k w[j, k], precomputed per channel by q8.pack. Exact: vpdpbusd does not saturate (vpdpbusds would), s32 adds
// wrap modulo 2^32 and the true result fits s32 (below), so the wrapped intermediate sums still give it exactly. Chosen
// over vpdpwssd on the s16 layout by measurement (Zen 4, one thread): vpdpbusd took 0.34-0.43x the AVX2 product's time
// at H = 128 and 256, M = 1, 16, 64, vpdpwssd 0.67-0.86x (4 products an instruction instead of 2, and half the weight
// bytes). 512-bit vectors: a Xeon with two 512-bit FMA ports does twice the products a cycle of the 256-bit form; Zen 4
// runs a 512-bit one as two halves, the same products a cycle in half the instructions.
// Layout: W in blocks of 16 channels, block nb, quad p is 64 bytes [w(j, 4p .. 4p + 3)] for j = 16 nb .. 16 nb + 15;
// A row m is Kq = ceil(K / 4) quads of u8, read as one int32 per quad (padding: 128, i.e. a = 0; W pads 0).
//
// kAmx (AMX-INT8 tiles, Sapphire Rapids and later, where amx.h grants the tile state): kVnni's layout and
// corrections; 16 quads of a block (1 KB) are exactly the tile B operand _tile_dpbusd reads (16 rows of 16
// channels' quads), which multiplies u8 by s8 and adds without saturation as vpdpbusd does. Rows in whole 16-row
// tiles and quads in whole 16-quad chunks run on tiles, the rest on vpdpbusd.
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
// (Ku = Kp or Kq) and a direction's weights Gp * Ku * 4 bytes. Gp is a multiple of 16 (a 16-channel block; two
// 8-channel blocks of the s16 layout).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>

#if defined(__AVX2__)
#include <cpuid.h>
#include <immintrin.h>
#endif

#include "amx.h"

namespace birnn {
namespace q8 {

// The products (q8.py's PRODUCTS): the codes a call passes in Q8Args.product.
enum Product : int32_t { kScalar = 0, kAvx2 = 1, kVnni = 2, kAmx = 3 };

// Inputs per int32 of a row of A (and per 4 bytes of a channel's packed weights).
inline int unit_of(int product) { return product == kVnni || product == kAmx ? 4 : 2; }

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

// The VNNI product (layout above). target: only this code may use vpdpbusd; best_product() offers it only on a CPU
// that has it: AVX512_VNNI in the avx512 build, AVX-VNNI (the same instruction on ymm, VEX-encoded: Intel's cores
// from Alder Lake and Sierra Forest on, AMD's from Zen 5) in the avx2 build, whose other code runs on any AVX2 CPU.
// AVX-VNNI needs GCC 11 or Clang 12; an older compiler builds the avx2 library without it (kAvx2 then).
#if defined(__AVX512F__)
#define BIRNN_Q8_VNNI __attribute__((target("avx512vnni")))
#define BIRNN_Q8_AMX __attribute__((target("avx512vnni,amx-tile,amx-int8")))
#elif defined(__AVX2__) && ((defined(__clang__) && __clang_major__ >= 12) || \
                            (!defined(__clang__) && defined(__GNUC__) && __GNUC__ >= 11))
#define BIRNN_Q8_VNNI __attribute__((target("avxvnni")))
#define BIRNN_Q8_AVX_VNNI 1
#endif

#if defined(BIRNN_Q8_VNNI)

// The two vector widths of the VNNI product: a 16-channel block is one 512-bit vector or two 256-bit ones (kParts),
// each part kLanes channels.
#if defined(__AVX512F__)
struct Zmm {
  using V = __m512i;
  static constexpr int kParts = 1, kLanes = 16;
  BIRNN_Q8_VNNI static V load(const void* p) { return _mm512_loadu_si512(p); }
  BIRNN_Q8_VNNI static void store(void* p, V v) { _mm512_storeu_si512(p, v); }
  BIRNN_Q8_VNNI static V splat(int32_t x) { return _mm512_set1_epi32(x); }
  BIRNN_Q8_VNNI static V dot(V acc, V a, V b) { return _mm512_dpbusd_epi32(acc, a, b); }
};
#endif
struct Ymm {
  using V = __m256i;
  static constexpr int kParts = 2, kLanes = 8;
  BIRNN_Q8_VNNI static V load(const void* p) { return _mm256_loadu_si256(static_cast<const V*>(p)); }
  BIRNN_Q8_VNNI static void store(void* p, V v) { _mm256_storeu_si256(static_cast<V*>(p), v); }
  BIRNN_Q8_VNNI static V splat(int32_t x) { return _mm256_set1_epi32(x); }
#if defined(BIRNN_Q8_AVX_VNNI)
  BIRNN_Q8_VNNI static V dot(V acc, V a, V b) { return _mm256_dpbusd_avx_epi32(acc, a, b); }
#else
  BIRNN_Q8_VNNI static V dot(V acc, V a, V b) { return _mm256_dpbusd_epi32(acc, a, b); }
#endif
};

// MR rows x NB blocks of 16 channels over quads [p0, Kq), in vectors W: C = k + A W^T, or with ACC C += A W^T. a, c:
// the first row (strides Kq int32 and Gp int32); w0: the first block; k: its 16 NB offset corrections (not read
// with ACC).
template <typename W, int MR, int NB, bool ACC>
BIRNN_Q8_VNNI inline void tile_vnni(int p0, int Kq, int Gp, const int32_t* a, const int8_t* w0, const int32_t* k,
                                    int32_t* c) {
  constexpr int N = NB * W::kParts;  // vectors a row: part h of block j is vector j * kParts + h
  auto lane = [](int v) { return 16 * (v / W::kParts) + W::kLanes * (v % W::kParts); };  // its first channel
  typename W::V acc[MR][N];
  for (int i = 0; i < MR; ++i)
    for (int v = 0; v < N; ++v) acc[i][v] = W::load(ACC ? c + int64_t(i) * Gp + lane(v) : k + lane(v));
  const int64_t block = int64_t(Kq) * 64;
  for (int p = p0; p < Kq; ++p) {
    typename W::V b[N];
    for (int v = 0; v < N; ++v) b[v] = W::load(w0 + (v / W::kParts) * block + 64 * int64_t(p) + 4 * (lane(v) % 16));
    for (int i = 0; i < MR; ++i) {
      const typename W::V av = W::splat(a[int64_t(i) * Kq + p]);
      for (int v = 0; v < N; ++v) acc[i][v] = W::dot(acc[i][v], av, b[v]);
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int v = 0; v < N; ++v) W::store(c + int64_t(i) * Gp + lane(v), acc[i][v]);
}

// MR rows over blocks [n0, n1): groups of NB, then one at a time.
template <typename W, int MR, int NB, bool ACC>
BIRNN_Q8_VNNI inline void rows_vnni(int p0, int Kq, int Gp, const int32_t* a, const int8_t* w, const int32_t* k,
                                    int32_t* c, int n0, int n1) {
  const int64_t block = int64_t(Kq) * 64;
  int n = n0;
  for (; n + NB <= n1; n += NB) tile_vnni<W, MR, NB, ACC>(p0, Kq, Gp, a, w + n * block, k + 16 * n, c + 16 * n);
  for (; n < n1; ++n) tile_vnni<W, MR, 1, ACC>(p0, Kq, Gp, a, w + n * block, k + 16 * n, c + 16 * n);
}

// C (M, Gp) = k + A W^T over quads [p0, Kq) (ACC: C += A W^T) in vectors W. One row: 8 vectors at a time
// (independent sums per broadcast). More rows: slices of RB blocks outside (their weights, 64 RB Kq bytes, stay in
// L1), 4 rows inside: 16 zmm or 8 ymm sums.
template <typename W, bool ACC>
BIRNN_Q8_VNNI inline void gemm_vnni_in(int M, int Kq, int Gp, const int32_t* a, const int8_t* w, const int32_t* k,
                                       int32_t* c, int p0) {
  constexpr int RB = W::kParts == 1 ? 4 : 1;
  const int blocks = Gp / 16;
  if (M == 1) {
    rows_vnni<W, 1, 8 / W::kParts, ACC>(p0, Kq, Gp, a, w, k, c, 0, blocks);
    return;
  }
  for (int n = 0; n < blocks; n += RB) {
    const int e = std::min(blocks, n + RB);
    int m = 0;
    for (; m + 4 <= M; m += 4)
      rows_vnni<W, 4, RB, ACC>(p0, Kq, Gp, a + int64_t(m) * Kq, w, k, c + int64_t(m) * Gp, n, e);
    const int32_t* am = a + int64_t(m) * Kq;
    int32_t* cm = c + int64_t(m) * Gp;
    switch (M - m) {
      case 3: rows_vnni<W, 3, RB, ACC>(p0, Kq, Gp, am, w, k, cm, n, e); break;
      case 2: rows_vnni<W, 2, RB, ACC>(p0, Kq, Gp, am, w, k, cm, n, e); break;
      case 1: rows_vnni<W, 1, RB, ACC>(p0, Kq, Gp, am, w, k, cm, n, e); break;
      default: break;
    }
  }
}

#if defined(__AVX512F__)
// Whether the VNNI product runs 512-bit vectors here: measured 1.45x the 256-bit form's multiply-adds a second on
// a Xeon (family 6 model 167: two 512-bit ports), and no consistent gain on Zen 4 (0.86-1.85x the time of the
// 256-bit form at load 7: it splits a 512-bit operation into two halves), so AMD keeps the 256-bit form.
inline bool wide_vnni() {
  static const bool wide = [] {
    __builtin_cpu_init();
    return !__builtin_cpu_is("amd");
  }();
  return wide;
}

// The VNNI product in 512-bit vectors (wide) or 256-bit ones.
template <bool ACC>
BIRNN_Q8_VNNI inline void gemm_vnni(bool wide, int M, int Kq, int Gp, const int32_t* a, const int8_t* w,
                                    const int32_t* k, int32_t* c, int p0 = 0) {
  if (wide)
    gemm_vnni_in<Zmm, ACC>(M, Kq, Gp, a, w, k, c, p0);
  else
    gemm_vnni_in<Ymm, ACC>(M, Kq, Gp, a, w, k, c, p0);
}

// AMX int8 (kAmx): C (M, Gp) = k + A (M, 16 chunks quads) W^T on tiles, M a multiple of 16: amx.h's tile_gemm on
// u8 x s8 quads (a 64-byte row of A holds 16; 16 quads of a packed block, 1 KB, are exactly a tile of W), every row
// of a tile starting from its blocks' offset corrections k.
BIRNN_Q8_AMX inline void amx_gemm(int M, int chunks, int Kq, int Gp, const int32_t* a, const int8_t* w,
                                  const int32_t* k, int32_t* c) {
  amx::tile_gemm<true, false>(M, chunks, reinterpret_cast<const char*>(a), 4 * int64_t(Kq),
                              reinterpret_cast<const char*>(w), 64 * int64_t(Kq), Gp / 16, reinterpret_cast<char*>(c),
                              4 * int64_t(Gp), reinterpret_cast<const char*>(k));
}

// The AMX product: the rows up to the last multiple of 16 over the quads up to the last multiple of 16 on tiles,
// their remaining quads added on vpdpbusd, the remaining rows on vpdpbusd (the same packed weights and integers).
BIRNN_Q8_AMX inline void gemm_amx(bool wide, int M, int Kq, int Gp, const int32_t* a, const int8_t* w,
                                  const int32_t* k, int32_t* c) {
  const int chunks = Kq / 16, tiled = chunks > 0 ? M / 16 * 16 : 0;
  if (tiled > 0) {
    amx_gemm(tiled, chunks, Kq, Gp, a, w, k, c);
    if (16 * chunks < Kq) gemm_vnni<true>(wide, tiled, Kq, Gp, a, w, k, c, 16 * chunks);
  }
  if (tiled < M) gemm_vnni<false>(wide, M - tiled, Kq, Gp, a + int64_t(tiled) * Kq, w, k, c + int64_t(tiled) * Gp);
}
#else
// The AVX-VNNI product: 256-bit vectors only.
template <bool ACC>
BIRNN_Q8_VNNI inline void gemm_vnni(int M, int Kq, int Gp, const int32_t* a, const int8_t* w, const int32_t* k,
                                    int32_t* c) {
  gemm_vnni_in<Ymm, ACC>(M, Kq, Gp, a, w, k, c, 0);
}
#endif  // __AVX512F__
#endif  // BIRNN_Q8_VNNI

// Whether the AMX product may run here: the avx512 build, AVX512_VNNI (its tails) and amx.h's grant of AMX-INT8.
inline bool amx_usable() {
#if defined(__AVX512F__)
  static const bool usable = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512vnni") && amx::granted(amx::kInt8);
  }();
  return usable;
#else
  return false;
#endif
}

// The fastest product this build and this CPU have (kAmx only from the avx512 build, kVnni from the avx512 build on
// AVX512_VNNI and from the avx2 build on AVX-VNNI).
inline int best_product() {
#if defined(__AVX512F__)
  if (amx_usable()) return kAmx;
  if (__builtin_cpu_supports("avx512vnni")) return kVnni;
#elif defined(BIRNN_Q8_AVX_VNNI)
  static const bool avx_vnni = [] {  // CPUID.(EAX=7, ECX=1):EAX bit 4 (compilers' cpu builtins name it differently)
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    return __get_cpuid_count(7, 1, &eax, &ebx, &ecx, &edx) && (eax & (1u << 4)) != 0;
  }();
  if (avx_vnni) return kVnni;
#endif
#if defined(__AVX2__)
  return kAvx2;
#else
  return kScalar;
#endif
}

// C = A x W^T by `product` (callers pass one best_product() allows: q8.py checks; k: kVnni's and kAmx's offset
// corrections). bits: the avx512 build's VNNI vectors, 0 = wide_vnni()'s choice for this CPU, 256 or 512 (tests run
// both; the avx2 build has 256 only, and q8.py refuses 512 there).
inline void gemm(int product, int M, int Ku, int Gp, const int32_t* a, const void* w, const int32_t* k, int32_t* c,
                 int bits = 0) {
#if defined(__AVX512F__)
  const bool wide = bits == 0 ? wide_vnni() : bits == 512;
  if (product == kAmx) {
    gemm_amx(wide, M, Ku, Gp, a, static_cast<const int8_t*>(w), k, c);
    return;
  }
  if (product == kVnni) {
    gemm_vnni<false>(wide, M, Ku, Gp, a, static_cast<const int8_t*>(w), k, c);
    return;
  }
#else
  (void)bits;
#if defined(BIRNN_Q8_AVX_VNNI)
  if (product == kVnni) {
    gemm_vnni<false>(M, Ku, Gp, a, static_cast<const int8_t*>(w), k, c);
    return;
  }
#endif
#endif
#if defined(__AVX2__)
  if (product == kAvx2) {
    gemm_avx2(M, Ku, Gp, a, static_cast<const int16_t*>(w), c);
    return;
  }
#endif
  (void)k;
  gemm_scalar(M, Ku, Gp, a, static_cast<const int16_t*>(w), c);
}

}  // namespace q8
}  // namespace birnn
