"""``_BiRNNBase.run`` (the scriptable forward with one return type) and the checks at the top of ``_run``, against
``nn.LSTM``/``nn.GRU`` with the same weights and against the refusals' exact words: the survivors of issue 37's
mutation run on ``models/blocks/base.py`` (each applied by hand fails a test here). float32 on the CPU, PyTorch's
own path (the CPU kernel disabled), tolerance 2e-5."""

import contextlib
import inspect
import re
import warnings
from typing import Iterator, List, Optional, Tuple

import pytest
import torch
from torch import nn
from torch.backends.cudnn import rnn as cudnn_rnn
from torch.nn.utils import parametrize

from models import BiGRU, BiLSTM
from models.blocks import cpu_kernel
from models.blocks.base import _BiRNNBase
from models.blocks.cpu_kernel import inference as cpu_kernel_inference
from models.blocks.factory import block_for_cell

TOL = {"atol": 2e-5, "rtol": 2e-5}


def raises(error: type, message: str):  # type: ignore[no-untyped-def]
    return pytest.raises(error, match="^" + re.escape(message) + "$")


def bilstm_and_nn_lstm(seed: int) -> Tuple[BiLSTM, nn.LSTM]:
    """A one-layer ``BiLSTM(3, 4)`` drawn from ``seed`` and the ``nn.LSTM(3, 4, bidirectional=True)`` holding its
    weights: the reference the tests compare with."""
    torch.manual_seed(seed)
    block = BiLSTM(3, 4)
    reference = nn.LSTM(3, 4, bidirectional=True)
    reference.load_state_dict(block.state_dict())
    return block, reference


@pytest.mark.parametrize("batch_first", [False, True])
def test_run_of_a_bilstm_is_nn_lstm_with_the_given_states_and_layout(batch_first: bool) -> None:
    torch.manual_seed(0)
    block = BiLSTM(3, 4, num_layers=2, batch_first=batch_first)
    reference = nn.LSTM(3, 4, num_layers=2, batch_first=batch_first, bidirectional=True)
    reference.load_state_dict(block.state_dict())
    x = torch.randn(2, 5, 3) if batch_first else torch.randn(5, 2, 3)
    h0, c0 = torch.randn(4, 2, 4), torch.randn(4, 2, 4)
    with cpu_kernel.disabled():
        out, h_n, c_n = block.run(x, h0, c0)
    want, (want_h, want_c) = reference(x, (h0, c0))
    torch.testing.assert_close(out, want, **TOL)
    torch.testing.assert_close(h_n, want_h, **TOL)
    torch.testing.assert_close(c_n, want_c, **TOL)


def test_run_of_a_bigru_is_nn_gru_and_its_c_n_is_its_h_n() -> None:
    torch.manual_seed(1)
    block = BiGRU(3, 4)
    reference = nn.GRU(3, 4, bidirectional=True)
    reference.load_state_dict(block.state_dict())
    x, h0 = torch.randn(5, 2, 3), torch.randn(2, 2, 4)
    with cpu_kernel.disabled():
        out, h_n, c_n = block.run(x, h0)
    want, want_h = reference(x, h0)
    torch.testing.assert_close(out, want, **TOL)
    torch.testing.assert_close(h_n, want_h, **TOL)
    assert torch.equal(c_n, h_n)


def test_run_with_lengths_is_nn_lstm_on_each_sequence_alone() -> None:
    block, reference = bilstm_and_nn_lstm(2)
    x = torch.randn(5, 2, 3)
    with cpu_kernel.disabled():
        out, h_n, _ = block.run(x, lengths=torch.tensor([5, 3]))
    want, (want_h, _) = reference(x[:3, 1:2])
    torch.testing.assert_close(out[:3, 1:2], want, **TOL)
    torch.testing.assert_close(h_n[:, 1:2], want_h, **TOL)
    assert torch.equal(out[3:, 1], torch.zeros(2, 8))


