"""The blocks, the zoo and the training app on CUDA: the same results as on the CPU (and as ``nn.LSTM``/``nn.GRU``
on CUDA), gradients of inputs, states and weights included.

Every test takes the ``cuda`` fixture, which skips it (with the reason) where no GPU is visible (CI has none) and
FAILS it instead when ``BIRNN_ZOO_REQUIRE_CUDA=1``: ``benchmarks/device_session.sh`` sets that, and also fails
the run if pytest reports any skip here, so a GPU run cannot pass with tests left out.

Exactness tests take the ``ieee`` fixture: cuDNN RNNs and matmuls in true float32 (torch 2.13 runs cuDNN RNNs in
TF32 by default, about 1e-3 off). float32 on the GPU against float32 on the CPU: tolerance ``TOL`` (the two sum
in different orders; TF32 would miss it by about 100x).
"""

import json
import os
import socket
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any, Iterator, List, Tuple

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import models
from models import BiGRU, BiLSTM, BiRNN, create_model

ROOT = Path(__file__).resolve().parents[1]
REQUIRE_ENV = "BIRNN_ZOO_REQUIRE_CUDA"
TOL = 5e-5
BLOCKS = {"LSTM": BiLSTM, "GRU": BiGRU, "RNN": BiRNN}


@pytest.fixture
def cuda() -> torch.device:
    if not torch.cuda.is_available():
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{REQUIRE_ENV}=1 but torch.cuda.is_available() is False (torch {torch.__version__})")
        pytest.skip("needs a visible CUDA GPU: torch.cuda.is_available() is False")
    return torch.device("cuda")


@pytest.fixture
def ieee(cuda: torch.device) -> Iterator[None]:
    """True float32 in cuDNN RNNs and CUDA matmuls for this test, restored after (torch >= 2.9 has the
    ``fp32_precision`` API; older torch the ``allow_tf32`` flags)."""
    rnn = getattr(torch.backends.cudnn, "rnn", None)
    if rnn is not None and hasattr(rnn, "fp32_precision"):
        saved = (rnn.fp32_precision, torch.backends.cuda.matmul.fp32_precision)
        rnn.fp32_precision = "ieee"
        torch.backends.cuda.matmul.fp32_precision = "ieee"
        try:
            yield
        finally:
            rnn.fp32_precision, torch.backends.cuda.matmul.fp32_precision = saved
        return
    saved_flags = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved_flags


def _pair(cell: str, merge_mode: Any, **kwargs: Any) -> Tuple[nn.Module, nn.Module]:
    cpu = BLOCKS[cell](5, 8, num_layers=2, batch_first=True, merge_mode=merge_mode, **kwargs)
    gpu = BLOCKS[cell](5, 8, num_layers=2, batch_first=True, merge_mode=merge_mode, **kwargs).cuda()
    gpu.load_state_dict(cpu.state_dict())
    return cpu, gpu


def _flat(state: Any) -> List[torch.Tensor]:
    return list(state) if isinstance(state, tuple) else [state]


