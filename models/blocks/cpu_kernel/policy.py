"""Which path a block takes on CPU: the project's kernel or PyTorch's fused kernels. The one place that decides.

The rule comes from the matrix measured by ``python -m benchmarks.kernel_matrix`` (current tables in
``benchmarks/RESULTS.md``; the discussion in ``benchmarks/archive/RESULTS-2026-12.md``, "Kernel or PyTorch"): the kernel
is taken where it ran at most as long as ``nn.LSTM``/``nn.GRU(bidirectional=True)`` at the same thread count (within
the noise of a shared machine). It is a pure function of its arguments, so a run makes the same choice after a restart
(bit-exact resume needs that; an autotuner could choose differently).

What the measurements say (AVX2 on an AMD EPYC Zen 3, AVX-512 on an Intel Xeon, torch 2.13; ratios are kernel time /
``nn.*`` time):
- GRU: ``nn.GRU`` runs ~10 ATen ops per step; the kernel took 0.03-0.98x of its time at every size measured,
  except one-thread training steps at B = 256 without lengths (0.99-1.41x): PyTorch's kernels there. With lengths
  the kernel's sums skip the padded rows (``csrc/args.h``, ``StepRows``): 0.75-0.90x of ``nn.GRU`` at B = 256 on the
  AVX-512 Xeon (2026-12-06), against 1.21-1.28x for PyTorch's lengths path.
- LSTM with ``lengths``: PyTorch's path costs 1.0-1.55x of ``nn.LSTM`` (two single-direction calls and
  gathers), the kernel 0.52-1.10x (2026-11-30), and since it skips the padded rows (``csrc/args.h``, ``StepRows``)
  it ran faster than PyTorch's lengths path in all 372 configurations measured on 2026-12-06: the kernel, always,
  and a calibration is not asked (``calibrate.LENGTHS``).
- LSTM without ``lengths``, one thread: 0.57-1.03x, except training steps with B >= 16 and H <= 128
  (1.00-1.11x: oneDNN's backward GEMMs beat MKL's at these shapes on AMD): PyTorch's kernels there.
- Two threads (each direction on its own core): GRU 0.04-0.84x, LSTM 0.12-0.96x, except LSTM inference at
  H >= 512 with 1 < B < 64 (1.0-1.05x, re-measured: oneDNN splits those large per-step products well over two
  cores): PyTorch's kernels there unless with ``lengths`` (1.02x against PyTorch's 1.14x).
- More than two threads: the kernel splits each direction's batch rows over the threads (at least 8 rows a
  group), oneDNN/ATen use every core. Not measured on a many-core machine yet (``python -m
  benchmarks.kernel_matrix --threads 4 8 16`` measures it): PyTorch's kernels, never slower than ``nn.*`` by
  construction.
- AVX-512 (Intel Xeon with AVX-512, AVX512_BF16 and AMX, family 6 model 167, 2026-12-01): the same rule, but for
  the two-thread large-H inference exception, which is AVX2's only. One thread: LSTM inference 0.46-1.02x, LSTM
  training the same picture as AVX2 (0.78-0.92x at B = 1 or H >= 256, 0.89-1.29x at B >= 16 with H <= 128), GRU
  0.04-0.83x at inference and 0.03-1.04x in training steps but for B = 256 (T = 512, B = 64, H = 128 read 1.32
  and, re-measured alone, 0.93). Two threads: every cell 0.01-0.87x (``nn.*`` itself runs 1-25x slower on two
  threads than on one on that machine at these sizes). An older kernel measured 1.09-1.19x for one-thread LSTM on
  Zen 4; the current one does not.
- Re-measured on 2026-12-06 after the backward pass got faster (vectorized gradient loops, padded gate gradients):
  this table alone gives 0 of 372 cells above 1.02x ``nn.*`` on the AVX-512 Xeon and on an AVX2 CPU emulated there
  (PyTorch's kernels capped at AVX2 too), leaving 6 and 11 cells where the kernel was more than 5% faster to ``nn.*``
  (``benchmarks/results/kernel_matrix-spr-{avx512-vectorized,avx2-emulated}.json``).
- Inference rows are measured with the modules in eval mode (the kernel caches the prepared weights only there;
  the AVX2 inference rows above were measured in training mode, without that cache, so they understate the
  kernel: the AVX2 exception is conservative).
"""

from typing import List


def kernel_wins(cell: str, batch: int, hidden: int, steps: int, has_lengths: bool, threads: int, capability: str,
                training: bool) -> bool:
    """True when the CPU kernel is expected to be at least as fast as PyTorch's fused kernels.

    ``cell`` "LSTM" | "GRU" | "GRU_RESET_BEFORE" (Keras ``reset_after=False``, whose only other path is a Python
    time loop: always the kernel); ``batch``, ``hidden``, ``steps`` the layer's B, H, T; ``has_lengths`` a right-padded
    batch; ``threads`` ``torch.get_num_threads()``; ``capability`` "avx512" | "avx2"; ``training`` gradients needed.
    """
    if cell == "GRU_RESET_BEFORE":  # Keras reset_after=False: no fused kernel exists, the fallback is a time loop
        return True
    if threads > 2:
        return False
    if cell == "GRU":
        return not (threads == 1 and training and batch >= 256 and not has_lengths)
    if has_lengths:
        return True
    if threads == 1 and training and batch >= 16 and hidden <= 128:
        return False
    if threads == 2 and not training and hidden >= 512 and 1 < batch < 64 and capability == "avx2":
        return False
    return True


# An inference call smaller than this (multiply-adds counted twice, both directions, every layer) runs on the
# calling thread alone; a larger one gives each direction its own thread.
SPLIT_MIN_MFLOP = 60.0


def inference_threads(steps: int, batch: int, hidden: int, gates: int, input_sizes: List[int], threads: int) -> int:
    """How many threads an inference call of the kernel (no gradients, every layer in one call) uses: ``threads``
    (``torch.get_num_threads()``), or 1 when the call's work is under ``SPLIT_MIN_MFLOP``.

    Why: a request arriving after an idle spell finds the second thread asleep, and waking it costs more than it
    saves on a short call. Measured on a 2-core KVM guest (Intel Xeon, AVX-512, ``OMP_WAIT_POLICY=PASSIVE``), LSTM
    H = 128, 2 layers, B = 1, 2 ms between calls: T = 8 (10 MFLOP) 0.25 ms on one thread, 0.79 on two; T = 32
    (42 MFLOP) 0.55 against 1.05; T = 64 (84 MFLOP) 0.90 against 1.47; back to back two threads win from T = 16
    (T = 32: 0.48 -> 0.34 ms, T = 64: 0.85 -> 0.54). 60 MFLOP, about 0.6 ms of one core, is the cost of that
    wake-up: every TREC-length request (up to 37 tokens at H = 128) runs on one thread, every row of the ONNX
    Runtime matrix (B >= 1, T >= 64, H >= 128) keeps its threads. Results do not depend on it (the kernel gives
    the same bits on one and two threads). ``steps``, ``batch``, ``hidden`` the call's T, B, H; ``gates`` 4H
    (LSTM) or 3H (GRU); ``input_sizes`` each layer's input size.
    """
    flop = sum(2 * 2 * steps * batch * gates * (size + hidden) for size in input_sizes)
    return threads if flop >= SPLIT_MIN_MFLOP * 1e6 else 1
