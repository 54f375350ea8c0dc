"""The public blocks ``BiLSTM``, ``BiGRU``, ``BiRNN``: constructors, ``forward`` signatures and documentation.

Each is ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN(bidirectional=True)``'s API plus ``merge_mode`` and ``lengths``; the
shared parameters and the per-layer runner are in :mod:`models.blocks.base`. The constructors spell out their whole
signature (as ``nn.LSTM``'s do) rather than ``**kwargs``: ``help()``, IDEs, ``inspect.signature`` and TorchScript
read it, so the argument lists of the three classes and of ``_BiRNNBase`` repeat on purpose.
"""

from typing import Optional, Tuple, Union

import torch
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence

from ..cells import GRU, LSTM, RNN_RELU, RNN_TANH
from ..merge import MergeMode
from .base import _BiRNNBase
from .cpu_kernel.inference import fast_forward
from .validation import check_not_lengths

_SHAPES = """
    Shapes: ``T`` time steps, ``B`` sequences, ``L`` = ``num_layers``, ``H`` = ``hidden_size``, ``out`` the last
    layer's merged width (``2H`` for ``concat`` and ``None``, else ``H``; ``None`` gives ``(..., 2, H)``)."""


_ONE_STATE_IO = """
    Inputs: input, h_0, lengths
        * **input**: ``(T, B, F)``, ``(B, T, F)`` when ``batch_first=True``, ``(T, F)`` unbatched, or a
          ``PackedSequence`` (data ``(N, F)``, sorted or not) as for ``{nn}``. Floating point, the dtype and
          device of the parameters (a mismatch is a ``ValueError`` before any compute). ``B = 0`` gives empty
          outputs; ``T = 0`` is a ``ValueError``.
        * **h_0**: ``(2 * L, B, H)`` (``(2 * L, H)`` unbatched), the initial state of layer 0 forward, layer 0
          backward, layer 1 forward, ... Default: zeros. The second positional argument, as in ``{nn}``.
        * **lengths** (keyword only): ``(B,)`` integer, in ``[1, T]``, any order: the batch is right padded and
          only the first ``lengths[b]`` steps of row ``b`` are read (padding may hold anything, NaN included).
          Not with a ``PackedSequence``, which carries its own lengths. Unbatched input takes one length.
    {shapes}

    Outputs: output, h_n
        * **output**: ``(T, B, out)``, ``(B, T, out)`` when ``batch_first=True``, ``(T, out)`` unbatched; the
          last layer's merged output at every step; zero at padded steps. A ``PackedSequence`` when the input
          is one, with the input's ``batch_sizes``, ``sorted_indices`` and ``unsorted_indices`` and data
          ``(N, out)`` (``(N, 2, H)`` for ``None``).
        * **h_n**: ``(2 * L, B, H)`` (``(2 * L, H)`` unbatched) in ``{nn}``'s order (layer 0 forward, layer 0
          backward, ...): the state at each sequence's true end (forward direction) and after step 0 (backward
          direction), unmerged, in the caller's batch order.
"""
"""``BiGRU``'s and ``BiRNN``'s Inputs and Outputs (one state tensor); ``{nn}`` is ``nn.GRU`` or ``nn.RNN``."""


def _lstm_hx(hx: object) -> Tuple[Optional[Tensor], Optional[Tensor]]:
    """``hx`` of ``BiLSTM.forward`` -> ``(h_0, c_0)``; a tensor where the tuple belongs is a clear ``TypeError``."""
    if hx is None:
        return None, None
    if isinstance(hx, Tensor):
        check_not_lengths(hx, "hx")
        raise TypeError(f"hx for BiLSTM must be a tuple (h_0, c_0) as for nn.LSTM, got one tensor of shape "
                        f"{list(hx.shape)}")
    if not isinstance(hx, (tuple, list)) or len(hx) != 2 or not all(isinstance(t, Tensor) for t in hx):
        raise TypeError(f"hx for BiLSTM must be a tuple (h_0, c_0) of two tensors, got {type(hx).__name__}")
    return hx[0], hx[1]


