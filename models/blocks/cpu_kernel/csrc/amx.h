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
#endif

}  // namespace amx
}  // namespace birnn
