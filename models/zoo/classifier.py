"""``SequenceClassifier``: tokens or features -> bidirectional block -> pooling over valid steps -> logits.

Pipeline (batch-first throughout, ``B`` sequences of ``T`` steps)::

    tokens (B, T) --Embedding(padding_idx)--+
                                            +-> word dropout, dropout -> BiLSTM/BiGRU/BiRNN (merge mode per layer)
    features (B, T, F) --Linear-------------+        -> pooling over valid steps -> dropout -> Linear -> (B, C)

Valid steps:
- token ids: every step whose id is not ``padding_idx`` (Keras ``mask_zero=True``). Valid steps are moved
  to the front (``compact_valid_steps``) before the block runs, so left padding (Keras ``pad_sequences``
  default), right padding and padding in the middle all give the same logits. An explicit ``lengths``
  replaces the padding-id mask: the first ``lengths[b]`` steps of row ``b`` are valid (right padding).
- features: all steps, or the first ``lengths[b]`` steps of row ``b`` when ``lengths`` is given.

Pooling (``pooling=``):
- ``"last"``: Keras ``return_sequences=False``: the last layer's merge mode applied to the forward
  direction's state at each row's true end and the backward direction's state at step 0,
  ``merge_directions(h_n[-2], h_n[-1], mode)``; ``None`` as the last mode concatenates them;
- ``"mean"`` / ``"max"``: over valid steps of the merged output;
- ``"attention"``: learned additive attention over valid steps (``AdditiveAttentionPool``).

Empty rows (every token is ``padding_idx``, or ``lengths[b] == 0``): the pooled vector is zero, so the row's
logits are the head's bias, the same for every such row; never NaN.
"""

from typing import Any, List, Optional, Tuple

import torch
from torch import Tensor, nn

from ..arguments import check_choice, check_positive_int, check_probability
from ..blocks.factory import block_for_cell
from ..blocks.validation import checking_values, host_bounds, validate_inputs
from ..cells import CELLS
from ..merge import MergeMode, merged_size, resolve_merge_modes
from .pooling import AdditiveAttentionPool, compact_valid_steps, last_state, lengths_to_mask, masked_max, masked_mean
from .token_ids import check_token_dtype, check_token_range

POOLINGS = ("last", "mean", "max", "attention")
"""Ways to reduce the merged sequence ``(B, T, D)`` to ``(B, D)``."""


class _NoAttention(nn.Module):
    """Stand-in for ``AdditiveAttentionPool`` when ``pooling != "attention"`` (same signature, no parameters)."""

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        return masked_mean(x, mask)


