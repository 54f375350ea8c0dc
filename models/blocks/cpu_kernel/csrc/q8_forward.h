// int8 dynamic-quantized inference of a whole bidirectional stack (models.quantize, models/blocks/quantized.py):
// int8 weights with per-output-channel symmetric scales, activations quantized per row (each x_t row, each h_{t-1}
// row at every step) with a symmetric per-row scale, exact int32 products (q8_gemm.h), float32 states and gate math.
//
// The quantization rule, mirrored exactly by models/blocks/quantized.py's reference (float32 operations, so the
// same bits): m = max |v| over the row; m == 0: q = 0, scale 0; otherwise inv = 127 / m, q = clamp(round-half-even(
// v * inv), -127, 127), scale = m / 127; where inv overflows (m < 127 / FLT_MAX, about 3.7e-37), q =
// round-half-even(v / m * 127) instead (|v / m| <= 1: finite, zero stays zero). A row holding NaN or inf gets scale
// NaN (its outputs are NaN, as in float).
// A step's pre-activation is acc_h * (s_h * s_hh[j]) + acc_x * (s_x * s_ih[j]) + bias[j].
//
// Entry point: birnn_q8_forward_stack(const Q8Args*), every layer and merge of an inference call (merge codes as
// forward.h's Merge). Q8Args is mirrored by models/blocks/cpu_kernel/q8.py (checked by birnn_q8_args_layout).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "activations.h"
#include "aligned.h"
#include "args.h"
#include "q8_gemm.h"
#include "row_order.h"
#include "stack_driver.h"

