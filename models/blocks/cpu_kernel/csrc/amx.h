// What the AMX tile paths share (bf16_forward.h's bf16 products, q8_gemm.h's int8 ones): whether this process may
// run tile instructions, and the one tile shape both use. Only the avx512 build compiles tile code.
//
// Every tile is 16 rows x 64 bytes: tmm0..3 the 32-bit sums of (row tile i, channel block j) = tmm(2 i + j), tmm4/5
// the row tiles of A, tmm6/7 the blocks of W. The tile instructions are compiled with target attributes for their
// functions only, so the library still loads and runs on a CPU without AMX.
#pragma once

#include <cstdint>

#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>

#if defined(__AVX512F__)
#include <immintrin.h>
#define BIRNN_AMX 1
#define BIRNN_TILE_TARGET __attribute__((target("amx-tile")))
#endif

namespace birnn {
namespace amx {

// CPUID leaf 7's EDX bits: AMX-BF16 (22), AMX-TILE (24), AMX-INT8 (25).
enum Feature : unsigned { kBf16 = 1u << 22, kTile = 1u << 24, kInt8 = 1u << 25 };

// Whether the CPU reports AMX-TILE and `feature`, and Linux grants this process the tile state (asked once, here:
// arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA); the grant is the process's, for every thread). Without the
// grant a tile instruction is SIGILL, so every tile path asks this first.
inline bool granted(unsigned feature) {
#ifdef BIRNN_AMX
  static const unsigned features = [] {  // leaf 7's EDX where the tile state is granted, else 0
    constexpr long kGetPerm = 0x1022, kRequestPerm = 0x1023, kTileData = 18;  // asm/prctl.h, XFEATURE_XTILEDATA
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx) || !(edx & kTile)) return 0u;
    if (syscall(SYS_arch_prctl, kRequestPerm, kTileData) != 0) return 0u;  // an old kernel or a refusal
    unsigned long permitted = 0;
    if (syscall(SYS_arch_prctl, kGetPerm, &permitted) != 0) return 0u;
    return ((permitted >> kTileData) & 1ul) != 0 ? edx : 0u;
  }();
  return (features & (kTile | feature)) == (kTile | feature);
#else
  (void)feature;
  return false;
#endif
}

#ifdef BIRNN_AMX
struct alignas(64) TileConfig {
  uint8_t palette, start_row, reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};

// Every tile register 16 rows x 64 bytes (a tile product's callers load this once per product call).
BIRNN_TILE_TARGET inline void configure() {
  TileConfig config{};
  config.palette = 1;
  for (int t = 0; t < 8; ++t) config.colsb[t] = 64, config.rows[t] = 16;
  _tile_loadconfig(&config);
}

// The tile state back to its initial state (a thread's saved context stays small between calls).
BIRNN_TILE_TARGET inline void release() { _tile_release(); }

#define BIRNN_TILE_PRODUCT_TARGET __attribute__((target("amx-tile,amx-int8,amx-bf16")))

// tmmC += tmmA x tmmB: u8 x s8 quads into int32 sums without saturation (INT8), else bf16 pairs into float32 sums.
// A macro: the tile numbers must be literal tokens of the instruction.
#define BIRNN_TILE_DOT(INT8, C, A, B) \
  do {                                \
    if constexpr (INT8)               \
      _tile_dpbusd(C, A, B);          \
    else                              \
      _tile_dpbf16ps(C, A, B);        \
  } while (0)