def _check_call(input: object, hx: object, lengths: object) -> None:
    """Eager type checks of ``forward``'s arguments (TorchScript's signature does these itself)."""
    if not isinstance(input, (Tensor, PackedSequence)):
        raise TypeError(f"input must be a Tensor or a PackedSequence, got {type(input).__name__}")
    if lengths is not None and not isinstance(lengths, Tensor):
        raise TypeError(f"lengths must be an integer tensor (B,), got {type(lengths).__name__}: {lengths!r}")
    if hx is not None and not isinstance(hx, (Tensor, tuple, list)):
        raise TypeError(f"hx must be a tensor (h_0) or, for BiLSTM, a tuple (h_0, c_0); got {type(hx).__name__}")


class BiLSTM(_BiRNNBase):
    r"""Multi-layer bidirectional LSTM with a Keras merge mode after every layer; ``nn.LSTM(bidirectional=True)``'s
    constructor, forward, parameters and checks, plus ``merge_mode`` and ``lengths``.

    Each layer runs ``nn.LSTM``'s cell in both directions (``i, f, g, o`` gates; ``c' = f * c + i * g``,
    ``h' = o * tanh(c')``), then merges the two direction outputs with the layer's merge mode; the merged
    output is the next layer's input (after dropout, in training, except after the last layer). With
    ``merge_mode="concat"`` it is ``nn.LSTM(bidirectional=True)``: the same parameters (an ``nn.LSTM``
    state_dict loads as is), outputs and gradients.

    Args:
        input_size: ``F``, the number of features of the input.
        hidden_size: ``H``, the number of features of each direction's hidden and cell state.
        num_layers: number of stacked bidirectional layers. Default: 1.
        bias: whether the layers have ``b_ih`` and ``b_hh``. Default: True.
        batch_first: input and output as ``(B, T, *)`` instead of ``(T, B, *)``; not the states, and not
            unbatched input. Default: False.
        dropout: probability of dropout on each layer's merged output except the last layer's (training mode
            only). ``nn.LSTM``'s warning when ``num_layers == 1``. Default: 0.
        merge_mode: ``"concat" | "sum" | "mul" | "ave"`` after every layer, or a list with one per layer;
            ``None`` (last layer only) keeps the two directions apart. Default: ``"concat"``.
        device, dtype: of the parameters, as for ``nn.LSTM``.
        bidirectional: keyword only, must be True (accepted so ``nn.LSTM(..., bidirectional=True)`` arguments
            carry over).
        proj_size: keyword only, must be 0: ``nn.LSTM``'s projections are not supported (``ValueError``).

    Inputs: input, (h_0, c_0), lengths
        * **input**: ``(T, B, F)``, ``(B, T, F)`` when ``batch_first=True``, ``(T, F)`` unbatched, or a
          ``PackedSequence`` (data ``(N, F)``, sorted or not) as for ``nn.LSTM``. Floating point, the dtype and
          device of the parameters (a mismatch is a ``ValueError`` before any compute). ``B = 0`` gives empty
          outputs; ``T = 0`` is a ``ValueError``.
        * **h_0**, **c_0**: ``(2 * L, B, H)`` (``(2 * L, H)`` unbatched), the initial states of layer 0 forward,
          layer 0 backward, layer 1 forward, ... Default: zeros. ``hx`` is the second positional argument,
          as in ``nn.LSTM``; both or neither.
        * **lengths** (keyword only): ``(B,)`` integer, in ``[1, T]``, any order: the batch is right padded and
          only the first ``lengths[b]`` steps of row ``b`` are read (padding may hold anything, NaN included).
          Not with a ``PackedSequence``, which carries its own lengths. Unbatched input takes one length.
    {shapes}

    Outputs: output, (h_n, c_n)
        * **output**: ``(T, B, out)``, ``(B, T, out)`` when ``batch_first=True``, ``(T, out)`` unbatched; the
          last layer's merged output at every step; zero at padded steps. A ``PackedSequence`` when the input
          is one, with the input's ``batch_sizes``, ``sorted_indices`` and ``unsorted_indices`` and data
          ``(N, out)`` (``(N, 2, H)`` for ``None``).
        * **h_n**, **c_n**: ``(2 * L, B, H)`` (``(2 * L, H)`` unbatched) in ``nn.LSTM``'s order (layer 0 forward,
          layer 0 backward, ...): the states at each sequence's true end (forward direction) and after step 0
          (backward direction), unmerged, in the caller's batch order.

    Attributes:
        weight_ih_l[k], weight_ih_l[k]_reverse: ``(4H, F)`` for ``k = 0``, ``(4H, in_k)`` after, where ``in_k`` is
            layer ``k - 1``'s merged width (``2H`` for concat, ``H`` for sum/mul/ave); gates ``i|f|g|o``.
        weight_hh_l[k], weight_hh_l[k]_reverse: ``(4H, H)``.
        bias_ih_l[k], bias_hh_l[k] (and ``_reverse``): ``(4H,)``, when ``bias=True``.
        merge_modes: the merge mode of each layer. output_size: ``out``.
        all_weights: the weights per (layer, direction), nested as ``nn.LSTM.all_weights``.
        All weights and biases start from ``U(-1/sqrt(H), 1/sqrt(H))``, as ``nn.LSTM``'s.

    Example::

        >>> block = BiLSTM(10, 20, num_layers=2, merge_mode="sum")
        >>> output, (h_n, c_n) = block(torch.randn(5, 3, 10), (torch.zeros(4, 3, 20), torch.zeros(4, 3, 20)))
        >>> output.shape, h_n.shape                      # (T, B, H) for sum; (2L, B, H)
        (torch.Size([5, 3, 20]), torch.Size([4, 3, 20]))
        >>> output, _ = block(torch.randn(5, 3, 10), lengths=torch.tensor([5, 2, 4]))
    """

    MODE = LSTM.mode

    # The full signature again, not **kwargs: help(), inspect.signature and IDEs show nn.{LSTM,GRU,RNN}'s own.
    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        merge_mode: MergeMode = "concat",
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
        *,
        bidirectional: bool = True,
        proj_size: int = 0,
    ) -> None:
        if proj_size != 0:
            raise ValueError(f"proj_size={proj_size!r}: BiLSTM does not support nn.LSTM's projections; use "
                             f"proj_size=0 (the default)")
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, merge_mode, device, dtype,
                         bidirectional=bidirectional)

    def forward(
        self,
        input: Union[Tensor, PackedSequence],
        hx: Optional[Tuple[Tensor, Tensor]] = None,
        *,
        lengths: Optional[Tensor] = None,
    ) -> Tuple[Union[Tensor, PackedSequence], Tuple[Tensor, Tensor]]:
        if hx is None:  # serving: one C call, or None and the checked general path below
            fast = fast_forward(self, input, lengths)  # type: ignore[arg-type]
            if fast is not None:
                return fast[0], (fast[1], fast[2])
        _check_call(input, hx, lengths)
        h0, c0 = _lstm_hx(hx)
        if isinstance(input, PackedSequence):
            packed, h_n, c_n = self._run_packed(input, h0, c0, lengths, "hx[0]", "hx[1]")
            return packed, (h_n, c_n)
        out, h_n, c_n = self._run(input, h0, c0, lengths, self.batch_first, "hx[0]", "hx[1]")
        return out, (h_n, c_n)