namespace birnn {
namespace q8 {

// The cells of the int8 path (LSTM and GRU keep the float kernel's codes; the Elman RNNs have none there).
enum Cell : int32_t { kLstm = 0, kGru = 1, kRnnTanh = 3, kRnnRelu = 4 };

inline int gates_of(int cell) { return cell == kLstm ? 4 : cell == kGru ? 3 : 1; }
inline int round_up(int n, int m) { return (n + m - 1) / m * m; }

// Layouts (T steps, B rows, H hidden, L layers, G = gates * H, Gp = G rounded up to 16, Ku = ceil(K / unit), unit
// 2 (kScalar, kAvx2: s16 pairs) or 4 (kVnni, kAmx: s8 quads), q8_gemm.h):
//   x (T, B, F) float32; lengths (B,) int64 or null; h0, c0, h_n, c_n (2L, B, H) (c0, c_n: LSTM only, else null);
//   out (T, B, 2H) after a last concat/None, else (T, B, H); input_sizes, merges (L,);
//   weights: 8 addresses a layer: w_ih (2, Gp/V, Ku_in, V, unit) (int16 pairs, V = 8, or int8 quads, V = 16: the
//   product's layout), s_ih (2, Gp) float32, b_ih (2, Gp) float32 or 0 (LSTM and RNN: b_ih + b_hh), w_hh (2, Gp/V,
//   Ku_h, V, unit),
//   s_hh (2, Gp), b_hh (2, Gp) (GRU: kept apart, r gates its n block) or 0, k_ih, k_hh (2, Gp) int32 (kVnni's
//   and kAmx's offset corrections, -128 * sum_k w[j, k]) or 0;
//   product: the int8 product (q8_gemm.h's Product), one best_product() allows; the weights are in its layout.
struct Q8Args {
  int32_t cell, steps, batch, hidden, layers, threads, product;
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
};

// Quantizes v (K floats) into q (`padded` codes): returns the row's scale (the rule above). Q = int16_t: the values
// (s16 pairs); Q = uint8_t: the values + 128 (u8 quads of the VNNI and AMX products). Padding and zero rows: value 0.
template <typename Q>
inline float quantize_row(const float* v, int K, int padded, Q* q) {
  constexpr int offset = sizeof(Q) == 1 ? 128 : 0;
  float m = 0.0f;
  bool finite = true;
  int i = 0;
#if defined(__AVX512F__)
  if (K >= 32) {  // two independent maxima: the loop is bound by vmaxps's latency otherwise
    const __m512 sign = _mm512_set1_ps(-0.0f);
    __m512 top0 = _mm512_setzero_ps(), top1 = top0;
    __mmask16 bad = 0;
    for (; i + 32 <= K; i += 32) {
      const __m512 x0 = _mm512_loadu_ps(v + i), x1 = _mm512_loadu_ps(v + i + 16);
      bad |= _mm512_cmp_ps_mask(x0, x0, _CMP_UNORD_Q) | _mm512_cmp_ps_mask(x1, x1, _CMP_UNORD_Q);  // NaN
      top0 = _mm512_max_ps(top0, _mm512_andnot_ps(sign, x0));
      top1 = _mm512_max_ps(top1, _mm512_andnot_ps(sign, x1));
    }
    m = _mm512_reduce_max_ps(_mm512_max_ps(top0, top1));
    finite = bad == 0;
  }
#endif
#if defined(__AVX2__)
  {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 top = _mm256_setzero_ps(), bad = _mm256_setzero_ps();
    for (; i + 8 <= K; i += 8) {
      const __m256 x = _mm256_loadu_ps(v + i);
      bad = _mm256_or_ps(bad, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));  // NaN
      top = _mm256_max_ps(top, _mm256_andnot_ps(sign, x));
    }
    alignas(32) float lanes[8];
    _mm256_store_ps(lanes, top);
    for (float lane : lanes) m = lane > m ? lane : m;
    finite = finite && _mm256_movemask_ps(bad) == 0;
  }
#endif
  for (; i < K; ++i) {
    const float a = std::fabs(v[i]);
    finite = finite && a == a;
    m = a > m ? a : m;
  }
  finite = finite && m <= 3.4028234663852886e38f;  // an inf anywhere makes m inf
  if (!finite || m == 0.0f) {
    for (int j = 0; j < padded; ++j) q[j] = Q(offset);
    return finite ? 0.0f : std::nanf("");
  }
  const float inv = 127.0f / m;
  if (!(inv <= 3.4028234663852886e38f)) {  // a tiny row: v * inv would be inf, and a zero in it 0 * inf = NaN
    for (int j = 0; j < K; ++j) q[j] = Q(int(std::nearbyint(v[j] / m * 127.0f)) + offset);
    for (int j = K; j < padded; ++j) q[j] = Q(offset);
    return m / 127.0f;
  }
  int j = 0;
#if defined(__AVX512F__)
  {  // the same multiply, rounding and clamp as the 8-wide loop below, 16 values at a time
    const __m512 scale = _mm512_set1_ps(inv), lo = _mm512_set1_ps(-127.0f), hi = _mm512_set1_ps(127.0f);
    for (; j + 16 <= K; j += 16) {
      __m512 r = _mm512_roundscale_ps(_mm512_mul_ps(_mm512_loadu_ps(v + j), scale),
                                      _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      r = _mm512_min_ps(hi, _mm512_max_ps(lo, r));
      const __m512i values = _mm512_cvtps_epi32(r);
      if constexpr (offset == 0) {
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + j), _mm512_cvtepi32_epi16(values));
      } else {  // + 128 as u8: flipping the sign bit of the s8
        _mm_storeu_si128(reinterpret_cast<__m128i*>(q + j),
                         _mm_xor_si128(_mm512_cvtepi32_epi8(values), _mm_set1_epi8(char(0x80))));
      }
    }
  }
#endif
#if defined(__AVX2__)
  const __m256 scale = _mm256_set1_ps(inv), lo = _mm256_set1_ps(-127.0f), hi = _mm256_set1_ps(127.0f);
  for (; j + 8 <= K; j += 8) {
    __m256 r = _mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(v + j), scale),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    r = _mm256_min_ps(hi, _mm256_max_ps(lo, r));
    const __m256i i = _mm256_cvtps_epi32(r);
    const __m128i packed = _mm_packs_epi32(_mm256_castsi256_si128(i), _mm256_extracti128_si256(i, 1));
    if constexpr (offset == 0) {
      _mm_storeu_si128(reinterpret_cast<__m128i*>(q + j), packed);
    } else {  // s8 (no saturation: |values| <= 127), then + 128 as u8: flipping the sign bit
      const __m128i bytes = _mm_xor_si128(_mm_packs_epi16(packed, packed), _mm_set1_epi8(char(0x80)));
      _mm_storel_epi64(reinterpret_cast<__m128i*>(q + j), bytes);
    }
  }
