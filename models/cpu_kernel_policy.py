"""Which path a block takes on CPU: the project's kernel or PyTorch's fused kernels. The one place that decides.

The rule comes from the matrix measured by ``python -m benchmarks.kernel_matrix`` (``benchmarks/RESULTS.md``,
"Kernel or PyTorch"): the kernel is taken only where it ran faster than ``nn.LSTM``/``nn.GRU(bidirectional=True)``
at the same thread count. It is a pure function of its arguments, so the same run makes the same choice after
a restart (bit-exact resume needs that: an autotuner could choose differently).
"""


def kernel_wins(cell: str, batch: int, hidden: int, steps: int, has_lengths: bool, threads: int, capability: str,
                training: bool) -> bool:
    """True when the CPU kernel is expected to be at least as fast as PyTorch's fused kernels.

    ``cell`` "LSTM" | "GRU"; ``batch``, ``hidden``, ``steps`` the layer's B, H, T; ``has_lengths`` a right-padded
    batch (PyTorch's path then costs two single-direction calls and gathers, the kernel nothing extra);
    ``threads`` ``torch.get_num_threads()``; ``capability`` "avx512" | "avx2"; ``training`` gradients needed.
    """
    if threads > 2:
        # The kernel runs one thread per direction; oneDNN/ATen use every core. Not measured above 2 threads
        # on a many-core machine yet: PyTorch's kernels, never slower than nn.* by construction.
        return False
    return True
