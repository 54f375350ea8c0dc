// bfloat16 inference of a whole bidirectional stack (models/blocks/cpu_kernel/bf16.py): bf16 weights and inputs,
// float32 accumulation, float32 states and gate math. The products run on AVX512_BF16's vdpbf16ps (16 lanes, each
// adding two bf16 x bf16 products to a float32 sum); everything else is ordinary code of the build.
//
// The math, mirrored by bf16.py's `reference` (float64 products of the same bf16 values): the input rows x_t and the
// state rows h_{t-1} are rounded to bf16 (round to nearest even, as torch's .to(torch.bfloat16)) before their
// product; the weights were rounded once when packed; the biases stay float32 (b_ih + b_hh folded in float32 where
// the cell adds both to the same pre-activations: LSTM, reset-before GRU, RNN). Layer outputs, merges and states are
// float32; bf16.py rounds the returned output and states to bf16. vdpbf16ps treats bf16 denormals as zero (inputs
// below 1.2e-38: no trained weight or state is that small and nonzero).
//
// Only the avx512 build has this path, and only a CPU reporting AVX512_BF16 runs it (birnn_bf16_supported): the
// product is compiled with a target attribute for that one function, so the library still loads and runs on a CPU
// without it (and the avx2 build has no bf16 path at all).
//
// AMX tiles (Sapphire Rapids and later): where the CPU reports AMX-TILE and AMX-BF16 and Linux grants this process
// the tile state (birnn_bf16_amx_supported: arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)), and the caller
// asks for it (Bf16Args.amx_min_batch > 0), the products run on _tile_dpbf16ps where they fill 16-row tiles: the
// input product over a chunk's T*B rows, and the step product h (B x H) @ W_hh^T when B >= amx_min_batch. The rows
// past the last multiple of 16 and the pairs past the last multiple of 16 run on vdpbf16ps, which reads the same
// packed weights: a block's Kp rows of 16 channel pairs (64 bytes) are exactly AMX's VNNI B operand (16 pairs x 16
// channels a tile), so the weights are packed once for both. The tile instructions are compiled with a target
// attribute for their functions only (amx-tile, amx-bf16), as the vdpbf16ps code is.
//
// Entry point: birnn_bf16_forward_stack(const Bf16Args*), every layer and merge of an inference call (merge codes
// as forward.h's Merge). Bf16Args is mirrored by bf16.py (checked by birnn_bf16_args_layout).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "activations.h"  // defines BIRNN_VECTOR
#include "aligned.h"
#include "amx.h"
#include "args.h"
#include "row_order.h"
#include "stack_driver.h"

#if defined(BIRNN_VECTOR) && BIRNN_VECTOR == 16
#include <immintrin.h>
#define BIRNN_BF16 1
#define BIRNN_BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16,fma")))
#define BIRNN_AMX_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16,fma,amx-tile,amx-bf16")))
#endif