def test_run_takes_c0_for_an_lstm_and_refuses_it_for_a_gru() -> None:
    x, state = torch.randn(5, 2, 3), torch.zeros(2, 2, 4)
    out, _, c_n = BiLSTM(3, 4).run(x, state, state)
    assert out.shape == (5, 2, 8) and c_n.shape == (2, 2, 4)
    gru = BiGRU(3, 4)
    with raises(ValueError, f"c0 is the LSTM's cell state; {gru.mode} blocks take h0 only"):
        gru.run(x, state, state)


def test_run_names_h0_and_c0_in_their_refusals() -> None:
    block = BiLSTM(3, 4)
    x, good, bad = torch.randn(5, 2, 3), torch.zeros(2, 2, 4), torch.zeros(2, 3, 4)
    with pytest.raises(ValueError, match=r"^h0 must have shape "):
        block.run(x, bad, good)
    with pytest.raises(ValueError, match=r"^c0 must have shape "):
        block.run(x, good, bad)


def test_run_refuses_lengths_passed_where_h0_belongs_naming_h0() -> None:
    with pytest.raises(TypeError, match=r"^h0 got a 1-D integer tensor \(dtype torch.int64, shape \[2\]\), which "):
        BiLSTM(3, 4).run(torch.randn(5, 2, 3), torch.tensor([5, 3]))


def test_a_float64_input_to_a_float32_block_is_refused_before_any_compute() -> None:
    message = ("input dtype (torch.float64) does not match the block's weight dtype (torch.float32); convert the "
               "input, input.to(torch.float32), or the block, block.to(torch.float64)")
    for block in (BiLSTM(3, 4), BiLSTM(3, 4, merge_mode="sum")):
        with raises(ValueError, message):
            block.run(torch.randn(5, 2, 3, dtype=torch.float64))


@pytest.mark.parametrize("lengths", [torch.tensor(3), torch.tensor([3])])
def test_unbatched_input_takes_one_length_as_shape_nothing_or_one(lengths: torch.Tensor) -> None:
    block, reference = bilstm_and_nn_lstm(3)
    x = torch.randn(5, 3)
    with cpu_kernel.disabled():
        out, h_n, _ = block.run(x, lengths=lengths)
    want, (want_h, _) = reference(x[:3])
    torch.testing.assert_close(out[:3], want, **TOL)
    torch.testing.assert_close(h_n, want_h, **TOL)


@pytest.mark.parametrize("merge_mode", ["concat", "sum"])
@pytest.mark.parametrize("with_lengths", [False, True])
def test_an_empty_batch_gives_empty_outputs_and_states(merge_mode: str, with_lengths: bool) -> None:
    block = BiLSTM(3, 4, num_layers=2, merge_mode=merge_mode)
    lengths = torch.zeros(0, dtype=torch.int64) if with_lengths else None
    for disabled in (False, True):
        with cpu_kernel.disabled() if disabled else torch.no_grad():
            out, h_n, c_n = block.run(torch.randn(5, 0, 3), lengths=lengths)
        assert out.shape == (5, 0, block.output_size)
        assert h_n.shape == c_n.shape == (4, 0, 4)


def test_a_batch_of_one_with_lengths_is_nn_lstm_on_the_cut_sequence() -> None:
    block, reference = bilstm_and_nn_lstm(4)
    x = torch.randn(5, 1, 3)
    for disabled in (False, True):
        with cpu_kernel.disabled() if disabled else torch.no_grad():
            out, h_n, _ = block.run(x, lengths=torch.tensor([3]))
        with torch.no_grad():
            want, (want_h, _) = reference(x[:3])
        torch.testing.assert_close(out[:3], want, **TOL)
        torch.testing.assert_close(h_n, want_h, **TOL)
        assert torch.equal(out[3:], torch.zeros(2, 1, 8))


# -- the flat weight list TorchScript reads, and flatten_parameters' cuDNN call -----------------------------------


def flat_parameters(block: nn.Module) -> List[torch.Tensor]:
    return [getattr(block, name) for name in block._flat_weights_names]