// MT row tiles x NT blocks of W (INT8: u8 x s8 quads, else bf16 pairs) over `chunks` 64-byte columns of A (each 1 KB of
// a block: 16 rows of 64 bytes). a: the first row, rows sa bytes apart; w: the first block, blocks `block` bytes apart;
// c: the first row's sums, rows sc bytes apart, the second block's 64 bytes on. The sums start from c (ACC), else from
// `start` (64 bytes a block, loaded at stride 0: every row of a tile starts from them), else from zero.
template <bool INT8, int MT, int NT, bool ACC>
BIRNN_TILE_PRODUCT_TARGET inline void tile_product(int chunks, const char* a, int64_t sa, const char* w,
                                                   int64_t block, char* c, int64_t sc, const char* start) {
  char* c1 = c + 16 * sc;
  if (ACC) {
    _tile_loadd(0, c, sc);
    if (NT > 1) _tile_loadd(1, c + 64, sc);
    if (MT > 1) _tile_loadd(2, c1, sc);
    if (MT > 1 && NT > 1) _tile_loadd(3, c1 + 64, sc);
  } else if (start) {
    _tile_loadd(0, start, 0);
    if (NT > 1) _tile_loadd(1, start + 64, 0);
    if (MT > 1) _tile_loadd(2, start, 0);
    if (MT > 1 && NT > 1) _tile_loadd(3, start + 64, 0);
  } else {
    _tile_zero(0);
    if (NT > 1) _tile_zero(1);
    if (MT > 1) _tile_zero(2);
    if (MT > 1 && NT > 1) _tile_zero(3);
  }
  for (int k = 0; k < chunks; ++k) {
    _tile_loadd(4, a + 64 * int64_t(k), sa);
    _tile_loadd(6, w + 1024 * int64_t(k), 64);
    if (NT > 1) _tile_loadd(7, w + block + 1024 * int64_t(k), 64);
    BIRNN_TILE_DOT(INT8, 0, 4, 6);
    if (NT > 1) BIRNN_TILE_DOT(INT8, 1, 4, 7);
    if (MT > 1) {
      _tile_loadd(5, a + 16 * sa + 64 * int64_t(k), sa);
      BIRNN_TILE_DOT(INT8, 2, 5, 6);
      if (NT > 1) BIRNN_TILE_DOT(INT8, 3, 5, 7);
    }
  }
  _tile_stored(0, c, sc);
  if (NT > 1) _tile_stored(1, c + 64, sc);
  if (MT > 1) _tile_stored(2, c1, sc);
  if (MT > 1 && NT > 1) _tile_stored(3, c1 + 64, sc);
}

// C (M rows, `blocks` blocks) (+)= A W^T on tiles, M a multiple of 16, arguments as tile_product's (c and start at
// the first block). Two blocks at a time over every row tile, two row tiles at a time: each weight is read once a
// call, the rows (a projection chunk: about 256) stay in L2.
template <bool INT8, bool ACC>
BIRNN_TILE_PRODUCT_TARGET inline void tile_gemm(int M, int chunks, const char* a, int64_t sa, const char* w,
                                                int64_t block, int blocks, char* c, int64_t sc, const char* start) {
  asm volatile("" ::: "memory");  // the tile loads are asm the compiler does not see reading a, c and start
  configure();
  for (int n = 0; n < blocks; n += 2) {
    const bool two = n + 1 < blocks;
    const char* wn = w + n * block;
    const char* sn = start ? start + 64 * int64_t(n) : nullptr;
    char* cn = c + 64 * int64_t(n);
    int m = 0;
    for (; m + 32 <= M; m += 32) {
      if (two)
        tile_product<INT8, 2, 2, ACC>(chunks, a + m * sa, sa, wn, block, cn + m * sc, sc, sn);
      else
        tile_product<INT8, 2, 1, ACC>(chunks, a + m * sa, sa, wn, block, cn + m * sc, sc, sn);
    }
    if (m < M) {
      if (two)
        tile_product<INT8, 1, 2, ACC>(chunks, a + m * sa, sa, wn, block, cn + m * sc, sc, sn);
      else
        tile_product<INT8, 1, 1, ACC>(chunks, a + m * sa, sa, wn, block, cn + m * sc, sc, sn);
    }
  }
  asm volatile("" ::: "memory");
}
#endif

}  // namespace amx
}  // namespace birnn
