"""compile_model and export: eager == scripted == compiled == exported; artifacts load without the project.

The default suite compiles and exports a covering set (every cell, pooling and merge mode at least once);
``-m slow`` runs every preset x every merge mode through ``aot_eager``, ``inductor``, ``export`` and ONNX.
"""

import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from helpers.token_batches import mixed_lengths, padded_tokens

import models
from models import compile_model, create_model, export, load_exported

TOL = {"atol": 1e-5, "rtol": 1e-5}
INDUCTOR_TOL = {"atol": 1e-4, "rtol": 1e-4}   # inductor may reorder reductions
ONNX_TOL = {"atol": 1e-4, "rtol": 1e-4}
VOCAB = 31
MAX_LEN = 6   # export time grows with T: the fused ops are traced step by step
TINY = {"vocab_size": VOCAB, "embed_dim": 8, "hidden_size": 8, "num_classes": 3, "attention_size": 8}
PRESETS = ["bilstm", "bigru", "birnn", "bilstm_attn", "bigru_attn", "bilstm_deep"]
MERGES = ["concat", "sum", "mul", "ave"]
# With test_aot_eager_trains_like_eager (bilstm, concat): every cell, both poolings, every merge mode in the
# default suite. EVERY (4 layers too) is the slow suite.
COVERING = [("bigru_attn", "sum"), ("birnn", "mul"), ("bilstm_attn", "ave")]
EVERY = [(name, merge) for name in PRESETS for merge in MERGES]


def padded_batch(batch: int = 4, seq_len: int = 9, left: bool = False) -> torch.Tensor:
    return padded_tokens(seq_len, mixed_lengths(batch, seq_len), VOCAB, left)