#endif
  for (; j < K; ++j) q[j] = Q(int(std::min(127.0f, std::max(-127.0f, std::nearbyint(v[j] * inv)))) + offset);
  for (; j < padded; ++j) q[j] = Q(offset);
  return m / 127.0f;
}

// Scratch of one thread, kept across calls (first-touch page faults of fresh buffers cost more than small steps), on
// cache lines (aligned.h).
struct Buffers {
  LineVector<int32_t> qx, qh;  // rows of A: Ku int32 each (q8_gemm.h)
  LineVector<float> sx, sh, g, tmp, zeros;
  LineVector<int32_t> ax, ah;
};
inline Buffers& buffers() {
  thread_local Buffers b;
  return b;
}
using stack::sized;

// g[j] = acc_h[j] * (s_h * s_hh[j]) + extra[j] + (acc_x[j] * (s_x * s_ih[j]) + bias[j]) for j < n (extra: GRU's
// b_hh of r and z, else none): a step's pre-activations from the two int32 products. The vector and scalar
// forms round alike (no fused multiply-add: the library is built -std=c++17, which leaves contraction off).
inline void dequantize(int n, const int32_t* ah, float fh, const float* sw, const int32_t* ax, float fx,
                       const float* si, const float* bias, float* g, const float* extra = nullptr) {
  int j = 0;
#if defined(__AVX512F__)
  {  // the 8-wide loop's operations in its order, 16 channels at a time
    const __m512 vh = _mm512_set1_ps(fh), vx = _mm512_set1_ps(fx);
    for (; j + 16 <= n; j += 16) {
      const __m512 h = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_loadu_si512(ah + j)),
                                     _mm512_mul_ps(vh, _mm512_loadu_ps(sw + j)));
      const __m512 x = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_loadu_si512(ax + j)),
                                     _mm512_mul_ps(vx, _mm512_loadu_ps(si + j)));
      const __m512 hh = extra ? _mm512_add_ps(h, _mm512_loadu_ps(extra + j)) : h;
      _mm512_storeu_ps(g + j, _mm512_add_ps(hh, _mm512_add_ps(x, _mm512_loadu_ps(bias + j))));
    }
  }
#endif
#if defined(__AVX2__)
  const __m256 vh = _mm256_set1_ps(fh), vx = _mm256_set1_ps(fx);
  for (; j + 8 <= n; j += 8) {
    const __m256 h = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(ah + j))),
                                   _mm256_mul_ps(vh, _mm256_loadu_ps(sw + j)));
    const __m256 x = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(ax + j))),
                                   _mm256_mul_ps(vx, _mm256_loadu_ps(si + j)));
    const __m256 hh = extra ? _mm256_add_ps(h, _mm256_loadu_ps(extra + j)) : h;
    _mm256_storeu_ps(g + j, _mm256_add_ps(hh, _mm256_add_ps(x, _mm256_loadu_ps(bias + j))));
  }
#endif
  for (; j < n; ++j) {
    const float h = float(ah[j]) * (fh * sw[j]);
    g[j] = (extra ? h + extra[j] : h) + (float(ax[j]) * (fx * si[j]) + bias[j]);
  }
}

// Row v (K floats) into a row of A for `product` (Ku int32 at a): returns its scale.
inline float quantize_into(int product, const float* v, int K, int Ku, int32_t* a) {
  if (unit_of(product) == 4) return quantize_row(v, K, 4 * Ku, reinterpret_cast<uint8_t*>(a));
  return quantize_row(v, K, 2 * Ku, reinterpret_cast<int16_t*>(a));
}