def test_the_flat_weights_follow_construction_assignment_and_dtype_changes() -> None:
    """TorchScript reads ``_flat_weights`` (it cannot look parameters up by name): the module's own parameters in
    ``nn.LSTM``'s flat order, after construction, a new ``Parameter``, ``.double()``."""
    block = BiLSTM(3, 4, num_layers=2, merge_mode="sum")
    assert len(block._flat_weights) == 16
    assert all(a is b for a, b in zip(block._flat_weights, flat_parameters(block), strict=True))
    block.weight_hh_l1_reverse = nn.Parameter(torch.zeros(16, 4))
    assert block._flat_weights[13] is block.weight_hh_l1_reverse
    block.double()
    assert all(a is b for a, b in zip(block._flat_weights, flat_parameters(block), strict=True))
    assert {w.dtype for w in block._flat_weights} == {torch.float64}


def test_dtype_changes_reach_a_parametrized_weight() -> None:
    """A parametrization (``torch.nn.utils.parametrize``) is a child module of the block: ``.double()`` must
    convert it too, so the parametrized block runs in float64 as ``nn.LSTM`` with the same weights."""
    block, reference = bilstm_and_nn_lstm(5)
    for module in (block, reference):
        parametrize.register_parametrization(module, "weight_hh_l0", _Halved())
        module.double()
    assert block.parametrizations.weight_hh_l0.original.dtype == torch.float64
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    with cpu_kernel.disabled():
        out, (h_n, c_n) = block(x)
    want, (want_h, want_c) = reference(x)
    for ours, theirs in ((out, want), (h_n, want_h), (c_n, want_c)):
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)


class _Halved(nn.Module):
    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * 0.5


class _LooksCuda(torch.Tensor):
    """A CPU tensor that says it is on CUDA: ``flatten_parameters``' checks and cuDNN call, without a GPU."""

    @property
    def is_cuda(self) -> bool:  # type: ignore[override]
        return True


class FakeCudnn:
    """cuDNN as ``flatten_parameters`` sees it: ``is_acceptable``, ``device_of``, the flatten switch and the
    flatten call (recorded, never run); ``acceptable`` and ``flatten`` turn the first and the switch off."""

    MODES = {"RNN_RELU": 0, "RNN_TANH": 1, "LSTM": 2, "GRU": 3}   # cudnnRNNMode_t

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: List[tuple] = []
        self.acceptable, self.flatten = True, True
        # Reads the tensor as cuDNN's does (None raises), answers ``acceptable``.
        monkeypatch.setattr(torch.backends.cudnn, "is_acceptable", lambda tensor: tensor.is_cuda and self.acceptable)
        monkeypatch.setattr(torch.cuda, "device_of", self.device_of)
        monkeypatch.setattr(torch, "_use_cudnn_rnn_flatten_weight", lambda: self.flatten)
        monkeypatch.setattr(torch, "_cudnn_rnn_flatten_weight", lambda *args: self.calls.append(args))
        monkeypatch.setattr(cudnn_rnn, "get_cudnn_mode", self.MODES.__getitem__)

    @staticmethod
    def device_of(tensor: torch.Tensor) -> contextlib.AbstractContextManager:
        assert tensor.is_cuda, "device_of takes a CUDA tensor here"
        return contextlib.nullcontext()

    def flattened(self, module: nn.Module, swap: Optional[dict] = None) -> List[tuple]:
        """``module.flatten_parameters()`` with its flat weights looking CUDA (``swap``: index -> another entry);
        the calls it made, the tensors of each as the positions of their memory in the module's flat parameter
        list (``nn.LSTM`` passes its ``_flat_weights``, the blocks their parameters: the same memory)."""
        self.calls.clear()
        weights = [w.as_subclass(_LooksCuda) for w in module._flat_weights]
        for index, entry in (swap or {}).items():
            weights[index] = entry(weights) if callable(entry) else entry
        module._flat_weights = weights
        module.flatten_parameters()
        position = {w.data_ptr(): i for i, w in enumerate(flat_parameters(module))}
        return [([position[w.data_ptr()] for w in call[0]], *call[1:]) for call in self.calls]


@pytest.fixture
def cudnn(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeCudnn]:
    yield FakeCudnn(monkeypatch)