class SequenceClassifier(nn.Module):
    """Bidirectional-RNN sequence classifier; see the module docstring for the pipeline.

    Args:
        num_classes: number of logits.
        vocab_size: token input ``(B, T)`` int64 through ``nn.Embedding(vocab_size, embed_dim, padding_idx)``.
        input_size: feature input ``(B, T, input_size)`` float through ``nn.Linear(input_size, embed_dim)``.
            Exactly one of ``vocab_size`` / ``input_size``.
        embed_dim: embedding / projection size, the block's input size.
        cell: ``"lstm" | "gru" | "rnn" | "rnn_relu"``.
        hidden_size, num_layers: of the bidirectional block.
        merge_mode: one merge mode for every layer or a list with one per layer (``"concat" | "sum" | "mul"
            | "ave"``; ``None`` allowed for the last layer: both directions are concatenated for pooling).
        dropout: between recurrent layers. embed_dropout: after the embedding / projection, per element.
        word_dropout: in training, the whole embedding vector of each step is zeroed with this probability (the
            step stays valid: the block sees "a word was here"), the kept ones scaled by ``1 / (1 - p)``;
            in ``[0, 1)``. A regulariser for small text datasets (Iyyer et al. 2015 drop words).
        head_dropout: before the linear head.
        pooling: ``"last" | "mean" | "max" | "attention"``. attention_size: of the attention scorer.
        padding_idx: the padding token id (token input only).

    Forward: ``x`` tokens ``(B, T)`` or features ``(B, T, F)``, optional ``lengths (B,)`` -> logits
    ``(B, num_classes)``.
    """

    __constants__ = ["token_input", "padding_idx", "pooling", "last_merge_mode", "rnn_output_size", "word_dropout"]
    token_input: bool
    last_merge_mode: Optional[str]

    def __init__(
        self,
        num_classes: int,
        vocab_size: Optional[int] = None,
        input_size: Optional[int] = None,
        embed_dim: int = 128,
        cell: str = "lstm",
        hidden_size: int = 128,
        num_layers: int = 2,
        merge_mode: MergeMode = "concat",
        dropout: float = 0.0,
        embed_dropout: float = 0.0,
        head_dropout: float = 0.0,
        pooling: str = "last",
        attention_size: int = 64,
        padding_idx: int = 0,
        word_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if (vocab_size is None) == (input_size is None):
            raise ValueError(
                f"give exactly one of vocab_size (token ids) or input_size (float features), got "
                f"vocab_size={vocab_size!r}, input_size={input_size!r}"
            )
        check_positive_int("num_classes", num_classes)
        check_positive_int("embed_dim", embed_dim)
        check_positive_int("hidden_size", hidden_size)
        check_positive_int("num_layers", num_layers)
        check_positive_int("attention_size", attention_size)
        check_choice("cell", cell, CELLS)
        check_choice("pooling", pooling, POOLINGS)
        for name, value in (("dropout", dropout), ("embed_dropout", embed_dropout), ("head_dropout", head_dropout)):
            check_probability(name, value)
        if isinstance(word_dropout, bool) or not isinstance(word_dropout,
                                                            (int, float)) or not 0.0 <= word_dropout < 1.0:
            raise ValueError(f"word_dropout must be a float in [0, 1), got {word_dropout!r}")
        modes: List[Optional[str]] = resolve_merge_modes(merge_mode, num_layers)

        self.num_classes = num_classes
        self.vocab_size = vocab_size
        self.input_size = input_size
        self.embed_dim = embed_dim
        self.cell = cell
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.merge_modes = modes
        self.last_merge_mode = modes[-1]
        self.pooling = pooling
        self.token_input = vocab_size is not None
        # Plain ints (0 when unused) for forward's input checks: TorchScript types an Optional attribute by value.
        self.vocab_limit: int = vocab_size if vocab_size is not None else 0
        self.feature_size: int = input_size if input_size is not None else 0

        if vocab_size is not None:
            check_positive_int("vocab_size", vocab_size)
            if isinstance(padding_idx, bool) or not isinstance(padding_idx, int) or not 0 <= padding_idx < vocab_size:
                raise ValueError(f"padding_idx must be an int in [0, vocab_size) = [0, {vocab_size}), "
                                 f"got {padding_idx!r}")
            # One attribute for both kinds of input: each maps (B, T[, F]) -> (B, T, embed_dim).
            self.embed: nn.Module = nn.Embedding(vocab_size, embed_dim, padding_idx=padding_idx)
        else:
            check_positive_int("input_size", input_size)
            self.embed = nn.Linear(input_size, embed_dim)  # type: ignore[arg-type]
        self.padding_idx = int(padding_idx)
        self.embed_dropout = nn.Dropout(embed_dropout)
        self.word_dropout = float(word_dropout)

        self.rnn: nn.Module = block_for_cell(cell, embed_dim, hidden_size, num_layers, batch_first=True,
                                             dropout=dropout,
                                             merge_mode=modes)
        self.rnn_output_size = merged_size(self.last_merge_mode, hidden_size)
        # Only "attention" owns a scorer; the others keep a parameter-free stand-in (one TorchScript signature).
        self.attention: nn.Module = (
            AdditiveAttentionPool(self.rnn_output_size, attention_size) if pooling == "attention" else _NoAttention()
        )
        self.head_dropout = nn.Dropout(head_dropout)
        self.head = nn.Linear(self.rnn_output_size, num_classes)

    def extra_repr(self) -> str:
        source = f"vocab_size={self.vocab_size}" if self.token_input else f"input_size={self.input_size}"
        extra = f", word_dropout={self.word_dropout}" if self.word_dropout else ""
        return f"{source}, cell={self.cell!r}, merge_mode={self.merge_modes}, pooling={self.pooling!r}{extra}"

    def forward(self, x: Tensor, lengths: Optional[Tensor] = None) -> Tensor:
        """``x`` tokens ``(B, T)`` int or features ``(B, T, F)`` float; ``lengths (B,)`` optional -> ``(B, C)``."""
        if self.token_input:
            if x.dim() != 2:
                raise ValueError(f"token input x must be an integer tensor (B, T), got dtype {x.dtype} and shape "
                                 f"{list(x.shape)}")
            check_token_dtype(x, self.vocab_limit, "x (token ids)")
        else:
            if x.dim() != 3 or x.shape[2] != self.feature_size:
                raise ValueError(f"feature input x must be a float tensor (B, T, input_size) with input_size="
                                 f"{self.feature_size}, got shape {list(x.shape)}")
            if not x.is_floating_point():
                raise TypeError(f"feature input x must be a floating-point tensor (B, T, {self.feature_size}), got "
                                f"dtype {x.dtype}")
        seq_len = x.shape[1]
        if lengths is not None:
            if lengths.dim() != 1 or lengths.shape[0] != x.shape[0]:
                raise ValueError(f"lengths must have shape (B,) = ({x.shape[0]},), got {list(lengths.shape)}")
            if lengths.is_floating_point() or lengths.is_complex() or lengths.dtype == torch.bool:
                raise TypeError(f"lengths must be an integer tensor (B,) with values in [0, T] = [0, {seq_len}], "
                                f"got dtype {lengths.dtype}")
            lengths = lengths.to(x.device).long()
        self._check_values(x, lengths, seq_len)
        valid: Optional[Tensor] = None
        if lengths is not None:
            valid = lengths_to_mask(lengths, seq_len)
        elif self.token_input:
            valid = x != self.padding_idx
            # Eager, on CPU: ids without padding (a single request, or a batch of equal lengths) need neither the
            # compaction nor the block's lengths path (the same logits, to float rounding; a 10-token request
            # spent ~0.2 ms of its ~1 ms there). Not under TorchScript, tracing, compile or export (no
            # data-dependent branch in a graph), nor on CUDA (bool() would wait for the device).
            if (not torch.jit.is_scripting() and not torch.jit.is_tracing() and not torch.compiler.is_compiling()
                    and x.device.type == "cpu" and bool(valid.all())):
                valid = None

        h = self.embed(x)                                                              # (B, T, E)
        if self.training and self.word_dropout > 0.0:
            keep = torch.rand(h.shape[0], h.shape[1], 1, device=h.device) >= self.word_dropout   # (B, T, 1)
            h = h * keep.to(h.dtype) / (1.0 - self.word_dropout)
        if self.training:  # (in eval mode dropout is the identity: skip the module call)
            h = self.embed_dropout(h)
        steps: Optional[Tensor] = None  # right-padded lengths (B,) for the block; None: every step is valid
        if valid is not None:
            if lengths is None:
                # Padding ids anywhere: valid steps first, in order; rows with no valid step get length 1.
                h, steps = compact_valid_steps(h, valid)
            else:
                steps = lengths.clamp(min=1)                                           # already right padding
        out, h_n = self._run_rnn(h, steps)                                             # (B, T, D[, 2, H])
        if self.pooling == "last":
            pooled = last_state(h_n, self.last_merge_mode)
        else:
            if steps is None:
                mask = torch.ones(x.shape[0], seq_len, dtype=torch.bool, device=x.device)
            else:
                mask = lengths_to_mask(steps, seq_len)
            if self.last_merge_mode is None:
                out = out.flatten(2)
            if self.pooling == "mean":
                pooled = masked_mean(out, mask)
            elif self.pooling == "max":
                pooled = masked_max(out, mask)
            else:
                pooled = self.attention(out, mask)
        pooled = pooled.reshape(pooled.shape[0], self.rnn_output_size)
        if valid is not None:  # rows without a valid step pool to zero
            pooled = pooled.masked_fill(~valid.any(1).unsqueeze(1), 0.0)
        if self.training:
            pooled = self.head_dropout(pooled)
        return self.head(pooled)

    def _check_values(self, x: Tensor, lengths: Optional[Tensor], seq_len: int) -> None:
        """Token ids in ``[0, vocab_size)`` and ``lengths`` in ``[0, T]``, their bounds read in one device-to-host
        copy (one sync per batch on CUDA); skipped where ``checking_values()`` is False (``validate_inputs(False)``,
        a ``torch.compile`` trace)."""
        if not checking_values():
            return
        ids = self.token_input and x.numel() > 0
        given = lengths is not None and lengths.numel() > 0
        read: List[Tensor] = []
        if ids:
            read.append(x)
        if lengths is not None and given:
            read.append(lengths)
        if len(read) == 0:
            return
        bounds = host_bounds(read)
        if ids:
            check_token_range(bounds[0], bounds[1], self.vocab_limit, "x (token ids)")
        if given and (bounds[-2] < 0 or bounds[-1] > seq_len):
            raise ValueError(f"lengths must lie in [0, T] = [0, {seq_len}], got values from {bounds[-2]} to "
                             f"{bounds[-1]}")

    def _run_rnn(self, h: Tensor, lengths: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
        """Run the block; returns ``(output, h_n)`` whatever the cell (the LSTM's state is ``(h_n, c_n)``).
        ``lengths`` are in ``[1, T]`` by construction here, so the block need not read them again."""
        if torch.jit.is_scripting():
            out, state = self.rnn(h, lengths=lengths)
        else:
            out, state = self._run_rnn_trusted(h, lengths)
        if isinstance(state, Tensor):
            return out, state
        return out, state[0]

    @torch.jit.unused
    def _run_rnn_trusted(self, h: Tensor, lengths: Optional[Tensor]) -> Tuple[Tensor, Any]:
        with validate_inputs(False):
            return self.rnn(h, lengths=lengths)
