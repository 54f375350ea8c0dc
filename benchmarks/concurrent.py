"""Prototype: the two directions of each layer run concurrently, one intra-op thread each (CPU).

The forward and backward directions of a bidirectional layer are independent. PyTorch's fused
bidirectional call runs them one after the other, each on all intra-op threads; with small per-step
matrices (B x H @ H x GH) a 2-thread OpenMP team spends much of each step at barriers. Here each direction
is one single-direction fused call (oneDNN for LSTM, ATen's loop for GRU) on its own OS thread with
``torch.set_num_threads(1)``: the main thread runs the forward direction, a worker thread the backward
one, and the backward pass (a custom ``autograd.Function``) runs the two directions' gradients the same way.

``ConcurrentBiRNN`` wraps an existing ``models`` block and uses its parameters (no lengths, no hx; it
returns ``output, None``), so it can be timed side by side with the block itself.
"""

from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, Callable, List, Optional, Sequence, Tuple

import torch
from torch import _VF, Tensor, nn

from models.merge import merge_directions

_POOL = ThreadPoolExecutor(max_workers=1, thread_name_prefix="birnn-direction")


def _single_direction(mode: str, x: Tensor, weights: Sequence[Tensor], has_biases: bool) -> Tensor:
    """One fused single-direction layer on time-major ``x``; returns the output ``(T, B, H)``."""
    hidden = weights[1].shape[1]
    h0 = x.new_zeros(1, x.shape[1], hidden)
    if mode == "LSTM":
        return _VF.lstm(x, [h0, h0], list(weights), has_biases, 1, 0.0, False, False, False)[0]
    return _VF.gru(x, h0, list(weights), has_biases, 1, 0.0, False, False, False)[0]


def run_pair(first: Callable[[], Any], second: Callable[[], Any], threads: int) -> Tuple[Any, Any]:
    """Run ``first`` here and ``second`` on the worker thread, one intra-op thread each; restore ``threads``."""
    grad = torch.is_grad_enabled()
    inference = torch.is_inference_mode_enabled()

    def on_worker() -> Any:
        torch.set_num_threads(1)
        with torch.inference_mode(inference), torch.set_grad_enabled(grad):
            return second()

    torch.set_num_threads(1)
    try:
        future = _POOL.submit(on_worker)
        a = first()
        b = future.result()
    finally:
        torch.set_num_threads(threads)
    return a, b


class _TwoDirections(torch.autograd.Function):
    """Both directions of one layer, concurrently in forward and in backward."""

    @staticmethod
    def forward(ctx: Any, mode: str, has_biases: bool, threads: int, n_weights: int, x_fw: Tensor, x_bw: Tensor,
                *weights: Tensor) -> Tuple[Tensor, Tensor]:
        def build(x: Tensor, w: Sequence[Tensor]) -> Tuple[List[Tensor], Tensor]:
            with torch.enable_grad():
                leaves = [t.detach().requires_grad_(t.requires_grad) for t in (x, *w)]
                return leaves, _single_direction(mode, leaves[0], leaves[1:], has_biases)

        fw, bw = run_pair(lambda: build(x_fw, weights[:n_weights]), lambda: build(x_bw, weights[n_weights:]),
                          threads)
        ctx.graphs = (fw, bw)
        ctx.threads = threads
        return fw[1].detach(), bw[1].detach()

    @staticmethod
    def backward(ctx: Any, grad_fw: Tensor, grad_bw: Tensor) -> Tuple[Optional[Tensor], ...]:
        def grads(graph: Tuple[List[Tensor], Tensor], grad_out: Tensor) -> List[Optional[Tensor]]:
            leaves, out = graph
            wanted = [t for t in leaves if t.requires_grad]
            found = iter(torch.autograd.grad(out, wanted, grad_out, allow_unused=True))
            return [next(found) if t.requires_grad else None for t in leaves]

        fw, bw = run_pair(lambda: grads(ctx.graphs[0], grad_fw), lambda: grads(ctx.graphs[1], grad_bw), ctx.threads)
        ctx.graphs = None
        return (None, None, None, None, fw[0], bw[0], *fw[1:], *bw[1:])


class ConcurrentBiRNN(nn.Module):
    """Runs a ``models.BiLSTM``/``BiGRU`` (no lengths) with its two directions per layer on two threads."""

    def __init__(self, block: nn.Module, threads: int) -> None:
        super().__init__()
        self.block = block
        self.threads = threads

    def forward(self, x: Tensor) -> Tuple[Tensor, None]:
        block = self.block
        for layer in range(block.num_layers):
            wf = block._layer_weights(layer, 0)
            wb = block._layer_weights(layer, 1)
            x_rev = torch.flip(x, [0])
            if torch.is_grad_enabled():
                out_f, out_b = _TwoDirections.apply(block.mode, block.bias, self.threads, len(wf), x, x_rev, *wf, *wb)
            else:
                out_f, out_b = run_pair(partial(_single_direction, block.mode, x, wf, block.bias),
                                        partial(_single_direction, block.mode, x_rev, wb, block.bias), self.threads)
            x = merge_directions(out_f, torch.flip(out_b, [0]), block.merge_modes[layer])
        return x, None