def _close(got: torch.Tensor, want: torch.Tensor, what: str, tol: float = TOL) -> None:
    torch.testing.assert_close(got.detach().cpu(), want.detach().cpu(), atol=tol, rtol=tol,
                               msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("merge_mode", ["concat", "sum", "mul", "ave", ["sum", None], ["concat", "ave"]], ids=str)
@pytest.mark.parametrize("with_lengths", [False, True])
def test_block_on_cuda_equals_the_block_on_cpu_with_every_gradient(
    cell: str, merge_mode: Any, with_lengths: bool, ieee: None
) -> None:
    """Outputs, final states and the gradients of the input, both initial states and every weight."""
    cpu, gpu = _pair(cell, merge_mode)
    x = torch.randn(4, 7, 5)
    lengths = torch.tensor([7, 2, 5, 1]) if with_lengths else None
    states = [torch.randn(4, 4, 8) for _ in range(2 if cell == "LSTM" else 1)]
    results = []
    for block, device in ((cpu, "cpu"), (gpu, "cuda")):
        leaves = [t.to(device).requires_grad_() for t in [x, *states]]
        hx = tuple(leaves[1:]) if cell == "LSTM" else leaves[1]
        out, state = block(leaves[0], hx, lengths=None if lengths is None else lengths.to(device))
        loss = out.square().sum() + sum(s.square().sum() for s in _flat(state))
        grads = torch.autograd.grad(loss, leaves + list(block.parameters()))
        results.append((out, _flat(state), grads))
    assert results[1][0].device.type == "cuda"
    _close(results[1][0], results[0][0], "output")
    for got, want in zip(results[1][1], results[0][1], strict=True):
        _close(got, want, "final state")
    names = ["input"] + [f"state {i}" for i in range(len(states))] + [n for n, _ in cpu.named_parameters()]
    for name, got, want in zip(names, results[1][2], results[0][2], strict=True):
        _close(got, want, f"gradient of {name}", 2e-4)


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
@pytest.mark.parametrize("packed", [False, True])
def test_concat_block_on_cuda_is_nn_module_on_cuda(cell: str, packed: bool, ieee: None) -> None:
    block = BLOCKS[cell](5, 8, num_layers=2).cuda()
    reference = getattr(nn, cell)(5, 8, num_layers=2, bidirectional=True).cuda()
    reference.load_state_dict(block.state_dict())
    x = torch.randn(6, 3, 5, device="cuda")
    if packed:
        x = pack_padded_sequence(x, torch.tensor([2, 6, 4]), enforce_sorted=False)
    got, got_state = block(x)
    want, want_state = reference(x)
    _close(got.data if packed else got, want.data if packed else want, "output")
    for g, w in zip(_flat(got_state), _flat(want_state), strict=True):
        _close(g, w, "final state")
    grads = torch.autograd.grad((got.data if packed else got).sum(), list(block.parameters()))
    want_grads = torch.autograd.grad((want.data if packed else want).sum(), list(reference.parameters()))
    for g, w in zip(grads, want_grads, strict=True):
        _close(g, w, "weight gradient", 2e-4)


@pytest.mark.parametrize("merge_mode", ["concat", "sum", ["mul", None]], ids=str)
def test_packed_sequence_on_cuda_equals_the_cpu(merge_mode: Any, ieee: None) -> None:
    cpu, gpu = _pair("LSTM", merge_mode)
    lengths = torch.tensor([3, 7, 1, 5])
    x = torch.randn(4, 7, 5)
    got, (h, c) = gpu(pack_padded_sequence(x.cuda(), lengths, batch_first=True, enforce_sorted=False))
    want, (h_cpu, c_cpu) = cpu(pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False))
    _close(got.data, want.data, "packed output")
    assert torch.equal(got.unsorted_indices.cpu(), want.unsorted_indices)
    _close(h, h_cpu, "h_n")
    _close(c, c_cpu, "c_n")


def test_weights_are_flat_per_cudnn_call_and_no_copy_warning(cuda: torch.device) -> None:
    """One cuDNN buffer per call site (the stack for all-concat, else each layer), after .cuda() and after
    load_state_dict; no "not part of single contiguous chunk of memory" warning on any path."""
    for merge_mode in ("concat", ["sum", "concat", "ave"]):
        block = BiLSTM(5, 8, num_layers=3, merge_mode=merge_mode).cuda()
        block.load_state_dict(BiLSTM(5, 8, num_layers=3, merge_mode=merge_mode).state_dict())
        for names, _, _ in block.cudnn_call_sites():
            storages = {getattr(block, name).untyped_storage().data_ptr() for name in names}
            assert len(storages) == 1, (merge_mode, names)
            assert getattr(block, names[0]).storage_offset() == 0
        x = torch.randn(6, 3, 5, device="cuda")
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message=".*contiguous chunk of memory.*")
            block(x)[0].sum().backward()
            block(x, lengths=torch.tensor([6, 2, 4], device="cuda"))[0].sum().backward()


def test_backward_in_eval_mode_on_cuda(ieee: None) -> None:
    """cuDNN's train flag follows grad, not self.training (Keras allows gradients of a model in inference mode)."""
    cpu, gpu = _pair("LSTM", "sum", dropout=0.5)
    cpu.eval()
    gpu.eval()
    x = torch.randn(3, 6, 5)
    for block, device in ((cpu, "cpu"), (gpu, "cuda")):
        out, _ = block(x.to(device), lengths=torch.tensor([6, 3, 2]).to(device))
        out.sum().backward()
    for (name, p_c), p_g in zip(cpu.named_parameters(), gpu.parameters(), strict=True):
        _close(p_g.grad, p_c.grad, name, 2e-4)


