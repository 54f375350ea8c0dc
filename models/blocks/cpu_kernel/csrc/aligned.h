// Memory that starts on a cache line. Large new[] and std::vector memory is mmap'd by glibc, 16 bytes past a page,
// so every 64-byte vector (or 16-row tile row) a product reads or writes there would span two lines. Measured: a
// one-row step product over four such packed W in turn took 1.7x the time of the same product over aligned ones, and
// the int8 and bf16 stacks' misaligned rows cost them 7-20% at B = 64 (benchmarks/archive/RESULTS-2026-12.md, #33
// and #36).
#pragma once

#include <cstddef>
#include <cstdint>
#include <new>
#include <vector>

namespace birnn {

constexpr std::size_t kLine = 64;

// The first cache line boundary at or after p.
template <typename T>
inline T* on_line(char* p) {
  return reinterpret_cast<T*>(p + (kLine - reinterpret_cast<std::uintptr_t>(p) % kLine) % kLine);
}

// std::allocator with every allocation on a cache line (C++17's aligned operator new).
template <typename T>
struct LineAllocator {
  using value_type = T;
  LineAllocator() = default;
  template <typename U>
  LineAllocator(const LineAllocator<U>&) {}
  T* allocate(std::size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t(kLine))); }
  void deallocate(T* p, std::size_t) { ::operator delete(p, std::align_val_t(kLine)); }
  template <typename U>
  bool operator==(const LineAllocator<U>&) const { return true; }
  template <typename U>
  bool operator!=(const LineAllocator<U>&) const { return false; }
};

// A std::vector whose data starts on a cache line: the kernel's buffers that products read or write.
template <typename T>
using LineVector = std::vector<T, LineAllocator<T>>;

}  // namespace birnn
