"""``models.quantize``: the int8 blocks (``models/blocks/quantized.py``, the kernel's ``csrc/q8_*.h``).

- the int8 product: every product the kernel has here (AMX, AVX-512 VNNI, AVX2, the portable loop; the avx2 library's
  AVX-VNNI where the CPU has it) gives torch's integer product, bit for bit, and a whole stack gives the same bits on
  each;
- exactness: every layer's output and state equal the dequantized reference (``reference_layer``: the same
  quantization rule, the int8 weights dequantized, float64 accumulation) to float32 rounding, step by step
  (teacher-forced), for every cell, merge mode, lengths and layer count; the stack equals its layers chained;
- the portable path (no kernel) gives the kernel's outputs;
- the documented error against the float32 block (docs/zoo-and-deployment.md, "int8 quantization");
- the classifier, state_dict, compile works; TorchScript, trace, torch.export and ``export`` refuse with the reason;
- bad input is refused as the float blocks refuse it.
"""

from typing import List, Optional

import pytest
import torch
from helpers.optional import optional_import
from torch import Tensor, nn

from models import BiGRU, BiLSTM, BiRNN, SequenceClassifier, export, quantize
from models.blocks import cpu_kernel
from models.blocks.cpu_kernel import q8
from models.blocks.quantized import QuantizedBiRNN, quantize_rows, reference_layer
from models.merge import merge_stacked

_, needs_onnxscript = optional_import("onnxscript",
                                     "the ONNX export needs onnx and onnxscript (pip install -e '.[onnx]')")
needs_kernel = pytest.mark.skipif(not cpu_kernel.available(), reason="CPU kernel not built on this machine")

BLOCKS = {
    "lstm": lambda f, h, n, **kw: BiLSTM(f, h, n, **kw),
    "gru": lambda f, h, n, **kw: BiGRU(f, h, n, **kw),
    "rnn": lambda f, h, n, **kw: BiRNN(f, h, n, **kw),
    "rnn_relu": lambda f, h, n, **kw: BiRNN(f, h, n, nonlinearity="relu", **kw),
}
MERGES: List[List[Optional[str]]] = [["concat"], ["sum"], ["mul"], ["ave"], [None], ["ave", "concat"],
                                     ["concat", "sum"], ["mul", None]]


def block(cell: str, input_size: int = 6, hidden: int = 12, layers: int = 1, seed: int = 0, **options) -> nn.Module:
    torch.manual_seed(seed)
    return BLOCKS[cell](input_size, hidden, layers, **options).eval()


def one_layer(q: QuantizedBiRNN, layer: int, merge: Optional[str]) -> QuantizedBiRNN:
    """Layer ``layer`` of ``q`` as a one-layer int8 block with merge ``merge``."""
    size = getattr(q, f"weight_ih_l{layer}").shape[2]
    single = QuantizedBiRNN(q.mode, size, q.hidden_size, 1, [merge], q.bias)
    for name in ("weight_ih", "weight_hh", "scale_ih", "scale_hh", *(("bias_ih", "bias_hh") if q.bias else ())):
        getattr(single, f"{name}_l0").copy_(getattr(q, f"{name}_l{layer}"))
    return single


# -- the product ---------------------------------------------------------------------------------------------------
def kernel_products() -> List[str]:
    """The int8 products this machine's kernel has (``["scalar", "avx2", "vnni"]`` on an AVX-512 VNNI CPU, and
    ``"amx"`` after them on one with AMX-INT8)."""
    lib = q8.library()
    return q8.products(lib) if lib is not None else []


@needs_kernel
@pytest.mark.parametrize("rows", [1, 3, 4, 5, 9])
@pytest.mark.parametrize("gates", [37, 53])     # 48 and 64 channels padded: one row's 32-channel tile, and its tail
@pytest.mark.parametrize("inputs", [21, 23])    # K not a multiple of 2 or 4: both layouts' padding is exercised
def test_int8_product_is_exact(rows: int, gates: int, inputs: int):
    gen = torch.Generator().manual_seed(rows)
    w = torch.randint(-127, 128, (gates, inputs), generator=gen, dtype=torch.int8)
    a = torch.randint(-127, 128, (rows, inputs), generator=gen, dtype=torch.int16)
    a[0] = 127 if rows > 1 else a[0]            # the largest products: no saturation anywhere
    a[-1] = -127
    w[0] = -127
    w[1] = 127
    expected = a.long() @ w.long().T
    for product in kernel_products():
        for bits in q8.vector_bits_of(q8.library()) if product in ("vnni", "amx") else (0,):  # every VNNI width here
            got = q8.gemm(a, w, product, bits)
            assert torch.equal(got[:, :gates].long(), expected), (product, bits)
            assert not got[:, gates:].any(), (product, bits)