def tiny(name: str, merge_mode: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model(name, merge_mode=merge_mode, **TINY).eval()


# -- compile_model -----------------------------------------------------------------------------------------
def test_compile_model_arguments():
    model = tiny("birnn", "sum")
    assert compile_model(model) is model and compile_model(model, "none") is model
    with pytest.raises(ValueError, match="mode='jit'") as info:
        compile_model(model, "jit")
    for mode in models.COMPILE_MODES:
        assert mode in str(info.value)
    with pytest.raises(TypeError, match="max_len"):
        compile_model(model, "script", max_len=8)
    with pytest.raises(TypeError, match=r"torch\.compile options"):
        compile_model(model, "script", dynamic=True)
    scripted = compile_model(model, "script")
    ids = padded_batch()
    torch.testing.assert_close(scripted(ids), model(ids), **TOL)


def test_scripting_and_exporting_leave_the_model_its_own_modules(tmp_path):
    """``torch.jit.script`` writes each block's TorchScript twin into its parent; ``compile_model(..., "script")`` and
    ``export(..., "torchscript")`` put the model's own modules back, and the model's block keeps its one set of
    prepared kernel weights (a twin would prepare a second)."""
    from models.blocks.cpu_kernel import inference

    model = tiny("bilstm_attn", "ave")
    before = list(model.modules())
    block = next(m for m in before if isinstance(m, models.BiLSTM))
    ids = padded_batch()
    with torch.no_grad():
        want = model(ids)
        scripted = compile_model(model, "script")
        assert list(model.modules()) == before and all(a is b for a, b in zip(model.modules(), before, strict=True))
        export(model, tmp_path / "model.pt", "torchscript")
        assert all(a is b for a, b in zip(model.modules(), before, strict=True))
        torch.testing.assert_close(scripted(ids), want, **TOL)
        torch.testing.assert_close(load_exported(tmp_path / "model.pt")(ids), want, **TOL)
        torch.testing.assert_close(model(ids), want, atol=0, rtol=0)
    assert not any("Scriptable" in type(m).__name__ for m in model.modules())
    sharing = [m for m in list(inference._plans.keys()) if m.__dict__ is block.__dict__]  # the block or its twins
    assert block in sharing and len({id(inference._plans[m]) for m in sharing}) == 1  # one plan, the block's


def test_a_direct_torch_jit_script_keeps_one_plan_of_prepared_weights():
    """``torch.jit.script(model)`` itself swaps the model's block for its TorchScript twin (PyTorch's
    ``__prepare_scriptable__`` pass); the twin reads the block's prepared kernel weights rather than making its own."""
    from models.blocks import cpu_kernel
    from models.blocks.cpu_kernel import inference

    if not cpu_kernel.available():
        pytest.skip("the CPU kernel is not built on this machine: no prepared weights to share")
    model = tiny("bilstm_attn", "ave")
    block = next(m for m in model.modules() if isinstance(m, models.BiLSTM))
    ids = padded_batch()
    with torch.no_grad():
        want = model(ids)
        prepared = inference._plans.get(block)
        assert prepared is not None
        torch.jit.script(model)
        twin = next(m for m in model.modules() if isinstance(m, models.BiLSTM))
        assert twin is not block and twin.__dict__ is block.__dict__
        torch.testing.assert_close(model(ids), want, atol=0, rtol=0)
    assert inference._plans.get(twin) is prepared


def test_graph_breaks_are_the_fused_calls_only(monkeypatch: pytest.MonkeyPatch):
    """Pinned for ``bilstm``: dynamo's count of graphs and breaks on torch 2.13.

    On the CPU kernel (a custom op) the whole model is one graph. On PyTorch's fused kernels every break is a
    ``compiler.disable``d fused RNN call: token input runs the lengths path (two single-direction fused calls
    per layer, each layer its own method so dynamo compiles the gathers, masks and merge around the calls),
    8 breaks / 9 graphs.
    """
    if models.blocks.cpu_kernel.available():
        torch._dynamo.reset()
        explained = torch._dynamo.explain(tiny("bilstm", "concat"))(padded_batch())
        assert (explained.graph_count, explained.graph_break_count) == (1, 0)
    monkeypatch.setattr(models.blocks.cpu_kernel, "applies", lambda *args, **kwargs: False)
    torch._dynamo.reset()
    explained = torch._dynamo.explain(tiny("bilstm", "concat"))(padded_batch())
    assert (explained.graph_count, explained.graph_break_count) == (9, 8)
    assert explained.break_reasons and all("compiler.disable" in b.reason for b in explained.break_reasons)


@pytest.mark.slow
def test_graph_breaks_of_the_single_fused_call(monkeypatch: pytest.MonkeyPatch):
    """Feature input without lengths and all-``concat`` layers, on PyTorch's kernels: one fused call for the whole
    stack, 3 breaks (the one call, seen from each enclosing frame)."""
    monkeypatch.setattr(models.blocks.cpu_kernel, "applies", lambda *args, **kwargs: False)
    torch.manual_seed(0)
    features = create_model("bilstm", input_size=4, embed_dim=8, hidden_size=8).eval()
    torch._dynamo.reset()
    explained = torch._dynamo.explain(features)(torch.randn(3, 6, 4))
    assert (explained.graph_count, explained.graph_break_count) == (4, 3)
    assert all("compiler.disable" in b.reason for b in explained.break_reasons)


def check_compiled(name: str, merge_mode: str, backend: str, tol: dict, slow: bool = False) -> None:
    model = tiny(name, merge_mode)
    compiled = compile_model(model, backend)
    ids = padded_batch(left=True)
    torch.testing.assert_close(compiled(ids), model(ids), **tol)
    if slow:  # a batch of one recompiles (0/1 specialisation): only in the slow suite
        torch.testing.assert_close(compiled(ids[1:2]), model(ids[1:2]), **tol)


@pytest.mark.parametrize("name, merge_mode", COVERING)
def test_aot_eager_equals_eager(name, merge_mode):
    torch._dynamo.reset()
    check_compiled(name, merge_mode, "aot_eager", TOL)


def test_aot_eager_trains_like_eager():
    """``bilstm`` with ``concat``, in training mode: same logits and same gradients as eager."""
    model = tiny("bilstm", "concat").train()
    compiled = compile_model(model, "aot_eager")
    ids = padded_batch(left=True)
    torch._dynamo.reset()
    logits = compiled(ids)
    torch.testing.assert_close(logits, model(ids), **TOL)
    logits.square().sum().backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    model(ids).square().sum().backward()
    for name, param in model.named_parameters():
        torch.testing.assert_close(grads[name], param.grad, **TOL, msg=name)


@pytest.mark.slow
@pytest.mark.parametrize("name, merge_mode", EVERY)
def test_aot_eager_equals_eager_everywhere(name, merge_mode):
    torch._dynamo.reset()
    check_compiled(name, merge_mode, "aot_eager", TOL, slow=True)


@pytest.mark.slow
@pytest.mark.parametrize("name, merge_mode", EVERY)
def test_inductor_equals_eager(name, merge_mode):
    torch._dynamo.reset()
    check_compiled(name, merge_mode, "inductor", INDUCTOR_TOL, slow=True)


# -- mode="export" and the .pt2 program --------------------------------------------------------------------
def check_exported_module(name: str, merge_mode: str) -> None:
    model = tiny(name, merge_mode)
    exported = compile_model(model, "export", max_len=MAX_LEN)
    for ids in (padded_batch(5, 5, left=True), padded_batch(1, MAX_LEN), padded_batch(2, 3)):
        torch.testing.assert_close(exported(ids), model(ids), **TOL)
    lengths = torch.tensor([5, 4, 1])
    ids = torch.randint(1, VOCAB, (3, 5))          # no padding ids: the lengths alone mark the padding
    torch.testing.assert_close(exported(ids, lengths), model(ids, lengths), **TOL)
    with pytest.raises(ValueError, match="max_len"):
        exported(padded_batch(2, MAX_LEN + 1))
    # Documented limit: torch.export specialises T of the fused RNN ops; the graph itself takes T == max_len.
    assert exported.graph(padded_batch(3, MAX_LEN)).shape == (3, 3)
    with pytest.raises(Exception):  # noqa: B017 - the guard's exception type is torch's business
        exported.graph(padded_batch(3, MAX_LEN - 2))


def test_export_mode_equals_eager():
    check_exported_module("birnn", "mul")


@pytest.mark.slow
@pytest.mark.parametrize("name, merge_mode", EVERY)
def test_export_mode_equals_eager_everywhere(name, merge_mode):
    check_exported_module(name, merge_mode)


def test_export_arguments(tmp_path):
    model = tiny("birnn", "sum")
    with pytest.raises(ValueError, match="format='tflite'"):
        export(model, tmp_path / "m", "tflite")
    with pytest.raises(TypeError, match="max_len"):
        export(model, tmp_path / "m.pt", "torchscript", max_len=8)
    with pytest.raises(ValueError, match="max_len"):
        export(model, tmp_path / "m.pt2", "pt2", max_len=0)


# -- artifacts without the project -------------------------------------------------------------------------
LOADER = textwrap.dedent(
    """
    import sys
    sys.modules["models"] = None          # any import of the project now fails
    try:
        import models  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("the project is importable")
    import torch
    torch.set_num_threads(1)
    inputs = torch.load("inputs.pt")
    outputs = {}
    for key, args in inputs.items():
        kind, path = key.split(":", 1)
        if kind == "pt2":
            module = torch.export.load(path).module()
        else:
            module = torch.jit.load(path)
        with torch.no_grad():
            outputs[key] = [module(*a) for a in args]
    torch.save(outputs, "outputs.pt")
    leaked = [name for name, mod in sys.modules.items() if name.split(".")[0] == "models" and mod is not None]
    assert not leaked, leaked
    """
)


def test_artifacts_run_without_the_project(tmp_path):
    """TorchScript and .pt2 artifacts of a token model and a feature model, loaded in ``python -I``."""
    tokens = tiny("bilstm_attn", "ave", seed=1)
    torch.manual_seed(2)
    features = create_model("birnn", input_size=4, embed_dim=8, hidden_size=8, merge_mode="sum").eval()
    paths = {
        "tok_ts": export(tokens, tmp_path / "tokens.pt", "torchscript"),
        "tok_pt2": export(tokens, tmp_path / "tokens.pt2", "pt2", max_len=MAX_LEN),
        "feat_ts": export(features, tmp_path / "features.pt", "torchscript"),
        "feat_pt2": export(features, tmp_path / "features.pt2", "pt2", max_len=MAX_LEN),
    }
    assert all(os.path.isfile(path) for path in paths.values())
    full = padded_batch(5, MAX_LEN, left=True)
    x = torch.randn(5, MAX_LEN, 4)
    lengths = torch.tensor([6, 1, 4, 3, 6])
    cases = {
        f"ts:{paths['tok_ts']}": [(full,), (full[2:3],), (padded_batch(3, 11),)],
        f"pt2:{paths['tok_pt2']}": [(full,), (full[2:3],)],
        f"ts:{paths['feat_ts']}": [(x, lengths), (x[:, :4],), (torch.randn(2, 11, 4),)],
        f"pt2:{paths['feat_pt2']}": [(x, lengths), (x[3:4], lengths[3:4])],
    }
    torch.save(cases, tmp_path / "inputs.pt")
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTHON")}
    result = subprocess.run([sys.executable, "-I", "-c", LOADER], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    outputs = torch.load(tmp_path / "outputs.pt")
    with torch.no_grad():
        for key, args_list in cases.items():
            model = tokens if "tokens" in key else features
            for args, got in zip(args_list, outputs[key], strict=True):
                torch.testing.assert_close(got, model(*args), **TOL, msg=key)
        # The in-process helper loads the same files.
        torch.testing.assert_close(load_exported(paths["tok_pt2"])(full), tokens(full), **TOL)
        torch.testing.assert_close(load_exported(paths["tok_ts"])(full), tokens(full), **TOL)


# -- ONNX --------------------------------------------------------------------------------------------------
ONNX_READY = all(importlib.util.find_spec(pkg) is not None for pkg in ("onnx", "onnxscript", "onnxruntime"))


@pytest.mark.slow
@pytest.mark.skipif(not ONNX_READY, reason="needs onnx, onnxscript and onnxruntime")
@pytest.mark.parametrize("name, merge_mode", COVERING)
def test_onnx_equals_eager(tmp_path, name, merge_mode):
    model = tiny(name, merge_mode)
    path = export(model, tmp_path / "model.onnx", "onnx", max_len=MAX_LEN)
    session = load_exported(path)
    for ids in (padded_batch(5, MAX_LEN, left=True), padded_batch(1, MAX_LEN)):
        torch.testing.assert_close(session(ids), model(ids).detach(), **ONNX_TOL)