@pytest.mark.parametrize("merge_mode", ["concat", "sum"])
def test_dropout_on_cuda_is_random_in_training_and_off_in_eval(merge_mode: str, ieee: None) -> None:
    cpu, gpu = _pair("GRU", merge_mode, dropout=0.5)
    x = torch.randn(4, 6, 5)
    lengths = torch.tensor([6, 6, 3, 1])
    gpu.train()
    first, _ = gpu(x.cuda(), lengths=lengths.cuda())
    second, _ = gpu(x.cuda(), lengths=lengths.cuda())
    assert not torch.allclose(first, second)
    first.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in gpu.parameters())
    gpu.eval()
    cpu.eval()
    _close(gpu(x.cuda(), lengths=lengths.cuda())[0], cpu(x, lengths=lengths)[0], "eval output")


def test_reset_before_gru_on_cuda_equals_the_cpu(ieee: None) -> None:
    cpu, gpu = _pair("GRU", ["sum", "concat"], reset_after=False)
    x = torch.randn(3, 6, 5)
    lengths = torch.tensor([6, 2, 4])
    results = []
    for block, device in ((cpu, "cpu"), (gpu, "cuda")):
        leaf = x.to(device).requires_grad_()
        out, h = block(leaf, lengths=lengths.to(device))
        results.append((out, h, torch.autograd.grad(out.square().sum(), [leaf] + list(block.parameters()))))
    _close(results[1][0], results[0][0], "output")
    _close(results[1][1], results[0][1], "h_n")
    for got, want in zip(results[1][2], results[0][2], strict=True):
        _close(got, want, "gradient", 2e-4)