@pytest.mark.parametrize("batch_first", [False, True])
def test_an_all_concat_stack_flattens_as_nn_lstm_does(cudnn: FakeCudnn, batch_first: bool) -> None:
    """One cuDNN call for the whole stack with ``nn.LSTM.flatten_parameters``' own arguments."""
    block = BiLSTM(3, 4, num_layers=2, batch_first=batch_first)
    reference = nn.LSTM(3, 4, num_layers=2, batch_first=batch_first, bidirectional=True)
    ours = cudnn.flattened(block)
    assert ours == [(list(range(16)), 4, 3, 2, 4, 0, 2, batch_first, True)]
    assert ours == cudnn.flattened(reference)


@pytest.mark.parametrize(("cell", "mode"), [("gru", 3), ("rnn", 1), ("rnn_relu", 0)])
def test_a_per_layer_merge_flattens_each_layer_as_its_own_nn_module(cudnn: FakeCudnn, cell: str, mode: int) -> None:
    """One call per layer (``cudnn_call_sites``), each with ``nn.GRU``/``nn.RNN``'s arguments for that layer alone:
    two weights per direction without biases, the layer's own input width (``H`` after ``sum``)."""
    block = block_for_cell(cell, 3, 4, 2, merge_mode=["sum", "concat"], bias=False)
    assert cudnn.flattened(block) == [([0, 1, 2, 3], 2, 3, mode, 4, 0, 1, False, True),
                                      ([4, 5, 6, 7], 2, 4, mode, 4, 0, 1, False, True)]


@pytest.mark.parametrize("case", ["not_cuda", "not_a_tensor", "other_dtype", "not_acceptable", "aliased",
                                  "switched_off", "one_missing", "reset_before"])
def test_flatten_parameters_does_nothing_where_cudnn_cannot_take_the_weights(cudnn: FakeCudnn, case: str) -> None:
    """As ``nn.LSTM``: a weight off CUDA, not a tensor, of another dtype, refused by cuDNN, two weights sharing
    memory, flattening switched off, the list being rebuilt; and never for ``reset_after=False``, which never
    calls cuDNN. The odd weight is the fourth (not the first, which the others are compared with)."""
    block = BiGRU(3, 4, reset_after=False) if case == "reset_before" else BiLSTM(3, 4)
    swap = {"not_cuda": {3: lambda w: w[3].as_subclass(torch.Tensor)},
            "not_a_tensor": {3: "bias_hh_l0"},
            "other_dtype": {3: lambda w: w[3].double().as_subclass(_LooksCuda)},
            "aliased": {3: lambda w: w[2]}}.get(case)
    cudnn.acceptable = case != "not_acceptable"
    cudnn.flatten = case != "switched_off"
    if case == "one_missing":
        block._flat_weights = block._flat_weights[:-1]
    assert cudnn.flattened(block, swap) == []
    if case == "reset_before":
        assert cudnn.flattened(BiGRU(3, 4)) == [(list(range(8)), 4, 3, 3, 4, 0, 1, False, True)]


# -- the constructor ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [BiLSTM, BiGRU])
def test_the_shared_constructors_defaults_are_the_blocks_and_nn_lstms(cls: type) -> None:
    """The argument lists repeat on purpose (``models/blocks/modules.py``): the shared constructor's defaults are
    the public blocks' and ``nn.LSTM``'s (a subclass that leaves them out gets what ``nn.LSTM`` would)."""
    ours = inspect.signature(_BiRNNBase.__init__).parameters
    theirs = inspect.signature(cls.__init__).parameters
    shared = [name for name in ours if name != "self"]
    assert [(name, ours[name].default) for name in shared] == [(name, theirs[name].default) for name in shared]
    built = nn.LSTM(3, 4, bidirectional=True)  # nn.LSTM's signature is *args: its defaults as built
    assert (ours["num_layers"].default, ours["bias"].default, ours["batch_first"].default,
            ours["dropout"].default) == (built.num_layers, built.bias, built.batch_first, built.dropout)
    assert ours["merge_mode"].default == "concat" and ours["bidirectional"].default is True


@pytest.mark.parametrize(("args", "message"), [((0, 4), "input_size must be a positive int, got 0"),
                                               ((3, 0), "hidden_size must be a positive int, got 0"),
                                               ((3, 4, 0), "num_layers must be a positive int, got 0")])