class BiGRU(_BiRNNBase):
    r"""Multi-layer bidirectional GRU with a Keras merge mode after every layer; ``nn.GRU(bidirectional=True)``'s
    constructor, forward, parameters and checks, plus ``merge_mode`` and ``lengths``.

    Each layer runs ``nn.GRU``'s cell in both directions (``r, z, n`` gates with
    ``n = tanh(W_in x + b_in + r * (W_hn h + b_hn))``, Keras's ``reset_after=True``; ``h' = (1 - z) * n + z * h``;
    or, with ``reset_after=False``, Keras's original ``n = tanh(W_in x + b_in + W_hn (r * h) + b_hn)``), then merges the
    two direction outputs with the layer's merge mode; the merged output is the next layer's input (after dropout, in
    training, except after the last layer). With ``merge_mode="concat"`` it is ``nn.GRU(bidirectional=True)``: the same
    parameters (an ``nn.GRU`` state_dict loads as is), outputs and gradients.

    Args:
        input_size: ``F``, the number of features of the input.
        hidden_size: ``H``, the number of features of each direction's hidden state.
        num_layers: number of stacked bidirectional layers. Default: 1.
        bias: whether the layers have ``b_ih`` and ``b_hh``. Default: True.
        batch_first: input and output as ``(B, T, *)`` instead of ``(T, B, *)``; not the state, and not
            unbatched input. Default: False.
        dropout: probability of dropout on each layer's merged output except the last layer's (training mode
            only). ``nn.GRU``'s warning when ``num_layers == 1``. Default: 0.
        merge_mode: ``"concat" | "sum" | "mul" | "ave"`` after every layer, or a list with one per layer;
            ``None`` (last layer only) keeps the two directions apart. Default: ``"concat"``.
        device, dtype: of the parameters, as for ``nn.GRU``.
        bidirectional: keyword only, must be True (accepted so ``nn.GRU(..., bidirectional=True)`` arguments
            carry over).
        reset_after: keyword only. True: PyTorch's GRU (Keras ``reset_after=True``), on the fused kernels.
            False: Keras's original GRU (the reset gate applied before the recurrent product), on the CPU
            kernel (a second recurrent product per step), elsewhere by ``models/blocks/gru_reset_before.py``'s exact
            time loop (slower). Same parameters (names, shapes, gate order); ``b_hn`` lies outside the reset product, so
            ``bias_ih`` and ``bias_hh`` just add up (Keras's single bias maps to ``bias_ih``). Default: True.

    {one_state_io}

    Attributes:
        weight_ih_l[k], weight_ih_l[k]_reverse: ``(3H, F)`` for ``k = 0``, ``(3H, in_k)`` after, where ``in_k`` is
            layer ``k - 1``'s merged width (``2H`` for concat, ``H`` for sum/mul/ave); gates ``r|z|n``.
        weight_hh_l[k], weight_hh_l[k]_reverse: ``(3H, H)``.
        bias_ih_l[k], bias_hh_l[k] (and ``_reverse``): ``(3H,)``, when ``bias=True``.
        merge_modes: the merge mode of each layer. output_size: ``out``.
        all_weights: the weights per (layer, direction), nested as ``nn.GRU.all_weights``.
        All weights and biases start from ``U(-1/sqrt(H), 1/sqrt(H))``, as ``nn.GRU``'s.

    Example::

        >>> block = BiGRU(10, 20, num_layers=2, merge_mode="ave", batch_first=True)
        >>> output, h_n = block(torch.randn(3, 5, 10), torch.zeros(4, 3, 20))
        >>> output.shape, h_n.shape                      # (B, T, H) for ave; (2L, B, H)
        (torch.Size([3, 5, 20]), torch.Size([4, 3, 20]))
        >>> output, h_n = block(torch.randn(3, 5, 10), lengths=torch.tensor([5, 2, 4]))
    """

    MODE = GRU.mode

    # The full signature again, not **kwargs: help(), inspect.signature and IDEs show nn.{LSTM,GRU,RNN}'s own.
    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        merge_mode: MergeMode = "concat",
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
        *,
        bidirectional: bool = True,
        reset_after: bool = True,
    ) -> None:
        if not isinstance(reset_after, bool):
            raise TypeError(f"reset_after must be a bool, got {type(reset_after).__name__}: {reset_after!r}")
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, merge_mode, device, dtype,
                         bidirectional=bidirectional)
        self.reset_after = reset_after

    def extra_repr(self) -> str:
        return super().extra_repr() + ("" if self.reset_after else ", reset_after=False")

    def forward(
        self, input: Union[Tensor, PackedSequence], hx: Optional[Tensor] = None, *, lengths: Optional[Tensor] = None
    ) -> Tuple[Union[Tensor, PackedSequence], Tensor]:
        if hx is None:  # serving: one C call, or None and the checked general path below
            fast = fast_forward(self, input, lengths)  # type: ignore[arg-type]
            if fast is not None:
                return fast[0], fast[1]
        _check_call(input, hx, lengths)
        return _forward_one_state(self, input, hx, lengths)