namespace birnn {
namespace bf16 {

// The cells of the bf16 path: the float kernel's codes, and the Elman RNNs as the int8 path numbers them.
enum Cell : int32_t { kLstm = 0, kGru = 1, kGruResetBefore = 2, kRnnTanh = 3, kRnnRelu = 4 };

inline int gates_of(int cell) { return cell == kLstm ? 4 : cell == kGru || cell == kGruResetBefore ? 3 : 1; }
// Every gate block is padded to Hp = H rounded up to 16: gate k, unit j is channel k * Hp + j, so each gate block
// starts on a 16-channel block of the packed weights.
inline int padded(int h) { return (h + 15) / 16 * 16; }

// Layouts (T steps, B rows, H hidden, L layers, Hp = padded(H), Gp = gates * Hp, Kp = ceil(K / 2)):
//   x (T, B, F) float32; lengths (B,) int64 or null (right padding); h0, c0, h_n, c_n (2L, B, H) float32 (c: LSTM
//   only, else null); out (T, B, 2H) after a last concat/None, else (T, B, H), float32; input_sizes, merges (L,).
//   weights: 4 addresses a layer: w_ih (2, Gp / 16, Kp_in, 16, 2) bf16, b_ih (2, Gp) float32 or 0 (b_ih + b_hh but
//   for the GRU), w_hh (2, Gp / 16, Kp_h, 16, 2) bf16, b_hh (2, Gp) float32 (GRU only: r gates its n block) or 0.
//   Packed block nb, pair p holds [w(c, 2p), w(c, 2p + 1)] for the 16 channels c = 16 nb .. 16 nb + 15 (zero beyond
//   H in each gate block and beyond K).
//   amx_min_batch: 0 = vdpbf16ps only; else AMX tiles for the input products and for the step products at
//   B >= amx_min_batch (ignored where birnn_bf16_amx_supported() is 0).
struct Bf16Args {
  int32_t cell, steps, batch, hidden, layers, threads;
  const float* x;
  const int64_t* lengths;
  const float* h0;
  const float* c0;
  float* out;
  float* h_n;
  float* c_n;
  const int32_t* input_sizes;
  const int32_t* merges;
  const int64_t* weights;
  int32_t amx_min_batch;
};

// float32 -> bf16 bits, round to nearest even (torch's rule; NaN -> the quiet NaN torch gives).
inline uint16_t to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;
  return uint16_t((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

#ifdef BIRNN_BF16
// K floats -> 2 Kp bf16 (zero padded), 16 at a time on vcvtneps2bf16 (round to nearest even, as to_bf16). It flushes
// denormal inputs to zero and keeps a NaN's payload where to_bf16 gives 0x7fc0; both feed only the products, which
// treat bf16 denormals as zero and give NaN for any NaN, so the products are the same as from to_bf16's bits (but
// for a float denormal that to_bf16 rounds up to the smallest normal, 1.2e-38: a term of that size, not zero).
BIRNN_BF16_TARGET inline void round_row(const float* v, int K, int Kp, uint16_t* q) {
  int j = 0;
  for (; j + 16 <= K; j += 16)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + j), (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(v + j)));
  if (j < K) {
    const __mmask16 rest = __mmask16((1u << (K - j)) - 1u);
    _mm256_mask_storeu_epi16(q + j, rest, (__m256i)_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(rest, v + j)));
  }
  for (j = K; j < 2 * Kp; ++j) q[j] = 0;
}
#else
// K floats -> 2 Kp bf16 (zero padded).
inline void round_row(const float* v, int K, int Kp, uint16_t* q) {
  for (int j = 0; j < K; ++j) q[j] = to_bf16(v[j]);
  for (int j = K; j < 2 * Kp; ++j) q[j] = 0;
}
#endif

#ifdef BIRNN_BF16
// MR rows x NB blocks of 16 channels: C (+)= A @ W^T over np pairs. a: row stride lda bf16; w: the first block,
// blocks `block` bf16 apart; c: row stride ldc floats; bias (not ACC, or null): the first block's 16 floats, the
// sums' start instead of zero. The accumulators stay in registers.
template <int MR, int NB, bool ACC>
BIRNN_BF16_TARGET inline void tile(int np, const uint16_t* a, int64_t lda, const uint16_t* w, int64_t block, float* c,
                                   int64_t ldc, const float* bias) {
  __m512 acc[MR][NB];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NB; ++j)
      acc[i][j] = ACC    ? _mm512_loadu_ps(c + i * ldc + 16 * j)
                  : bias ? _mm512_loadu_ps(bias + 16 * j)
                         : _mm512_setzero_ps();
  for (int p = 0; p < np; ++p) {
    __m512bh b[NB];
    for (int j = 0; j < NB; ++j) b[j] = (__m512bh)_mm512_loadu_si512(w + j * block + 32 * int64_t(p));
    for (int i = 0; i < MR; ++i) {
      int32_t pair;
      std::memcpy(&pair, a + i * lda + 2 * int64_t(p), 4);
      const __m512bh ai = (__m512bh)_mm512_set1_epi32(pair);
      for (int j = 0; j < NB; ++j) acc[i][j] = _mm512_dpbf16_ps(acc[i][j], ai, b[j]);
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NB; ++j) _mm512_storeu_ps(c + i * ldc + 16 * j, acc[i][j]);
}

// MR rows over blocks [n0, n1): groups of NB, then one at a time.
template <int MR, int NB, bool ACC>
BIRNN_BF16_TARGET inline void row_blocks(int np, const uint16_t* a, int64_t lda, const uint16_t* w, int64_t block,
                                         int n0, int n1, float* c, int64_t ldc, const float* bias) {
  int n = n0;
  for (; n + NB <= n1; n += NB)
    tile<MR, NB, ACC>(np, a, lda, w + n * block, block, c + 16 * n, ldc, bias ? bias + 16 * n : nullptr);
  for (; n < n1; ++n)
    tile<MR, 1, ACC>(np, a, lda, w + n * block, block, c + 16 * n, ldc, bias ? bias + 16 * n : nullptr);
}

// C (M, 16 (n1 - n0)) (+)= A (M, pairs p0 .. Kp) @ W[blocks n0 .. n1, the same pairs]^T; c (and bias: added to
// every row, not ACC; or null) points at block n0's first channel. A slice of blocks of about 256 KB at a time,
// every row over it before the next: the weights come from memory once a call.
template <bool ACC>
BIRNN_BF16_TARGET void gemm(int M, int Kp, const uint16_t* a, int64_t lda, const uint16_t* w, int n0, int n1,
                            float* c, int64_t ldc, int p0 = 0, const float* bias = nullptr) {
  const int64_t block = 32 * int64_t(Kp);
  const int np = Kp - p0;
  a += 2 * int64_t(p0);
  w += 32 * int64_t(p0);
  const int step = std::max(4, int(262144 / (64 * int64_t(std::max(1, np)))));
  for (int s = n0; s < n1; s += step) {
    const int e = std::min(n1, s + step);
    float* cs = c - 16 * int64_t(n0);  // row_blocks adds 16 n for block n
    const float* bs = bias ? bias - 16 * int64_t(n0) : nullptr;
    int m = 0;
    for (; m + 4 <= M; m += 4) row_blocks<4, 4, ACC>(np, a + m * lda, lda, w, block, s, e, cs + m * ldc, ldc, bs);
    switch (M - m) {
      case 1: row_blocks<1, 8, ACC>(np, a + m * lda, lda, w, block, s, e, cs + m * ldc, ldc, bs); break;
      case 2: row_blocks<2, 6, ACC>(np, a + m * lda, lda, w, block, s, e, cs + m * ldc, ldc, bs); break;
      case 3: row_blocks<3, 4, ACC>(np, a + m * lda, lda, w, block, s, e, cs + m * ldc, ldc, bs); break;
      default: break;
    }
  }
}

// C (M, 16 (n1 - n0)) (+)= A (M, 32 chunks bf16) @ W[blocks n0 .. n1)^T on tiles (amx.h's tile_gemm on bf16
// pairs: a 64-byte row of A or of a block of W holds 16), M a multiple of 16, c (and bias, as gemm's) at block n0.
template <bool ACC>
BIRNN_AMX_TARGET inline void amx_gemm(int M, int chunks, const uint16_t* a, int64_t lda, const uint16_t* w, int Kp,
                                      int n0, int n1, float* c, int64_t ldc, const float* bias) {
  const int64_t block = 64 * int64_t(Kp);  // bytes of a block: Kp pairs of 16 channels
  amx::tile_gemm<false, ACC>(M, chunks, reinterpret_cast<const char*>(a), 2 * lda,
                             reinterpret_cast<const char*>(w) + n0 * block, block, n1 - n0,
                             reinterpret_cast<char*>(c), 4 * ldc, reinterpret_cast<const char*>(bias));
}
#endif

// C (M, 16 (n1 - n0)) (+)= A (M, 2 Kp) @ W[blocks n0 .. n1)^T (c at block n0's first channel; bias, not accumulate,
// or null: 16 (n1 - n0) floats each row's sums start from, as gemm's). With `amx` (and at least
// 16 pairs): the rows up to the last multiple of 16 over the pairs up to the last multiple of 16 on tiles, their
// remaining pairs added on vdpbf16ps, the remaining rows on vdpbf16ps; without: every product on vdpbf16ps.
inline void product(bool amx, bool accumulate, int M, int Kp, const uint16_t* a, int64_t lda, const uint16_t* w,
                    int n0, int n1, float* c, int64_t ldc, const float* bias = nullptr) {
#ifdef BIRNN_BF16
  const int chunks = Kp / 16, tiled = amx && chunks > 0 ? M / 16 * 16 : 0;
  if (tiled > 0) {
    if (accumulate)
      amx_gemm<true>(tiled, chunks, a, lda, w, Kp, n0, n1, c, ldc, nullptr);
    else
      amx_gemm<false>(tiled, chunks, a, lda, w, Kp, n0, n1, c, ldc, bias);
    if (16 * chunks < Kp) gemm<true>(tiled, Kp, a, lda, w, n0, n1, c, ldc, 16 * chunks);
  }
  if (tiled < M) {
    const uint16_t* ar = a + tiled * lda;
    float* cr = c + tiled * ldc;
    if (accumulate)
      gemm<true>(M - tiled, Kp, ar, lda, w, n0, n1, cr, ldc);
    else
      gemm<false>(M - tiled, Kp, ar, lda, w, n0, n1, cr, ldc, 0, bias);
  }
#else
  (void)amx, (void)accumulate, (void)M, (void)Kp, (void)a, (void)lda, (void)w, (void)n0, (void)n1, (void)c, (void)ldc;
  (void)bias;
#endif
}

// Whether tile instructions may run here: the library has the bf16 path, the CPU has AVX512_BF16, AMX-TILE and
// AMX-BF16, and Linux grants this process the tile state (amx::granted). direction() asks this too and ignores
// amx_min_batch where it is false.
inline bool amx_granted() {
#ifdef BIRNN_BF16
  static const bool granted = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512bf16") && amx::granted(amx::kBf16);
  }();
  return granted;
#else
  return false;
#endif
}

