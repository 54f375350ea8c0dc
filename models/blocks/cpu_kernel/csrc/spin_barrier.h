// A barrier for the threads of one OpenMP parallel region that spins briefly before it sleeps.
//
// Why: under OMP_WAIT_POLICY=PASSIVE (what this project's benchmarks and CI set on shared machines) libgomp's barrier
// puts a waiting thread to sleep at once, and waking it costs a system call and, on a virtual machine, the host
// waking a halted vCPU: after an idle spell KVM's halt polling has shrunk, and every barrier of an inference call
// then costs far more. Measured on a 2-core VM, two threads, turns of 10 calls after a 0.2 s pause, OpenMP's barriers
// against this one: LSTM T = 64, B = 1, H = 256, 2 layers 2.70-2.88 -> 1.84-2.13 ms a call (back to back 1.9-2.0
// both); B = 16, H = 128 6.3-7.4 -> 5.8-7.6 ms (noise) (benchmarks/archive/RESULTS-2026-12.md, optimisation #18). The
// two directions of a layer do the same work, so a thread that arrives first usually waits only microseconds: it
// spins (pause) for up to kSpinMicros, then sleeps in short steps, so a long wait (a preempted partner on an
// oversubscribed machine) does not burn a core.
#pragma once

#include <omp.h>

#include <atomic>
#include <chrono>
#include <thread>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define BIRNN_PAUSE() _mm_pause()
#elif defined(__aarch64__)
#define BIRNN_PAUSE() asm volatile("yield")
#else
#define BIRNN_PAUSE() ((void)0)
#endif

namespace birnn {

constexpr int kSpinMicros = 200;

class SpinBarrier {
 public:
  explicit SpinBarrier(int threads) : threads_(threads) {}
  SpinBarrier(const SpinBarrier&) = delete;
  SpinBarrier& operator=(const SpinBarrier&) = delete;

  // Every thread of the team calls wait(); none returns before all have called it, and each sees what the others
  // wrote before their call (release on arrival, acquire on leaving).
  void wait() {
    if (threads_ <= 1) return;
    const unsigned generation = generation_.load(std::memory_order_acquire);
    if (arrived_.fetch_add(1, std::memory_order_acq_rel) == threads_ - 1) {
      arrived_.store(0, std::memory_order_relaxed);  // reset before the release below: the next wait() sees 0
      generation_.fetch_add(1, std::memory_order_release);
      return;
    }
    const auto start = std::chrono::steady_clock::now();
    for (unsigned i = 1; generation_.load(std::memory_order_acquire) == generation; ++i) {
      if (i % 64 != 0) {
        BIRNN_PAUSE();
      } else if (std::chrono::steady_clock::now() - start > std::chrono::microseconds(kSpinMicros)) {
        std::this_thread::sleep_for(std::chrono::microseconds(20));
      }
    }
  }

 private:
  const int threads_;
  std::atomic<int> arrived_{0};
  std::atomic<unsigned> generation_{0};
};

// The spin barrier when the team has the size it was made for, else OpenMP's own barrier (a team smaller than asked,
// under OMP_THREAD_LIMIT or nesting, would never fill the spin barrier).
inline void team_barrier(SpinBarrier* sync) {
  if (sync != nullptr) {
    sync->wait();
  } else {
#pragma omp barrier
  }
}

}  // namespace birnn
