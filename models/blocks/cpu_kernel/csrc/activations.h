// In-place sigmoid and tanh over float/double arrays: the activations of the cells' step functions (cells.h).
//
// The library is compiled once per instruction set (models/blocks/cpu_kernel/build.py: AVX-512 F/DQ/BW/VL + FMA, or
// AVX2 + FMA), and this header picks the matching vector width from the compiler's macros; without either, the
// scalar libm loop below is all there is.
//
// Contract, checked by tests/test_cpu_kernel_math.py against ATen's float32 sigmoid/tanh:
// - NaN in, NaN out; sigmoid(+-inf) = 1 / 0, tanh(+-inf) = +-1, in the vector code and the scalar tail alike.
//   The clamps below are written max(lo, x) / min(hi, x): x86 min/max return their *second* operand when either
//   is NaN, so NaN passes through them (max(x, lo) would turn NaN into lo).
// - Relative error ~1e-7 everywhere, near 0 included: tanh uses an odd polynomial for |x| < 0.5625 (the form
//   1 - 2 / (e^2x + 1) loses every digit there: a 4e-5 state came out 5e-4 off in relative terms).

#pragma once

#include <cmath>
#include <cstdint>

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#include <immintrin.h>
#endif

namespace birnn {

// One set of vector wrappers per instruction set, with the same names, so the cell code is written once.
#if defined(__AVX512F__)
#define BIRNN_VECTOR 16
using vf = __m512;
inline vf vload(const float* p) { return _mm512_loadu_ps(p); }
inline void vstore(float* p, vf v) { _mm512_storeu_ps(p, v); }
inline vf vset(float x) { return _mm512_set1_ps(x); }
inline vf vadd(vf a, vf b) { return _mm512_add_ps(a, b); }
inline vf vsub(vf a, vf b) { return _mm512_sub_ps(a, b); }
inline vf vmul(vf a, vf b) { return _mm512_mul_ps(a, b); }
inline vf vfmadd(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }    // a * b + c
inline vf vfnmadd(vf a, vf b, vf c) { return _mm512_fnmadd_ps(a, b, c); }  // c - a * b
inline vf vmax(vf a, vf b) { return _mm512_max_ps(a, b); }                   // b when either is NaN
inline vf vmin(vf a, vf b) { return _mm512_min_ps(a, b); }
inline vf vround(vf x) { return _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
inline vf vscale2n(vf p, vf n) { return _mm512_scalef_ps(p, n); }  // p * 2^n, gradual underflow included
// 1 / d by rcp14 and one Newton step (relative error ~4e-9): a division is 2-3x slower on AVX-512 cores.
inline vf vdivide(vf num, vf d) {
  const vf r = _mm512_rcp14_ps(d);
  return _mm512_mul_ps(num, _mm512_mul_ps(r, _mm512_fnmadd_ps(d, r, _mm512_set1_ps(2.0f))));
}
inline vf vabs(vf x) { return _mm512_abs_ps(x); }
inline vf vcopysign(vf magnitude, vf sign) {  // magnitude >= 0 (or NaN): OR in the sign bit of `sign`
  const __m512i bit = _mm512_and_si512(_mm512_castps_si512(sign), _mm512_set1_epi32(int32_t(0x80000000u)));
  return _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(magnitude), bit));
}
inline vf vselect_lt(vf a, vf b, vf if_less, vf otherwise) {  // a < b ? if_less : otherwise (NaN: otherwise)
  return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(a, b, _CMP_LT_OQ), otherwise, if_less);
}
inline vf vselect_ge0(vf x, vf if_ge, vf otherwise) {  // x >= 0 ? if_ge : otherwise (NaN: otherwise)
  return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_GE_OQ), otherwise, if_ge);
}
#elif defined(__AVX2__) && defined(__FMA__)
#define BIRNN_VECTOR 8
using vf = __m256;
inline vf vload(const float* p) { return _mm256_loadu_ps(p); }
inline void vstore(float* p, vf v) { _mm256_storeu_ps(p, v); }
inline vf vset(float x) { return _mm256_set1_ps(x); }
inline vf vadd(vf a, vf b) { return _mm256_add_ps(a, b); }
inline vf vsub(vf a, vf b) { return _mm256_sub_ps(a, b); }
inline vf vmul(vf a, vf b) { return _mm256_mul_ps(a, b); }
inline vf vfmadd(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
inline vf vfnmadd(vf a, vf b, vf c) { return _mm256_fnmadd_ps(a, b, c); }
inline vf vmax(vf a, vf b) { return _mm256_max_ps(a, b); }
inline vf vmin(vf a, vf b) { return _mm256_min_ps(a, b); }
inline vf vround(vf x) { return _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
// p * 2^n for integral n in [-152, 128] (exp clamps its argument so n stays there), as two factors 2^(n/2) and
// 2^(n - n/2), each a normal float built in the exponent bits: results below FLT_MIN underflow gradually to 0
// as ATen's do. A NaN p stays NaN whatever n's conversion gives.
inline vf vscale2n(vf p, vf n) {
  const __m256i k = _mm256_cvtps_epi32(n);
  const __m256i half = _mm256_srai_epi32(k, 1);
  const __m256i bias = _mm256_set1_epi32(127);
  const vf a = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(half, bias), 23));
  const vf b = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_sub_epi32(k, half), bias), 23));
  return _mm256_mul_ps(_mm256_mul_ps(p, a), b);
}
// A true division: AVX2's rcp has only 12 bits and would need two Newton steps to reach float32's 24.
inline vf vdivide(vf num, vf d) { return _mm256_div_ps(num, d); }
inline vf vabs(vf x) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), x); }
inline vf vcopysign(vf magnitude, vf sign) {
  return _mm256_or_ps(magnitude, _mm256_and_ps(sign, _mm256_set1_ps(-0.0f)));
}
inline vf vselect_lt(vf a, vf b, vf if_less, vf otherwise) {
  return _mm256_blendv_ps(otherwise, if_less, _mm256_cmp_ps(a, b, _CMP_LT_OQ));
}
inline vf vselect_ge0(vf x, vf if_ge, vf otherwise) {
  return _mm256_blendv_ps(otherwise, if_ge, _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_GE_OQ));
}
#endif