// Scratch of one thread, kept across calls (first-touch page faults of fresh buffers cost more than small steps), on
// cache lines (aligned.h): the row strides below are whole lines, so no tile or vector row spans two.
struct Buffers {
  LineVector<uint16_t> qx, qh, qr;
  LineVector<float> gx, gh, tmp;
};
inline Buffers& buffers() {
  thread_local Buffers b;
  return b;
}
using stack::sized;

// Direction d of layer l: input `in` (T, B, F) float32, raw output (T, B, 2, H).
inline void direction(const Bf16Args& S, int l, int d, const float* in, int F, float* raw) {
  const int T = S.steps, B = S.batch, H = S.hidden, Hp = padded(H), cell = S.cell, gates = gates_of(cell);
  const int Gp = gates * Hp, blocks = Gp / 16, Kx = (F + 1) / 2, Kh = (H + 1) / 2;
  const int64_t* w = S.weights + 4 * int64_t(l);
  const uint16_t* wi = reinterpret_cast<const uint16_t*>(w[0]) + int64_t(d) * Gp * 2 * Kx;
  const float* bi = w[1] ? reinterpret_cast<const float*>(w[1]) + int64_t(d) * Gp : nullptr;
  const uint16_t* wh = reinterpret_cast<const uint16_t*>(w[2]) + int64_t(d) * Gp * 2 * Kh;
  const float* bh = w[3] ? reinterpret_cast<const float*>(w[3]) + int64_t(d) * Gp : nullptr;
  const int64_t state = (int64_t(2) * l + d) * B * H;
  float* h = S.h_n + state;
  float* c = cell == kLstm ? S.c_n + state : nullptr;
  std::memcpy(h, S.h0 + state, sizeof(float) * B * H);
  if (c) std::memcpy(c, S.c0 + state, sizeof(float) * B * H);
  // Projections in chunks of about 256 rows (one product each, from the bias), read by the steps of the chunk.
  const int chunk = std::max(1, std::min(T, 256 / std::max(1, B)));
  // Row strides one cache line past the rows: the rows of a tile (16 of them) would otherwise lie a power of two
  // apart (Gp floats, 2 Kp bf16, for the usual sizes) and share a few L1 sets.
  const int64_t ldg = Gp + 16, ldx = 2 * int64_t(Kx) + 32, ldh = 2 * int64_t(Kh) + 32;
  Buffers& buf = buffers();
  uint16_t* qx = sized(buf.qx, int64_t(chunk) * B * ldx);
  float* gx = sized(buf.gx, int64_t(chunk) * B * ldg);
  uint16_t* qh = sized(buf.qh, int64_t(B) * ldh);
  uint16_t* qr = sized(buf.qr, cell == kGruResetBefore ? int64_t(B) * ldh : 1);
  float* gh = sized(buf.gh, cell == kGru ? int64_t(B) * ldg : 1);
  float* tmp = sized(buf.tmp, H);
  // The step product accumulates onto the projected rows, but for the GRU (r gates W_hn h + b_hn: kept apart) and
  // the reset-before GRU (its n block waits for r * h).
  const int first_blocks = cell == kGruResetBefore ? 2 * Hp / 16 : blocks;
  // Tiles for the input products (their rows: a chunk of steps), for the step products only from amx_min_batch
  // rows (below it most of a 16-row tile would be padding).
  const bool amx_in = S.amx_min_batch > 0 && amx_granted(), amx_step = amx_in && B >= S.amx_min_batch;
  int chunk_start = 0;
  const StepRows active(S.lengths, T, 0, B);  // sorted lengths (row_order.h): a step's valid rows are a prefix
  for (int s = 0; s < T; ++s) {
    const int t = d == 0 ? s : T - 1 - s;
    if (s % chunk == 0) {
      const int n = std::min(chunk, T - s);
      chunk_start = d == 0 ? s : T - s - n;
      const float* xs = in + int64_t(chunk_start) * B * F;
      for (int64_t r = 0; r < int64_t(n) * B; ++r) round_row(xs + r * F, F, Kx, qx + r * ldx);
      product(amx_in, false, n * B, Kx, qx, ldx, wi, 0, blocks, gx, ldg, bi);  // the sums start from the bias
    }
    float* g0 = gx + int64_t(t - chunk_start) * B * ldg;  // this step's B rows of pre-activations
    // The step products' rows: the valid ones (the padded ones after them are skipped below); on tiles up to the
    // end of the 16-row tile holding the last valid row (the rows past a whole tile would take vdpbf16ps, slower
    // than the tile's padded rows, which are computed and never read).
    const int rows = amx_step ? std::min(B, (active.at(t) + 15) / 16 * 16) : active.at(t);
    for (int b = 0; b < rows; ++b) round_row(h + int64_t(b) * H, H, Kh, qh + b * ldh);
    if (rows > 0 && cell == kGru)
      product(amx_step, false, rows, Kh, qh, ldh, wh, 0, blocks, gh, ldg);
    else if (rows > 0)
      product(amx_step, true, rows, Kh, qh, ldh, wh, 0, first_blocks, g0, ldg);
    if (rows > 0 && cell == kGruResetBefore) {  // r, then (r * h) @ W_hn^T onto the n block
      for (int b = 0; b < rows; ++b) {
        float* g = g0 + b * ldg;
        const float* hb = h + int64_t(b) * H;
        sigmoid_(g, H);
        for (int j = 0; j < H; ++j) tmp[j] = g[j] * hb[j];
        round_row(tmp, H, Kh, qr + b * ldh);
      }
      product(amx_step, true, rows, Kh, qr, ldh, wh, 2 * Hp / 16, blocks, g0 + 2 * Hp, ldg);
    }
    for (int b = 0; b < B; ++b) {
      float* o = raw + ((int64_t(t) * B + b) * 2 + d) * H;
      if (S.lengths != nullptr && t >= S.lengths[b]) {
        std::memset(o, 0, sizeof(float) * H);
        continue;
      }
      float* g = g0 + b * ldg;
      float* hb = h + int64_t(b) * H;
      if (cell == kLstm) {
        float* cb = c + int64_t(b) * H;
        sigmoid_(g, 2 * Hp);  // i, f (the padding lanes too: contiguous)
        tanh_(g + 2 * Hp, H);
        sigmoid_(g + 3 * Hp, H);
        for (int j = 0; j < H; ++j) tmp[j] = cb[j] = g[Hp + j] * cb[j] + g[j] * g[2 * Hp + j];
        tanh_(tmp, H);
        for (int j = 0; j < H; ++j) o[j] = hb[j] = g[3 * Hp + j] * tmp[j];
      } else if (cell == kGru || cell == kGruResetBefore) {
        if (cell == kGru) {
          const float* ghb = gh + b * ldg;
          for (int j = 0; j < 2 * Hp; ++j) g[j] += ghb[j] + (bh ? bh[j] : 0.0f);
          sigmoid_(g, 2 * Hp);
          for (int j = 0; j < H; ++j) g[2 * Hp + j] += g[j] * (ghb[2 * Hp + j] + (bh ? bh[2 * Hp + j] : 0.0f));
        } else {
          sigmoid_(g + Hp, H);  // z (r is done)
        }
        tanh_(g + 2 * Hp, H);
        for (int j = 0; j < H; ++j) {
          const float n = g[2 * Hp + j];
          o[j] = hb[j] = n + g[Hp + j] * (hb[j] - n);
        }
      } else if (cell == kRnnTanh) {
        tanh_(g, H);
        for (int j = 0; j < H; ++j) o[j] = hb[j] = g[j];
      } else {
        for (int j = 0; j < H; ++j) o[j] = hb[j] = g[j] < 0.0f ? 0.0f : g[j];  // NaN stays NaN
      }
    }
  }
#ifdef BIRNN_BF16
  if (amx_in) amx::release();
#endif
}

