// Scratch memory kept across calls: one buffer per (thread, use), grown as needed, reused by the next call.
//
// Why: fresh memory costs a page fault for every 4 KB page on first touch (about 1.8 us each on the 2-core VM
// measured), and glibc serves a request of the size of an mmap'd chunk it has just freed with a new mmap. An
// inference call of LSTM T = 64, B = 16, H = 128, 2 layers re-faulted about 740 pages (3 MB) in every call: 13% of
// its time on one thread, 18% on two; above 32 MB glibc always maps fresh pages (T = 512, B = 64, H = 128: 16,000
// faults a call, ~7%) (benchmarks/archive/RESULTS-2026-12.md, optimisation #17). A kept buffer is at most kKeepBytes,
// 64 MB a use and thread (the layer outputs of T = 512, B = 64, H = 256, 2 layers, concat: what such a call's own
// output takes); a larger request is allocated for the call and freed after it, as before. Thread-local: calls on
// different threads (a server's request threads, OpenMP's pool) never share a buffer, and a thread's two uses (Use)
// never alias.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "aligned.h"

namespace birnn {

enum class Use { kLayerOutputs = 0, kProjections = 1, kPackedRows = 2, kGateGrads = 3 };
constexpr int kUses = 4;
constexpr std::size_t kKeepBytes = std::size_t(64) << 20;
// The most bytes of packed rows (args.h, StepRows) a training call's projections or gradient sums copy at a time: runs
// of steps are packed and used in turn, so the copies stay in the kept buffers at any T and B.
constexpr int64_t kPackedBytes = int64_t(8) << 20;

// `count` uninitialised elements of T, valid while this object lives and no other Scratch of the same Use is made
// on this thread (each use is made once per call of its function, never nested).
template <typename T>
class Scratch {
 public:
  Scratch(Use use, int64_t count) {
    const std::size_t bytes = std::size_t(count > 0 ? count : 0) * sizeof(T);
    if (bytes == 0) return;
    if (bytes > kKeepBytes) {
      own_.reset(new char[bytes + kLine]);
      data_ = on_line<T>(own_.get());
      return;
    }
    Kept& kept = slots()[int(use)];
    if (kept.bytes < bytes) {
      const std::size_t grown = (bytes + 65535) / 65536 * 65536;  // 64 KB steps: fewer regrowths as sizes vary
      kept.data.reset();  // free first: the old and the new buffer are never held together
      kept.data.reset(new char[grown + kLine]);
      kept.bytes = grown;
    }
    data_ = on_line<T>(kept.data.get());  // aligned.h: on a cache line
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  T* get() const { return data_; }

 private:
  struct Kept {
    std::unique_ptr<char[]> data;
    std::size_t bytes = 0;
  };
  static Kept* slots() {
    thread_local Kept kept[kUses];
    return kept;
  }
  T* data_ = nullptr;
  std::unique_ptr<char[]> own_;
};

}  // namespace birnn