// Direction d of layer l: input `in` (T, B, F), raw output (T, B, 2, H).
inline void direction(const Q8Args& S, int l, int d, const float* in, int F, float* raw) {
  const int T = S.steps, B = S.batch, H = S.hidden, cell = S.cell, G = gates_of(cell) * H, Gp = round_up(G, 16);
  const int product = S.product, unit = unit_of(product);
  const int Kx = (F + unit - 1) / unit, Kh = (H + unit - 1) / unit;
  const int64_t* w = S.weights + 8 * int64_t(l);
  const char* wi = reinterpret_cast<const char*>(w[0]) + d * packed_bytes(Gp, Kx);
  const float* si = reinterpret_cast<const float*>(w[1]) + int64_t(d) * Gp;
  const float* bi = w[2] ? reinterpret_cast<const float*>(w[2]) + int64_t(d) * Gp : nullptr;
  const char* wh = reinterpret_cast<const char*>(w[3]) + d * packed_bytes(Gp, Kh);
  const float* sw = reinterpret_cast<const float*>(w[4]) + int64_t(d) * Gp;
  const float* bh = w[5] ? reinterpret_cast<const float*>(w[5]) + int64_t(d) * Gp : nullptr;
  const int32_t* ki = w[6] ? reinterpret_cast<const int32_t*>(w[6]) + int64_t(d) * Gp : nullptr;
  const int32_t* kh = w[7] ? reinterpret_cast<const int32_t*>(w[7]) + int64_t(d) * Gp : nullptr;
  const int64_t state = (int64_t(2) * l + d) * B * H;
  float* h = S.h_n + state;
  float* c = cell == kLstm ? S.c_n + state : nullptr;
  std::memcpy(h, S.h0 + state, sizeof(float) * B * H);
  if (c) std::memcpy(c, S.c0 + state, sizeof(float) * B * H);
  // Projections in chunks of about 256 rows (one int8 GEMM each), kept as int32 until the step reads them.
  const int chunk = std::max(1, std::min(T, 256 / std::max(1, B)));
  Buffers& buf = buffers();
  int32_t* qx = sized(buf.qx, int64_t(chunk) * B * Kx);
  float* sx = sized(buf.sx, int64_t(chunk) * B);
  int32_t* ax = sized(buf.ax, int64_t(chunk) * B * Gp);
  int32_t* qh = sized(buf.qh, int64_t(B) * Kh);
  float* sh = sized(buf.sh, B);
  int32_t* ah = sized(buf.ah, int64_t(B) * Gp);
  float* g = sized(buf.g, Gp);
  float* tmp = sized(buf.tmp, 2 * H);
  const float* zeros = sized(buf.zeros, Gp);  // in place of an absent bias (never written: zero from resize)
  int chunk_start = 0;
  const StepRows active(S.lengths, T, 0, B);  // sorted lengths (row_order.h): a step's valid rows are a prefix
  for (int s = 0; s < T; ++s) {
    const int t = d == 0 ? s : T - 1 - s;
    if (s % chunk == 0) {
      const int n = std::min(chunk, T - s);
      chunk_start = d == 0 ? s : T - s - n;
      const float* xs = in + int64_t(chunk_start) * B * F;
      for (int64_t r = 0; r < int64_t(n) * B; ++r) sx[r] = quantize_into(product, xs + r * F, F, Kx, qx + r * Kx);
      gemm(product, n * B, Kx, Gp, qx, wi, ki, ax);
    }
    const int rows = active.at(t);  // the step product's rows; the padded ones after them are skipped below
    for (int b = 0; b < rows; ++b) sh[b] = quantize_into(product, h + int64_t(b) * H, H, Kh, qh + int64_t(b) * Kh);
    if (rows > 0) gemm(product, rows, Kh, Gp, qh, wh, kh, ah);
    for (int b = 0; b < B; ++b) {
      float* o = raw + ((int64_t(t) * B + b) * 2 + d) * H;
      if (S.lengths != nullptr && t >= S.lengths[b]) {
        std::memset(o, 0, sizeof(float) * H);
        continue;
      }
      const int64_t row = int64_t(t - chunk_start) * B + b;
      const int32_t* axr = ax + row * Gp;
      const int32_t* ahr = ah + int64_t(b) * Gp;
      const float fx = sx[row], fh = sh[b];
      float* hb = h + int64_t(b) * H;
      if (cell == kGru) {
        // r, z: x and h parts summed; n: x part in g, h part (with b_hn) in tmp, gated by r below.
        for (int j = 0; j < 2 * H; ++j) tmp[j] = bh ? bh[j] : 0.0f;  // (tmp holds 2H here: sized below)
        dequantize(2 * H, ahr, fh, sw, axr, fx, si, bi ? bi : zeros, g, tmp);
        sigmoid_(g, 2 * H);
        for (int j = 0; j < H; ++j) {
          const int k = 2 * H + j;
          const float hn = float(ahr[k]) * (fh * sw[k]) + (bh ? bh[k] : 0.0f);
          g[k] = (float(axr[k]) * (fx * si[k]) + (bi ? bi[k] : 0.0f)) + g[j] * hn;
        }
        tanh_(g + 2 * H, H);
        for (int j = 0; j < H; ++j) {
          const float n = g[2 * H + j];
          o[j] = hb[j] = n + g[H + j] * (hb[j] - n);
        }
        continue;
      }
      dequantize(G, ahr, fh, sw, axr, fx, si, bi ? bi : zeros, g);
      if (cell == kLstm) {
        float* cb = c + int64_t(b) * H;
        sigmoid_(g, 2 * H);
        tanh_(g + 2 * H, H);
        sigmoid_(g + 3 * H, H);
        for (int j = 0; j < H; ++j) tmp[j] = cb[j] = g[H + j] * cb[j] + g[j] * g[2 * H + j];
        tanh_(tmp, H);
        for (int j = 0; j < H; ++j) o[j] = hb[j] = g[3 * H + j] * tmp[j];
      } else if (cell == kRnnTanh) {
        tanh_(g, H);
        for (int j = 0; j < H; ++j) o[j] = hb[j] = g[j];
      } else {
        for (int j = 0; j < H; ++j) o[j] = hb[j] = g[j] < 0.0f ? 0.0f : g[j];  // NaN stays NaN
      }
    }
  }
#if defined(__AVX512F__)
  if (product == kAmx) amx::release();
#endif
}