// Every layer and merge (stack_driver.h). A batch with lengths runs longest first (row_order.h) where the step
// products run on vdpbf16ps, which then skips the padded rows; on tiles a step multiplies whole 16-row tiles, and at
// B = 16 sorting saved nothing there but cost its copies (LSTM B = 16, H = 256, T = 64, 2 layers: 8.5-9.7 ms
// unsorted, 10.0-10.1 sorted).
inline void forward_stack(const Bf16Args& S) {
  const bool tiles = S.amx_min_batch > 0 && amx_granted() && S.batch >= S.amx_min_batch;  // as direction()'s amx_step
  if (tiles)
    stack::forward_stack(S, direction);
  else
    run_longest_first(S, [](const Bf16Args& R) { stack::forward_stack(R, direction); });
}

}  // namespace bf16
}  // namespace birnn

// Defined here, not inline: this header is included once, by birnn_cpu.cpp, whose library exports them.
extern "C" {
// The layout of Bf16Args, for models/blocks/cpu_kernel/bf16.py's check of its mirror: sizeof, last field's offset.
void birnn_bf16_args_layout(int64_t* size, int64_t* last_offset) {
  *size = int64_t(sizeof(birnn::bf16::Bf16Args));
  *last_offset = int64_t(offsetof(birnn::bf16::Bf16Args, amx_min_batch));
}
// 1 where this library has the bf16 path and the CPU runs vdpbf16ps; 0 elsewhere (then never call the entry below).
int birnn_bf16_supported() {
#ifdef BIRNN_BF16
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512bf16") ? 1 : 0;
#else
  return 0;
#endif
}
// 1 where the bf16 path runs here (birnn_bf16_supported) and the CPU has AMX-TILE and AMX-BF16 and Linux grants
// this process the tile state (bf16::amx_granted); 0 elsewhere, where amx_min_batch is ignored.
int birnn_bf16_amx_supported() { return birnn::bf16::amx_granted() ? 1 : 0; }
// Every layer of a bf16 inference call (bf16_forward.h); only where birnn_bf16_supported() is 1.
void birnn_bf16_forward_stack(const birnn::bf16::Bf16Args* args) { birnn::bf16::forward_stack(*args); }
}