class BiRNN(_BiRNNBase):
    r"""Multi-layer bidirectional Elman RNN (Keras ``SimpleRNN``) with a Keras merge mode after every layer;
    ``nn.RNN(bidirectional=True)``'s constructor, forward, parameters and checks, plus ``merge_mode`` and
    ``lengths``.

    Each layer runs ``nn.RNN``'s cell in both directions (``h' = act(W_ih x + b_ih + W_hh h + b_hh)``, ``act``
    tanh or relu), then merges the two direction outputs with the layer's merge mode; the merged output is the
    next layer's input (after dropout, in training, except after the last layer). With
    ``merge_mode="concat"`` it is ``nn.RNN(bidirectional=True)``: the same parameters (an ``nn.RNN`` state_dict
    loads as is), outputs and gradients. It always runs on PyTorch's fused kernels.

    Args:
        input_size: ``F``, the number of features of the input.
        hidden_size: ``H``, the number of features of each direction's hidden state.
        num_layers: number of stacked bidirectional layers. Default: 1.
        nonlinearity: ``"tanh"`` or ``"relu"``. Default: ``"tanh"``.
        bias: whether the layers have ``b_ih`` and ``b_hh``. Default: True.
        batch_first: input and output as ``(B, T, *)`` instead of ``(T, B, *)``; not the state, and not
            unbatched input. Default: False.
        dropout: probability of dropout on each layer's merged output except the last layer's (training mode
            only). ``nn.RNN``'s warning when ``num_layers == 1``. Default: 0.
        merge_mode: ``"concat" | "sum" | "mul" | "ave"`` after every layer, or a list with one per layer;
            ``None`` (last layer only) keeps the two directions apart. Default: ``"concat"``.
        device, dtype: of the parameters, as for ``nn.RNN``.
        bidirectional: keyword only, must be True (accepted so ``nn.RNN(..., bidirectional=True)`` arguments
            carry over).

    {one_state_io}

    Attributes:
        weight_ih_l[k], weight_ih_l[k]_reverse: ``(H, F)`` for ``k = 0``, ``(H, in_k)`` after, where ``in_k`` is
            layer ``k - 1``'s merged width (``2H`` for concat, ``H`` for sum/mul/ave).
        weight_hh_l[k], weight_hh_l[k]_reverse: ``(H, H)``.
        bias_ih_l[k], bias_hh_l[k] (and ``_reverse``): ``(H,)``, when ``bias=True``.
        nonlinearity: ``"tanh"`` or ``"relu"``. merge_modes: the merge mode of each layer. output_size: ``out``.
        all_weights: the weights per (layer, direction), nested as ``nn.RNN.all_weights``.
        All weights and biases start from ``U(-1/sqrt(H), 1/sqrt(H))``, as ``nn.RNN``'s.

    Example::

        >>> block = BiRNN(10, 20, num_layers=2, nonlinearity="relu", merge_mode=["sum", None])
        >>> output, h_n = block(torch.randn(5, 10))     # unbatched (T, F)
        >>> output.shape, h_n.shape                      # (T, 2, H) for None; (2L, H)
        (torch.Size([5, 2, 20]), torch.Size([4, 20]))
    """

    # The full signature again, not **kwargs: help(), inspect.signature and IDEs show nn.{LSTM,GRU,RNN}'s own.
    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        nonlinearity: str = "tanh",
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        merge_mode: MergeMode = "concat",
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
        *,
        bidirectional: bool = True,
    ) -> None:
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        self.MODE = RNN_TANH.mode if nonlinearity == "tanh" else RNN_RELU.mode  # read by the base constructor
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, merge_mode, device, dtype,
                         bidirectional=bidirectional)
        self.nonlinearity = nonlinearity

    def forward(
        self, input: Union[Tensor, PackedSequence], hx: Optional[Tensor] = None, *, lengths: Optional[Tensor] = None
    ) -> Tuple[Union[Tensor, PackedSequence], Tensor]:
        _check_call(input, hx, lengths)
        return _forward_one_state(self, input, hx, lengths)


for _block, _nn in ((BiGRU, "nn.GRU"), (BiRNN, "nn.RNN")):
    _block.__doc__ = _block.__doc__.replace("    {one_state_io}\n", _ONE_STATE_IO.lstrip("\n").replace("{nn}", _nn))
for _block in (BiLSTM, BiGRU, BiRNN):
    _block.__doc__ = _block.__doc__.replace("    {shapes}", _SHAPES)


def _forward_one_state(
    block: _BiRNNBase, input: Union[Tensor, PackedSequence], hx: Optional[Tensor], lengths: Optional[Tensor]
) -> Tuple[Union[Tensor, PackedSequence], Tensor]:
    """``BiGRU``/``BiRNN`` forward in eager mode (one state tensor)."""
    if hx is not None and not isinstance(hx, Tensor):
        raise TypeError(f"hx for {type(block).__name__} must be a tensor h_0, got {type(hx).__name__}")
    if isinstance(input, PackedSequence):
        packed, h_n, _ = block._run_packed(input, hx, None, lengths, "hx", "hx")
        return packed, h_n
    out, h_n, _ = block._run(input, hx, None, lengths, block.batch_first, "hx", "hx")
    return out, h_n