#ifdef BIRNN_VECTOR
// e^x: x = n ln2 + r with |r| <= ln2 / 2, e^r by its degree-7 Taylor polynomial (truncation < 1e-8 relative),
// scaled by 2^n. x is clamped to [-104, 88] (e^-104 rounds to 0 as e^-inf must; e^88 < FLT_MAX), NaN kept.
inline vf vexp(vf x) {
  x = vmin(vset(88.0f), vmax(vset(-104.0f), x));
  const vf n = vround(vmul(x, vset(1.44269504088896341f)));
  vf r = vfnmadd(n, vset(0.693145751953125f), x);  // ln2 split in two: n * ln2_hi is exact
  r = vfnmadd(n, vset(1.428606765330187045e-06f), r);
  vf p = vset(1.0f / 5040);
  p = vfmadd(p, r, vset(1.0f / 720));
  p = vfmadd(p, r, vset(1.0f / 120));
  p = vfmadd(p, r, vset(1.0f / 24));
  p = vfmadd(p, r, vset(1.0f / 6));
  p = vfmadd(p, r, vset(0.5f));
  p = vfmadd(p, r, vset(1.0f));
  p = vfmadd(p, r, vset(1.0f));
  return vscale2n(p, n);
}

// 1 / (1 + e^-x) from e = e^-|x| <= 1 (never overflows): 1 / (1 + e) for x >= 0, e / (1 + e) below.
inline vf vsigmoid(vf x) {
  const vf e = vexp(vsub(vset(0.0f), vabs(x)));
  const vf one = vset(1.0f);
  const vf d = vadd(one, e);
  return vdivide(vselect_ge0(x, one, e), d);  // NaN: e / d, NaN
}

// tanh |x| = (1 - e) / (1 + e), e = e^-2|x|, where |x| >= 0.5625; below, the Taylor series of tanh to x^17
// (truncation < 1e-8 relative at 0.5625). The sign of x is put back at the end (tanh(-0) = -0).
inline vf vtanh(vf x) {
  const vf a = vabs(x);
  const vf one = vset(1.0f);
  const vf e = vexp(vmul(vset(-2.0f), a));
  const vf large = vdivide(vsub(one, e), vadd(one, e));
  const vf a2 = vmul(a, a);
  vf p = vset(6404582.0f / 10854718875.0f);
  p = vfmadd(p, a2, vset(-929569.0f / 638512875.0f));
  p = vfmadd(p, a2, vset(21844.0f / 6081075.0f));
  p = vfmadd(p, a2, vset(-1382.0f / 155925.0f));
  p = vfmadd(p, a2, vset(62.0f / 2835.0f));
  p = vfmadd(p, a2, vset(-17.0f / 315.0f));
  p = vfmadd(p, a2, vset(2.0f / 15.0f));
  p = vfmadd(p, a2, vset(-1.0f / 3.0f));
  const vf small = vfmadd(vmul(a, a2), p, a);
  return vcopysign(vselect_lt(a, vset(0.5625f), small, large), x);
}
#endif

// The scalar forms: the tail of every vector loop and the whole loop without AVX2/AVX-512. libm's expf/tanhf
// propagate NaN and saturate at +-inf as ATen does.
inline float sigmoid_scalar(float x) { return 1.0f / (1.0f + std::exp(-x)); }
inline double sigmoid_scalar(double x) { return 1.0 / (1.0 + std::exp(-x)); }

inline void sigmoid_(float* x, int n) {
  int j = 0;
#ifdef BIRNN_VECTOR
  for (; j + BIRNN_VECTOR <= n; j += BIRNN_VECTOR) vstore(x + j, vsigmoid(vload(x + j)));
#endif
  for (; j < n; ++j) x[j] = sigmoid_scalar(x[j]);
}
inline void tanh_(float* x, int n) {
  int j = 0;
#ifdef BIRNN_VECTOR
  for (; j + BIRNN_VECTOR <= n; j += BIRNN_VECTOR) vstore(x + j, vtanh(vload(x + j)));
#endif
  for (; j < n; ++j) x[j] = std::tanh(x[j]);
}
// float64 (tests, gradcheck): libm throughout.
inline void sigmoid_(double* x, int n) {
  for (int j = 0; j < n; ++j) x[j] = sigmoid_scalar(x[j]);
}
inline void tanh_(double* x, int n) {
  for (int j = 0; j < n; ++j) x[j] = std::tanh(x[j]);
}

}  // namespace birnn