def test_each_size_is_refused_naming_it(args: tuple, message: str) -> None:
    with raises(ValueError, message):
        BiLSTM(*args)


@pytest.mark.parametrize(("num_layers", "dropout", "warns"), [(1, 0.0, False), (2, 0.5, False), (1, 0.5, True)])
def test_the_dropout_warning_only_for_dropout_on_a_single_layer(num_layers: int, dropout: float, warns: bool) -> None:
    """``nn.LSTM``'s rule: dropout acts between layers, so only ``dropout > 0`` with one layer warns."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        BiLSTM(3, 4, num_layers, dropout=dropout)
        nn.LSTM(3, 4, num_layers, dropout=dropout, bidirectional=True)
    ours, theirs = ([str(w.message) for w in caught if w.filename != nn.modules.rnn.__file__],
                    [str(w.message) for w in caught if w.filename == nn.modules.rnn.__file__])
    assert len(ours) == int(warns) and ours == theirs


@pytest.mark.parametrize("cell", [BiLSTM, BiGRU])
def test_an_empty_batch_with_lengths_stays_off_the_packed_path(monkeypatch: pytest.MonkeyPatch, cell: type) -> None:
    """The packed path (CUDA's, taken here on the CPU by a patched ``_packed_path``) cannot pack an empty batch:
    ``B = 0`` runs on the fused kernels with empty outputs and states, wherever the packed path would apply."""
    block = cell(3, 4, num_layers=2, merge_mode="sum")
    monkeypatch.setattr(type(block), "_packed_path", lambda self, x: True)
    out, h_n, c_n = block.run(torch.randn(5, 0, 3), lengths=torch.zeros(0, dtype=torch.int64))
    assert out.shape == (5, 0, 4) and h_n.shape == c_n.shape == (4, 0, 4)


def test_run_of_a_bilstm_with_h0_alone_starts_the_cell_state_from_zeros() -> None:
    """``run(x, h0)`` without ``c0``: the LSTM's cell state starts at zero (not at ``h0``), as ``nn.LSTM`` given
    ``(h0, zeros)``."""
    block, reference = bilstm_and_nn_lstm(6)
    x, h0 = torch.randn(5, 2, 3), torch.randn(2, 2, 4)
    for disabled in (False, True):
        with cpu_kernel.disabled() if disabled else torch.no_grad():
            out, h_n, c_n = block.run(x, h0)
        with torch.no_grad():
            want, (want_h, want_c) = reference(x, (h0, torch.zeros(2, 2, 4)))
        torch.testing.assert_close(out, want, **TOL)
        torch.testing.assert_close(h_n, want_h, **TOL)
        torch.testing.assert_close(c_n, want_c, **TOL)


def test_the_speed_policy_is_told_whether_the_batch_has_lengths(monkeypatch: pytest.MonkeyPatch) -> None:
    """``cpu_kernel.applies`` (the policy: kernel or PyTorch's kernels) answers per case, and lengths is one of its
    cases (``policy.kernel_wins``: an LSTM training step at B >= 16 on one thread goes to the kernel only with
    lengths): the block tells it whether the call has lengths."""
    asked: List[bool] = []
    original = cpu_kernel.applies

    def recording(x: torch.Tensor, mode: str, hidden_size: int = 0, has_lengths: bool = False,
                  training: bool = False) -> bool:
        asked.append(has_lengths)
        return original(x, mode, hidden_size, has_lengths, training)

    monkeypatch.setattr(cpu_kernel, "applies", recording)
    block, x = BiLSTM(3, 4), torch.randn(5, 16, 3)
    block.run(x, lengths=torch.tensor([5] * 15 + [3]))
    block.run(x)
    assert asked == [True, False]


@pytest.mark.parametrize("merge_mode", ["concat", ["sum", "concat"]])
def test_host_lengths_are_moved_to_the_inputs_device(merge_mode: object) -> None:
    """On CUDA a caller may pass host ``lengths`` with a GPU input: off the packed path ``_run`` moves them to the
    input's device, or the layers' masks mix devices. The meta device is a second device on any machine (mixing
    a host tensor with a meta one raises): a meta block and input with host lengths run to outputs and states of
    the right shapes on the input's device."""
    block = BiLSTM(3, 4, num_layers=2, merge_mode=merge_mode).to("meta")
    out, h_n, c_n = block.run(torch.empty(5, 3, 3, device="meta"), lengths=torch.tensor([5, 2, 4]))
    assert out.device.type == h_n.device.type == c_n.device.type == "meta"
    assert out.shape == (5, 3, 8) and h_n.shape == c_n.shape == (4, 3, 4)


needs_kernel = pytest.mark.skipif(not cpu_kernel.available(), reason="CPU kernel not built (see test_kernel_builds)")


@needs_kernel
@pytest.mark.parametrize(("training", "dropout", "direct"), [
    (False, 0.0, True), (False, 0.5, True), (True, 0.0, True),  # no dropout to apply: one call for all the layers
    (True, 0.5, False),                                         # dropout between layers: layer by layer
])
def test_the_kernels_direct_inference_path_is_taken_exactly_when_no_dropout_applies(
        training: bool, dropout: float, direct: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """``_run_kernel_layers`` without gradients takes ``cpu_kernel/inference.py``'s one call for the whole stack
    unless dropout is to be applied (training with ``dropout > 0``), and hands it everything: a 2-layer BiLSTM
    with biases, per-layer merges, ragged lengths and non-zero states against PyTorch's path
    (``cpu_kernel.disabled()``), to float32 rounding (5e-6 measured 1e-7)."""
    calls: List[int] = []
    original = cpu_kernel_inference.run_layers

    def recording(*args: object) -> object:
        calls.append(1)
        return original(*args)

    monkeypatch.setattr(cpu_kernel_inference, "run_layers", recording)
    torch.manual_seed(0)
    block = BiLSTM(3, 5, 2, dropout=dropout, merge_mode=["sum", "concat"]).train(training)
    x, lengths = torch.randn(6, 4, 3), torch.tensor([6, 2, 4, 1])
    h0, c0 = torch.randn(4, 4, 5), torch.randn(4, 4, 5)
    with torch.no_grad(), cpu_kernel.forced():
        got = block.run(x, h0, c0, lengths)
    assert calls == ([1] if direct else [])
    if direct:
        with torch.no_grad(), cpu_kernel.disabled():
            want = block.run(x, h0, c0, lengths)
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g, w, atol=5e-6, rtol=5e-6)


@needs_kernel
@pytest.mark.parametrize("lengths", [None, torch.tensor([6, 2, 4])])
def test_the_kernel_training_path_drops_out_between_layers_and_never_after_the_last(lengths: object) -> None:
    """Training with ``dropout=1.0`` on the kernel's layer-by-layer path: the second layer's input is all zeros
    (so the result does not depend on ``x``), and the last layer's output is not dropped (not all zeros)."""
    torch.manual_seed(0)
    block = BiLSTM(3, 5, 2, dropout=1.0).train()
    h0 = torch.randn(4, 3, 5)
    runs = []
    for x in (torch.randn(6, 3, 3, requires_grad=True), torch.randn(6, 3, 3, requires_grad=True)):
        with cpu_kernel.forced():
            runs.append(block.run(x, h0, h0, lengths))
    (out, h_n, c_n), (out2, h_n2, c_n2) = runs
    assert bool((out[0] != 0).any()) and bool((h_n[2:] != 0).all())
    for a, b in ((out, out2), (h_n[2:], h_n2[2:]), (c_n[2:], c_n2[2:])):
        torch.testing.assert_close(a, b, atol=0.0, rtol=0.0)
    assert not torch.equal(h_n[:2], h_n2[:2])  # the first layer did see x


def test_the_kernel_training_path_makes_its_step_mask_on_the_inputs_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """``_run_kernel_layers`` masks padded steps with ``torch.arange(T, device=x.device)``: made on the host, the
    mask would mix devices with a GPU input's lengths. The meta device stands for the GPU (mixing a host tensor
    with a meta one raises), with a stand-in for the kernel's layer (which runs on the host only) that returns
    meta outputs of the layer's shapes and records the devices it is handed."""
    seen: List[str] = []

    def layer(mode: str, x: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor, lengths: torch.Tensor,
              weights: List[torch.Tensor], has_biases: bool) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        seen.append(f"{x.device.type} {h0.device.type} {c0.device.type} {lengths.device.type}")
        steps, batch, hidden = x.shape[0], x.shape[1], h0.shape[2]
        return x.new_empty(steps, batch, 2, hidden), h0.new_empty(2, batch, hidden), c0.new_empty(2, batch, hidden)

    monkeypatch.setattr(cpu_kernel, "fused_layer", layer)
    block = BiLSTM(3, 4, num_layers=2).to("meta")
    x = torch.empty(5, 3, 3, device="meta", requires_grad=True)  # a gradient: the layer-by-layer path
    h0 = torch.empty(4, 3, 4, device="meta")
    out, h_n, c_n = block._run_kernel_layers(x, torch.tensor([5, 2, 4], device="meta"), h0, h0,
                                             block._weights_now())
    assert seen == ["meta meta meta meta"] * 2
    assert out.device.type == h_n.device.type == c_n.device.type == "meta"
    assert out.shape == (5, 3, 8) and h_n.shape == c_n.shape == (4, 3, 4)


@needs_kernel
@pytest.mark.parametrize("fill", [float("nan"), float("inf"), 1e30])
def test_what_padding_holds_reaches_neither_outputs_nor_gradients_on_the_kernel_training_path(fill: float) -> None:
    """Padded steps may hold anything, from the first padded step (``t == lengths[b]``) on: the kernel's
    training path zeroes them, so that outputs and every gradient are those of a zero-padded input, exactly
    (NaN, inf or a huge value there would otherwise reach the weight gradients through the input products)."""
    torch.manual_seed(0)
    block = BiLSTM(3, 5, 2)
    lengths = torch.tensor([6, 2, 4, 1])
    clean = torch.randn(6, 4, 3)
    clean[2:, 1], clean[4:, 2], clean[1:, 3] = 0.0, 0.0, 0.0
    dirty = clean.clone()
    dirty[2:, 1], dirty[4:, 2], dirty[1:, 3] = fill, fill, fill
    results = []
    for x in (clean, dirty):
        x = x.clone().requires_grad_()
        with cpu_kernel.forced():
            out, h_n, c_n = block.run(x, lengths=lengths)
        grads = torch.autograd.grad(out.sum() + h_n.sum() + c_n.sum(), [x] + list(block.parameters()))
        results.append([out, h_n, c_n, *grads])
    for got, want in zip(results[1], results[0], strict=True):
        torch.testing.assert_close(got, want, atol=0.0, rtol=0.0)


@needs_kernel
@pytest.mark.parametrize(("features", "lengths"), [(1, [2, 5]), (3, [2, 5]), (1, [1, 3, 2])])
def test_the_kernel_training_path_sorts_any_batch_of_two_rows_or_more(
        features: int, lengths: List[int], monkeypatch: pytest.MonkeyPatch) -> None:
    """From two rows on (whatever the feature count) each kernel layer gets the rows longest first, and the
    caller gets them back in its order: against PyTorch's path (``cpu_kernel.disabled()``) to float32 rounding."""
    seen: List[List[int]] = []
    original = cpu_kernel.fused_layer

    def recording(mode: str, x: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor, given: torch.Tensor,
                  *args: object) -> object:
        seen.append(given.tolist())
        return original(mode, x, h0, c0, given, *args)

    monkeypatch.setattr(cpu_kernel, "fused_layer", recording)
    torch.manual_seed(0)
    block = BiLSTM(features, 4, 2)
    x = torch.randn(5, len(lengths), features, requires_grad=True)
    h0 = torch.randn(4, len(lengths), 4)
    with cpu_kernel.forced():
        got = block.run(x, h0, h0, torch.tensor(lengths))
    assert seen == [sorted(lengths, reverse=True)] * 2
    with cpu_kernel.disabled():
        want = block.run(x, h0, h0, torch.tensor(lengths))
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)