@needs_kernel
@pytest.mark.parametrize("rows,inputs", [(16, 64), (17, 65), (33, 130), (48, 127), (64, 256), (15, 300)])
def test_int8_product_is_exact_in_whole_tiles_and_their_tails(rows: int, inputs: int):
    # Sizes where the AMX product runs tiles: 16-row tiles and 64-input chunks, with the rows and inputs past the last
    # whole tile or chunk on vpdpbusd (17, 65, 127, 130); 15 rows: no tile at all. Every product: the same integers.
    gen = torch.Generator().manual_seed(rows * inputs)
    w = torch.randint(-127, 128, (200, inputs), generator=gen, dtype=torch.int8)
    a = torch.randint(-127, 128, (rows, inputs), generator=gen, dtype=torch.int16)
    a[0], a[-1], w[0], w[-1] = 127, -127, 127, -127   # the largest sums of either sign: no saturation anywhere
    expected = a.long() @ w.long().T
    for product in kernel_products():
        for bits in q8.vector_bits_of(q8.library()) if product in ("vnni", "amx") else (0,):
            got = q8.gemm(a, w, product, bits)
            assert torch.equal(got[:, :200].long(), expected), (product, bits)
            assert not got[:, 200:].any(), (product, bits)


@needs_kernel
def test_the_fastest_product_is_the_cpus():
    lib = q8.library()
    capability = cpu_kernel.capability()
    flags = cpu_kernel.build._cpu_flags()
    vnni = (capability == "avx512" and "avx512_vnni" in flags) or (capability == "avx2" and "avx_vnni" in flags)
    # Linux since 5.16 grants the tile state on asking
    amx = capability == "avx512" and vnni and "amx_int8" in flags and "amx_tile" in flags
    assert q8.best_product(lib) == ("amx" if amx else "vnni" if vnni else "avx2")
    with pytest.raises(ValueError, match="product must be one of"):
        q8.gemm(torch.zeros((1, 4), dtype=torch.int16), torch.zeros((16, 4), dtype=torch.int8), "sse")
    with pytest.raises(ValueError, match=r"vector_bits must be one of \(0, 256, 512\), got 128"):
        q8.gemm(torch.zeros((1, 4), dtype=torch.int16), torch.zeros((16, 4), dtype=torch.int8), "scalar", 128)


@pytest.mark.skipif("avx2" not in cpu_kernel.build.supported_capabilities(), reason="needs a CPU with AVX2 and FMA")
def test_the_avx2_library_runs_vpdpbusd_on_avx_vnni():
    # The avx2 library (what BIRNN_ZOO_CPU_CAPABILITY=avx2 and every AVX2-only CPU load) offers the VNNI product where
    # the CPU has AVX-VNNI (Intel from Alder Lake and Sierra Forest, AMD from Zen 5; the build needs GCC 11 or Clang
    # 12), on ymm only: the same integers as its AVX2 product, so whole stacks give the same bits.
    lib = q8._declared(cpu_kernel.build.load("avx2"))
    vnni = "avx_vnni" in cpu_kernel.build._cpu_flags()
    assert q8.best_product(lib) == ("vnni" if vnni else "avx2")
    assert q8.products(lib) == ["scalar", "avx2"] + (["vnni"] if vnni else [])
    gen = torch.Generator().manual_seed(5)
    for rows, gates, inputs in [(1, 37, 21), (4, 53, 23), (9, 512, 130), (17, 200, 127)]:
        w = torch.randint(-127, 128, (gates, inputs), generator=gen, dtype=torch.int8)
        a = torch.randint(-127, 128, (rows, inputs), generator=gen, dtype=torch.int16)
        a[0], a[-1], w[0], w[-1] = 127, -127, 127, -127   # the largest sums of either sign: no saturation anywhere
        expected = a.long() @ w.long().T
        for product in q8.products(lib):
            got = q8.gemm(a, w, product, lib=lib)
            assert torch.equal(got[:, :gates].long(), expected), (product, rows, gates, inputs)
            assert not got[:, gates:].any(), product
    if vnni:
        with pytest.raises(ValueError, match=r"vector_bits=512 needs the avx512 library; this one has \(0, 256\)"):
            q8.gemm(a, w, "vnni", 512, lib=lib)
    q = quantize(block("lstm", input_size=37, hidden=20, layers=2, merge_mode=["ave", "concat"]))
    x = torch.randn(7, 5, 37, generator=torch.Generator().manual_seed(8))
    lengths = torch.tensor([7, 3, 6, 5, 1])
    h0 = torch.zeros((4, 5, 20))
    runs = [q8.forward_stack(lib, q.mode, x, lengths, h0, h0, q.kernel_plan(lib, product), 20, threads)
            for product in q8.products(lib) for threads in (1, 2)]  # two: a direction a thread
    for outputs in runs[1:]:
        for got, want in zip(outputs, runs[0], strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=0)