def test_bf16_autocast_runs_the_rnn_in_float32_and_fp16_trains_with_a_scaler(ieee: None) -> None:
    block = BiLSTM(5, 8, num_layers=2, merge_mode="sum").cuda()
    x = torch.randn(6, 3, 5, device="cuda")
    want, _ = block(x)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        got, _ = block(x, lengths=torch.tensor([6, 5, 2], device="cuda"))
        full, _ = block(x)
    assert full.dtype == torch.float32 and got.dtype == torch.float32   # not fp16 in disguise
    _close(full, want, "bf16-autocast output")
    model = create_model("bigru", vocab_size=50, num_classes=3, hidden_size=16, embed_dim=8).cuda()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cuda")
    before = [p.detach().clone() for p in model.parameters()]
    tokens = torch.randint(1, 50, (8, 9), device="cuda")
    with torch.autocast("cuda", dtype=torch.float16):
        loss = nn.functional.cross_entropy(model(tokens), torch.randint(0, 3, (8,), device="cuda"))
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    assert torch.isfinite(loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_zoo_model_trains_a_step_on_cuda_like_on_cpu(ieee: None) -> None:
    torch.manual_seed(0)
    cpu = create_model("bilstm", vocab_size=50, num_classes=3)
    gpu = create_model("bilstm", vocab_size=50, num_classes=3).cuda()
    gpu.load_state_dict(cpu.state_dict())
    tokens = torch.randint(1, 50, (4, 9))
    tokens[1, 6:] = 0                                      # padding: the lengths path
    labels = torch.tensor([0, 2, 1, 0])
    losses = []
    for model, device in ((cpu, "cpu"), (gpu, "cuda")):
        model.train(False)  # no dropout: the two devices must agree; backward in eval mode too
        loss = nn.functional.cross_entropy(model(tokens.to(device)), labels.to(device))
        loss.backward()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(losses[1], abs=1e-5)
    for (name, p_c), p_g in zip(cpu.named_parameters(), gpu.parameters(), strict=True):
        _close(p_g.grad, p_c.grad, name, 1e-4)


def test_checkpoints_move_between_gpu_and_cpu(tmp_path: Path, ieee: None) -> None:
    gpu = create_model("bigru", vocab_size=50, num_classes=3, merge_mode="sum").cuda()
    torch.save(gpu.state_dict(), tmp_path / "gpu.pt")
    cpu = create_model("bigru", vocab_size=50, num_classes=3, merge_mode="sum")
    cpu.load_state_dict(torch.load(tmp_path / "gpu.pt", map_location="cpu", weights_only=True))
    tokens = torch.randint(1, 50, (3, 8))
    gpu.eval()
    cpu.eval()
    _close(gpu(tokens.cuda()), cpu(tokens), "GPU -> CPU logits")
    back = create_model("bigru", vocab_size=50, num_classes=3, merge_mode="sum").cuda()
    back.load_state_dict(cpu.state_dict())
    back.eval()
    _close(back(tokens.cuda()), cpu(tokens), "CPU -> GPU logits")


def test_compile_and_exports_on_cuda(tmp_path: Path, ieee: None) -> None:
    model = create_model("bilstm", vocab_size=50, num_classes=3, merge_mode="ave").cuda().eval()
    tokens = torch.randint(1, 50, (3, 8), device="cuda")
    tokens[0, 5:] = 0
    want = model(tokens)
    compiled = models.compile_model(model, "aot_eager")
    _close(compiled(tokens), want, "aot_eager")
    scripted = models.compile_model(model, "script")
    _close(scripted(tokens), want, "script")
    for fmt, path, max_len in (("torchscript", tmp_path / "model.pt", None), ("pt2", tmp_path / "model.pt2", 8)):
        models.export(model, path, fmt, max_len=max_len)
        on_cpu = models.load_exported(path)                # the artifact holds CPU tensors: loads anywhere
        _close(on_cpu(tokens.cpu()), want, f"{fmt} loaded on the CPU")
        on_gpu = models.load_exported(path, map_location="cuda")
        _close(on_gpu(tokens), want, f"{fmt} loaded onto CUDA")


def test_reduce_overhead_compile_on_cuda(ieee: None) -> None:
    """torch.compile(mode="reduce-overhead") through compile_model (CUDA graphs for a fixed shape)."""
    model = create_model("bigru", vocab_size=50, num_classes=3, hidden_size=16, embed_dim=8).cuda().eval()
    tokens = torch.randint(1, 50, (4, 8), device="cuda")
    want = model(tokens)
    compiled = models.compile_model(model, "inductor", compile_mode="reduce-overhead")
    with torch.no_grad():
        for _ in range(3):
            got = compiled(tokens)
    _close(got, want, "reduce-overhead")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_ddp_with_nccl_in_a_single_process_group(ieee: None) -> None:
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_nccl_available():
        pytest.skip("torch.distributed has no NCCL backend in this build")
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    try:
        plain = create_model("bilstm", vocab_size=50, num_classes=3, merge_mode="sum").cuda()
        copy = create_model("bilstm", vocab_size=50, num_classes=3, merge_mode="sum").cuda()
        copy.load_state_dict(plain.state_dict())
        wrapped = nn.parallel.DistributedDataParallel(copy, device_ids=[torch.cuda.current_device()])
        tokens = torch.randint(1, 50, (4, 9), device="cuda")
        tokens[2, 4:] = 0
        labels = torch.tensor([0, 2, 1, 0], device="cuda")
        for model in (plain, wrapped):
            model.eval()
            nn.functional.cross_entropy(model(tokens), labels).backward()
        for (name, p), q in zip(plain.named_parameters(), copy.parameters(), strict=True):
            _close(q.grad, p.grad, name, 1e-5)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("precision", ["32", "fp16", "bf16"])
def test_train_py_end_to_end_on_cuda(precision: str, tmp_path: Path, cuda: torch.device) -> None:
    command = [sys.executable, str(ROOT / "train.py"), "experiment=tiny", f"hydra.run.dir={tmp_path}",
               "trainer.device=cuda", f"trainer.precision={precision}", "model.merge_mode=mul"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["device"].startswith("cuda") and results["precision"] == precision
    assert 0.0 <= results["test_accuracy"] <= 1.0
    from models.training.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(tmp_path / "checkpoints" / "last.pt", map_location="cpu")
    assert all(t.device.type == "cpu" for t in checkpoint["model"].values())