// Every layer and merge (stack_driver.h), a batch with lengths run longest first (row_order.h): each step's product
// then covers the rows still valid.
inline void forward_stack(const Q8Args& S) {
  run_longest_first(S, [](const Q8Args& R) { stack::forward_stack(R, direction); });
}

}  // namespace q8
}  // namespace birnn

// Defined here, not inline: this header is included once, by birnn_cpu.cpp, whose library exports them.
extern "C" {
// The layout of Q8Args, for models/blocks/cpu_kernel/q8.py's check of its mirror: sizeof, last field's offset.
void birnn_q8_args_layout(int64_t* size, int64_t* last_offset) {
  *size = int64_t(sizeof(birnn::q8::Q8Args));
  *last_offset = int64_t(offsetof(birnn::q8::Q8Args, weights));
}
// Every layer of an int8 inference call (q8_forward.h).
void birnn_q8_forward_stack(const birnn::q8::Q8Args* args) { birnn::q8::forward_stack(*args); }
// The int8 product alone, for tests: C (M, Gp) = A x W^T by `product` (q8_gemm.h layouts; k: kVnni's and kAmx's
// offset corrections, else null; bits: the VNNI vectors, 0 for this CPU's choice, 256 or 512).
void birnn_q8_gemm(int product, int M, int Ku, int Gp, const int32_t* a, const void* w, const int32_t* k,
                   int32_t* c, int bits) {
  birnn::q8::gemm(product, M, Ku, Gp, a, w, k, c, bits);
#if defined(__AVX512F__)
  if (product == birnn::q8::kAmx) birnn::amx::release();
#endif
}
// The fastest product this library has on this CPU (q8_gemm.h's Product): kAmx (3), kVnni (2), kAvx2 (1) or
// kScalar (0).
int birnn_q8_best_product() { return birnn::q8::best_product(); }
}