@needs_kernel
@pytest.mark.parametrize("cell", list(BLOCKS))
@pytest.mark.parametrize("inputs,hidden,batch", [(37, 20, 5), (70, 72, 18)])  # the second: AMX tiles and tails
def test_every_product_gives_the_same_bits(cell: str, inputs: int, hidden: int, batch: int):
    # Whole stacks (two layers, lengths, x with an all-zero row and a NaN row): the same integers in every product,
    # so the same outputs and states bit for bit, NaN where NaN. At 18 rows and 72 units the AMX product runs one
    # 16-row tile and a 64-input chunk at the longest steps, vpdpbusd for the rest and for the steps of fewer rows.
    q = quantize(block(cell, input_size=inputs, hidden=hidden, layers=2, merge_mode=["mul", "concat"]))
    x = torch.randn(7, batch, inputs, generator=torch.Generator().manual_seed(8))
    x[2, 1] = 0.0
    x[4, 3, 5] = float("nan")
    lengths = torch.tensor([7, 3, 6, 5, 1] + [7, 6] * ((batch - 5) // 2) + [7] * ((batch - 5) % 2))
    lib = q8.library()
    h0 = torch.zeros((4, batch, hidden))
    runs = {}
    for product in kernel_products():
        stack = q.kernel_plan(lib, product)
        assert stack.product == product
        for threads in (1, 2):  # two: a direction a thread, each with its own tile state
            runs[(product, threads)] = q8.forward_stack(lib, q.mode, x, lengths, h0, h0 if cell == "lstm" else None,
                                                        stack, hidden, threads)
    first = runs[(kernel_products()[0], 1)]
    assert first[0].isnan().any() and not first[0].isnan().all()
    for product, outputs in runs.items():
        for got, want in zip(outputs, first, strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True, msg=str(product))


def test_quantize_rows_rule():
    q, scale = quantize_rows(torch.tensor([[0.5, -1.0, 0.25, 0.0], [0.0, 0.0, 0.0, 0.0],
                                           [1.0, float("nan"), 0.0, 0.0]]))
    assert q[0].tolist() == [64.0, -127.0, 32.0, 0.0]    # 63.5 rounds half to even: 64
    assert scale[0].item() == pytest.approx(1 / 127, rel=1e-7)
    assert q[1].tolist() == [0.0] * 4 and scale[1].item() == 0.0
    assert q[2].tolist() == [0.0] * 4 and torch.isnan(scale[2])
    # A row whose 127 / m overflows float32 (m < 3.7e-37): round(v / m * 127), zero staying zero.
    q, scale = quantize_rows(torch.tensor([[1e-38, -1e-38, 0.0, 4e-39]]))
    assert q[0].tolist() == [127.0, -127.0, 0.0, 51.0]   # 4e-39 / 1e-38 * 127 = 50.8
    assert scale[0].item() == pytest.approx(1e-38 / 127, rel=1e-3)  # subnormal: fewer digits


@needs_kernel
@pytest.mark.parametrize("cell", list(BLOCKS))
def test_tiny_inputs_give_the_same_finite_outputs_on_the_kernel_and_the_portable_path(cell: str):
    """Input rows below 3.7e-37 (where 127 / max overflows), a zero in each, against input weights near 1e37, so
    that their products matter: both paths quantize them by the same rule, so their outputs agree (as in
    ``test_portable_path_gives_the_kernels_outputs``) and hold no NaN."""
    float_block = block(cell, layers=2, merge_mode=["sum", "concat"])
    with torch.no_grad():
        float_block.weight_ih_l0.mul_(1e38)   # init within 1 / sqrt(H): below 3e37, finite
        float_block.weight_ih_l0_reverse.mul_(1e38)
    q = quantize(float_block)
    x = torch.randn(6, 3, 6, generator=torch.Generator().manual_seed(4)) * 1e-38
    x[:, :, 2] = 0.0
    out, _ = q(x)
    with cpu_kernel.disabled():
        portable, _ = q(x)
    assert torch.isfinite(out).all() and torch.isfinite(portable).all()
    assert (out - q(torch.zeros_like(x))[0]).abs().amax() > 0.05  # the tiny inputs do move the outputs
    torch.testing.assert_close(portable, out, rtol=0, atol=2e-4)


# -- exactness against the dequantized reference -------------------------------------------------------------------
def check_exact(cell: str, merges: List[Optional[str]], lengths: Optional[Tensor], bias: bool = True,
                inputs: int = 6, hidden: int = 12) -> None:
    layers = len(merges)
    float_block = block(cell, input_size=inputs, hidden=hidden, layers=layers,
                        merge_mode=merges if layers > 1 else merges[0], bias=bias)
    q = quantize(float_block)
    torch.manual_seed(1)
    x = torch.randn(9, 3, inputs)
    h0 = torch.randn(2 * layers, 3, hidden) * 0.5
    c0 = torch.randn(2 * layers, 3, hidden) * 0.5
    hx = (h0, c0) if cell == "lstm" else h0
    out, state = q(x, hx, lengths=lengths)
    h_n = state[0] if cell == "lstm" else state
    layer_in = x
    for layer in range(layers):
        pair = slice(2 * layer, 2 * layer + 2)
        raw_block = one_layer(q, layer, None)
        raw, _ = raw_block(layer_in, (h0[pair], c0[pair]) if cell == "lstm" else h0[pair], lengths=lengths)
        ref, ref_h, _ = reference_layer(q.mode, layer_in, lengths, h0[pair], c0[pair] if cell == "lstm" else None,
                                        q.layer_weights(layer), teacher=raw)
        torch.testing.assert_close(raw.double(), ref, rtol=0, atol=2e-6)
        torch.testing.assert_close(h_n[pair].double(), ref_h, rtol=0, atol=2e-6)
        layer_in = merge_stacked(raw.flatten(2), merges[layer], hidden)
    assert torch.equal(out, layer_in)              # the stack in one call is its layers chained, bit for bit
    if lengths is not None:
        for b, n in enumerate(lengths.tolist()):
            assert not out[n:, b].any()            # zero at padded steps


@needs_kernel
@pytest.mark.parametrize("cell", list(BLOCKS))
@pytest.mark.parametrize("merges", MERGES, ids=str)
def test_exact_against_dequantized_reference(cell: str, merges: List[Optional[str]]):
    check_exact(cell, merges, None)


@needs_kernel
@pytest.mark.parametrize("cell", list(BLOCKS))
def test_exact_at_widths_of_every_vector_loop(cell: str):
    # 41 inputs and 37 units: the rows' 32-wide maximum, 16-wide quantizing and dequantizing (AVX-512), their 8-wide
    # tails (AVX2) and the scalar ones all run, and must all give the reference's integers and sums.
    check_exact(cell, ["concat", "ave"], torch.tensor([9, 5, 7]), inputs=41, hidden=37)


@needs_kernel
@pytest.mark.parametrize("cell", list(BLOCKS))
def test_exact_with_lengths_and_without_bias(cell: str):
    check_exact(cell, ["sum", "concat"], torch.tensor([9, 4, 1]))
    check_exact(cell, [None], torch.tensor([2, 9, 5]), bias=False)


@needs_kernel
@pytest.mark.parametrize("cell", list(BLOCKS))
def test_portable_path_gives_the_kernels_outputs(cell: str):
    q = quantize(block(cell, layers=2, merge_mode=["ave", "concat"]))
    x = torch.randn(8, 4, 6, generator=torch.Generator().manual_seed(3))
    lengths = torch.tensor([8, 2, 5, 7])
    out, _ = q(x, lengths=lengths)
    with cpu_kernel.disabled():
        portable, _ = q(x, lengths=lengths)
    # Float32 against float64 states: a state landing within rounding of a quantization boundary may round to the
    # neighbouring integer on one path, moving that step by a part of one quantization step (hence not 1e-6).
    torch.testing.assert_close(portable, out, rtol=0, atol=2e-4)


# -- error against float32 -----------------------------------------------------------------------------------------
# Documented in docs/zoo-and-deployment.md ("int8 quantization"): max and mean |int8 - float32| over the outputs of
# random blocks (nn.LSTM's init, standard normal inputs, T = 32, B = 8, 2 layers concat), measured on this suite's
# seeds (input_size 32), and the bounds asserted here (about twice the worst measured).
ERROR_BOUNDS = {  # cell: (max, mean)
    # measured at H = 32 / 128 / 256: max 0.0017 / 0.0013 / 0.0009, mean 3e-4 / 2e-4 / 1.5e-4
    "lstm": (0.004, 0.0007),
    "gru": (0.013, 0.0025),        # max 0.0063 / 0.0046 / 0.0043, mean 1.2e-3 / 7e-4 / 6e-4
    "rnn": (0.04, 0.006),          # max 0.018 / 0.014 / 0.014, mean 3.0e-3 / 2.4e-3 / 2.1e-3
    "rnn_relu": (0.04, 0.0035),    # max 0.018 / 0.010 / 0.0075, mean 1.6e-3 / 9e-4 / 7e-4
}


@pytest.mark.parametrize("hidden", [32, 128])
@pytest.mark.parametrize("cell", list(BLOCKS))
def test_error_against_float32_is_within_the_documented_bounds(cell: str, hidden: int):
    float_block = block(cell, input_size=32, hidden=hidden, layers=2)
    q = quantize(float_block)
    x = torch.randn(32, 8, 32, generator=torch.Generator().manual_seed(hidden))
    with torch.no_grad():
        expected, _ = float_block(x)
    got, _ = q(x)
    error = (got - expected).abs()
    bound_max, bound_mean = ERROR_BOUNDS[cell]
    assert error.max().item() <= bound_max and error.mean().item() <= bound_mean, (error.max(), error.mean())
    assert error.max().item() > 0                   # int8 indeed: not the float path by accident


# -- models, state, compile ----------------------------------------------------------------------------------------
def test_quantize_a_classifier_leaves_the_original_and_keeps_the_head():
    torch.manual_seed(0)
    model = SequenceClassifier(num_classes=3, vocab_size=50, embed_dim=16, cell="gru", hidden_size=16,
                               num_layers=2, merge_mode="sum", pooling="mean").eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    q = quantize(model)
    assert isinstance(q.rnn, QuantizedBiRNN) and isinstance(model.rnn, BiGRU)
    assert type(q.head) is nn.Linear and not q.training
    tokens = torch.randint(1, 50, (4, 11), generator=torch.Generator().manual_seed(1))
    lengths = torch.tensor([11, 5, 3, 8])
    with torch.no_grad():
        expected = model(tokens, lengths)
    torch.testing.assert_close(q(tokens, lengths), expected, rtol=0, atol=0.02)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_state_dict_round_trip_and_layouts():
    q = quantize(block("lstm", layers=2, merge_mode="ave", batch_first=True))
    assert q.weight_ih_l0.dtype == torch.int8 and q.weight_ih_l0.shape == (2, 48, 6)
    assert q.scale_hh_l1.dtype == torch.float32 and q.bias_ih_l1.shape == (2, 48)
    fresh = QuantizedBiRNN("LSTM", 6, 12, 2, ["ave", "ave"], batch_first=True)
    x = torch.randn(3, 7, 6)
    fresh(x)                                         # a plan for the zero weights, dropped by the load below
    fresh.load_state_dict(q.state_dict())
    assert torch.equal(fresh(x)[0], q(x)[0])
    before = q(x)[0]
    assert torch.equal(q.double()(x)[0], before)     # float64 scales and biases: still read as float32 (exact)
    unbatched, (h, _) = q(x[0])
    assert unbatched.shape == (7, 12) and h.shape == (4, 12)
    torch.testing.assert_close(unbatched, q(x[:1])[0][0], rtol=0, atol=0)


def test_torch_compile_works():
    q = quantize(block("gru", layers=2, merge_mode="concat"))
    x = torch.randn(5, 2, 6)
    compiled = torch.compile(q, backend="aot_eager")
    torch.testing.assert_close(compiled(x)[0], q(x)[0], rtol=0, atol=0)


def test_scripting_tracing_and_export_refuse_with_the_reason(tmp_path):
    q = quantize(block("lstm"))
    x = torch.randn(5, 2, 6)
    with pytest.raises(RuntimeError, match="cannot be compiled by TorchScript"):
        torch.jit.script(q)
    with pytest.raises(RuntimeError, match="cannot be traced or exported"):
        torch.jit.trace(q, (x,))
    with pytest.raises(RuntimeError, match="cannot be traced or exported"):
        torch.export.export(q, (x,))
    model = quantize(SequenceClassifier(num_classes=2, vocab_size=20, embed_dim=8, hidden_size=8, num_layers=1))
    with pytest.raises(RuntimeError, match="cannot be compiled by TorchScript"):
        torch.jit.script(model)
    for fmt in ("pt2", "torchscript"):
        with pytest.raises(RuntimeError, match="cannot be"):
            export(model, tmp_path / f"model.{fmt}", fmt)


@needs_onnxscript
def test_onnx_export_refuses_the_int8_model_with_the_reason(tmp_path):
    model = quantize(SequenceClassifier(num_classes=2, vocab_size=20, embed_dim=8, hidden_size=8, num_layers=1))
    with pytest.raises(RuntimeError, match="cannot be"):
        export(model, tmp_path / "model.onnx", "onnx")


# -- refusals ------------------------------------------------------------------------------------------------------
def test_quantize_refuses_what_it_cannot_quantize():
    with pytest.raises(TypeError, match=r"torch\.nn\.Module"):
        quantize("model")
    with pytest.raises(ValueError, match="holds no BiLSTM, BiGRU or BiRNN"):
        quantize(nn.Linear(3, 3))
    with pytest.raises(ValueError, match=r"reset_after=False"):
        quantize(BiGRU(4, 4, reset_after=False))
    with pytest.raises(ValueError, match="already quantized"):
        quantize(quantize(block("rnn")))
    broken = block("lstm")
    with torch.no_grad():
        broken.weight_hh_l0[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        quantize(broken)


def test_bad_input_is_refused_as_by_the_float_blocks():
    q = quantize(block("lstm", layers=2))
    x = torch.randn(5, 2, 6)
    with pytest.raises(ValueError, match="input_size=6"):
        q(torch.randn(5, 2, 7))
    with pytest.raises(ValueError, match="3-D tensor"):
        q(torch.randn(5))
    with pytest.raises(ValueError, match="T = 0"):
        q(torch.randn(0, 2, 6))
    with pytest.raises(TypeError, match="float32"):
        q(x.double())
    with pytest.raises(TypeError, match="floating-point"):
        q(torch.ones(5, 2, 6, dtype=torch.long))
    with pytest.raises(ValueError, match=r"lengths must lie in \[1, T\]"):
        q(x, lengths=torch.tensor([6, 2]))
    with pytest.raises(ValueError, match=r"shape \(B,\)"):
        q(x, lengths=torch.tensor([5, 2, 1]))
    with pytest.raises(TypeError, match="integer tensor"):
        q(x, lengths=[5, 2])
    with pytest.raises(TypeError, match="looks like lengths"):
        q(x, (torch.tensor([5, 2]), torch.zeros(4, 2, 12)))
    with pytest.raises(ValueError, match="hx\\[0\\] must have shape"):
        q(x, (torch.zeros(2, 2, 12), torch.zeros(4, 2, 12)))
    with pytest.raises(TypeError, match="tuple"):
        q(x, torch.zeros(4, 2, 12))
    with pytest.raises(TypeError, match="PackedSequence"):
        q(torch.nn.utils.rnn.pack_padded_sequence(x, torch.tensor([5, 2])))
    gru = quantize(block("gru"))
    with pytest.raises(TypeError, match="looks like lengths"):
        gru(x, torch.tensor([5, 2]))
    with pytest.raises(ValueError, match="hx must have shape"):
        gru(x, torch.zeros(2, 3, 12))


@needs_kernel
def test_two_threads_give_the_same_bits():
    # Big enough for the kernel to run one thread a direction (models/blocks/quantized.py: >= 20M multiply-adds).
    q = quantize(block("lstm", input_size=64, hidden=64, layers=2, merge_mode="sum"))
    x = torch.randn(32, 16, 64, generator=torch.Generator().manual_seed(5))
    lengths = torch.randint(1, 33, (16,), generator=torch.Generator().manual_seed(6))
    one, _ = q(x, lengths=lengths)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        two, _ = q(x, lengths=lengths)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)
