"""``python -m benchmarks.quantized [--batches 1 16 64] [--hidden 128 256] [--merges concat sum mul ave]
[--threads 1 2]``: int8 inference (``models.quantize``) against the float32 CPU kernel, PyTorch's
``DynamicQuantizedLSTM`` (``torch.ao.quantization.quantize_dynamic``, fbgemm/x86) and ONNX Runtime's
``DynamicQuantizeLSTM`` (``onnxruntime.quantization.quantize_dynamic`` of ``benchmarks/onnx_rnn.py``'s graph), on
the same weights (issue 35).

Each row: ``BiLSTM``, 2 layers, the row's merge mode after both layers, batch-first, input size H, T = 64, inference.
``int8`` is the kernel's fastest product on this CPU (AMX-INT8 tiles, else AVX-512 VNNI or AVX-VNNI, where present),
``int8_avx2`` the same block and library with its weights packed for the AVX2 product (only the product differs), and
on a CPU with AMX ``int8_vnni`` the same on the VNNI product (what an AVX-512 VNNI CPU without tiles runs). The peers
merge as the blocks do: ONNX Runtime's graph merges the directions with ``Add``/``Mul``/``Div`` between its quantized
LSTM nodes; PyTorch's runs one ``DynamicQuantizedLSTM`` a layer and merges in between. Every runtime runs in its own
worker process (``benchmarks/process_timing.py``, as ``benchmarks/vs_onnxruntime.py``), timed one at a time in
interleaved rounds; one thread: each worker's process CPU time, two threads: wall time. Ratios are medians over rounds
of int8 / other within the round. Each runtime's output is compared with the float32 block's (max abs difference in
the JSON: the int8 error of each). ``merge`` ``None`` is ``concat``'s arithmetic in another layout (not a row).

Prediction for the VNNI product, written before its first run (AMD EPYC family 25 model 17, Zen 4, AVX-512 VNNI;
``benchmarks/RESULTS.md``): the product alone measured 0.34-0.43x the AVX2 product's time in a C++ loop, but the
step also quantizes ``h``, dequantizes and runs the float32 gate math, which the float32 kernel runs too. So the
int8 path at 0.55-0.75x the float32 kernel at B = 16 and 64, 0.7-0.9x at B = 1; VNNI at 0.6-0.8x the AVX2
int8 path; faster than PyTorch's and ONNX Runtime's dynamic-quantized LSTMs in every row at one thread.

Prediction, written before the first run (lscpu "AMD EPYC", family 23 model 1: Zen 1, AVX2, no VNNI): Zen 1 runs one
256-bit ``vpmaddwd`` per two cycles on one pipe, 8 multiply-adds a cycle, the same as its float32 FMA rate, so the int8
path cannot win on arithmetic there: about 0.85-1.0x the float32 kernel at B = 16 and 64, 0.7-0.9x at B = 1 (the weights
are 4x smaller: ``W_hh`` at H = 256 fits L2 in int8, not in float32); faster than PyTorch's ``DynamicQuantizedLSTM``
everywhere (it quantizes per call through ATen ops) and within 0.8x of ONNX Runtime's. The 0.6x goal needs a CPU
with two ``vpmaddwd`` pipes (Intel since Skylake) or VNNI. Measured: ``benchmarks/RESULTS.md``.

Prediction for the 512-bit VNNI and AMX products, written before the change (Intel Xeon family 6 model 167, AVX-512
VNNI and AMX-INT8; the 256-bit VNNI product measured 180 GMAC/s alone, so at H = 256, B = 64 its 10.7 G
multiply-adds were about 59 ms of the int8 block's 86 ms, and ONNX Runtime's ``DynamicQuantizeLSTM`` took 46 ms):
512-bit ``vpdpbusd`` runs twice the multiply-adds a cycle on this core, AMX tiles 5-8x those of VNNI on the
projections and the step products of 16 rows or more. So int8 / ORT DQ from 1.3-2.1 to 0.6-0.9 at B >= 16 (the
quantizing, dequantizing and gate math, about 27 ms of 86, stay), int8 / float32 0.25-0.45 there; B = 1 gains
from the input projections alone (64 rows: tiles), about 0.8x its time. Measured: ``benchmarks/RESULTS.md``.

Results: ``benchmarks/results/quantized-<capability>.json`` and a Markdown table on stdout.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch (the workers inherit it): no OpenMP spinning

import argparse
import statistics
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from . import onnx_rnn
from .harness import Column, grid, log, number_column, table, write_results
from .machine import describe, load_average
from .process_timing import WorkerPool, interleaved

RESULTS = Path(__file__).resolve().parent / "results"
BATCHES, HIDDEN, STEPS, LAYERS = (1, 16, 64), (128, 256), 64, 2
MERGES = ("concat", "sum", "mul", "ave")
RUNTIMES = ("float32", "int8", "int8_avx2", "torch_dq", "ort_dq")


def write_row(batch: int, hidden: int, merge: str, folder: Path) -> Dict[str, Any]:
    """Seeded weights and input of one row (plain tensors, ``weights_only``), the float ONNX graph and ONNX
    Runtime's dynamic-quantized copy of it."""
    stem = folder / f"LSTM-H{hidden}-B{batch}-{merge}"
    spec = {"hidden": hidden, "merge": merge, "tensors": str(stem.with_suffix(".pt")),
            "onnx": str(stem) + "-int8.onnx"}
    if Path(spec["tensors"]).exists():
        return spec
    from models import BiLSTM

    torch.manual_seed(hidden)
    reference = BiLSTM(hidden, hidden, LAYERS, batch_first=True, merge_mode=merge).eval()
    x = torch.randn(batch, STEPS, hidden, generator=torch.Generator().manual_seed(batch * 1000 + hidden))
    torch.save({"state_dict": reference.state_dict(), "x": x}, spec["tensors"])
    plain = stem.with_suffix(".onnx")
    plain.write_bytes(onnx_rnn.build(reference, False, [merge] * LAYERS))
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(plain), spec["onnx"], weight_type=QuantType.QInt8)
    return spec


# The runtimes, each built inside its own worker (spawn) from a row's spec.

def _block(spec: Dict[str, Any]) -> Tuple[nn.Module, torch.Tensor]:
    from models import BiLSTM

    saved = torch.load(spec["tensors"], weights_only=True)
    hidden = spec["hidden"]
    block = BiLSTM(hidden, hidden, LAYERS, batch_first=True, merge_mode=spec["merge"]).eval()
    block.load_state_dict(saved["state_dict"])
    return block, saved["x"]


def float32_runner(spec: Dict[str, Any]) -> Tuple[Callable[[], Any], Dict[str, Any]]:
    """The float32 block on the CPU kernel (forced: the kernel, whatever the policy)."""
    from models.blocks import cpu_kernel

    block, x = _block(spec)

    def run() -> Any:
        with torch.inference_mode(), cpu_kernel.forced():
            return block(x)[0]

    return run, {"capability": cpu_kernel.capability()}


def int8_runner(spec: Dict[str, Any], product: Optional[str] = None) -> Tuple[Callable[[], Any], Dict[str, Any]]:
    """``models.quantize`` of the same block; ``product``: its weights packed for that int8 product instead of the
    fastest (the block keeps the plan it is given until its buffers change)."""
    from models import quantize
    from models.blocks.cpu_kernel import q8

    block, x = _block(spec)
    quantized = quantize(block)
    lib = q8.library()
    if product is not None:
        quantized._packed = quantized.kernel_plan(lib, product)

    def run() -> Any:
        with torch.inference_mode():
            return quantized(x)[0]

    return run, {"product": quantized.kernel_plan(lib).product}


def int8_avx2_runner(spec: Dict[str, Any]) -> Tuple[Callable[[], Any], Dict[str, Any]]:
    """The int8 block on the AVX2 product (``vpmaddwd``), in the same library."""
    return int8_runner(spec, "avx2")


def int8_vnni_runner(spec: Dict[str, Any]) -> Tuple[Callable[[], Any], Dict[str, Any]]:
    """The int8 block on the VNNI product (``vpdpbusd`` alone), in the same library: run where tiles are the
    fastest product, to show what each adds."""
    return int8_runner(spec, "vnni")


def torch_dq_runner(spec: Dict[str, Any]) -> Tuple[Callable[[], Any], Dict[str, Any]]:
    """PyTorch's ``DynamicQuantizedLSTM`` (``torch.ao.quantization.quantize_dynamic``, qint8 weights)."""
    saved = torch.load(spec["tensors"], weights_only=True)
    hidden, merge = spec["hidden"], spec["merge"]
    state = saved["state_dict"]
    if merge == "concat":  # one two-layer LSTM, as a user of nn.LSTM would run it
        layers = [nn.LSTM(hidden, hidden, LAYERS, batch_first=True, bidirectional=True).eval()]
        layers[0].load_state_dict(state)
    else:  # one LSTM a layer, the block's merge in between
        layers = []
        for layer in range(LAYERS):
            single = nn.LSTM(hidden, hidden, 1, batch_first=True, bidirectional=True).eval()
            single.load_state_dict({name.replace(f"_l{layer}", "_l0"): value for name, value in state.items()
                                    if f"_l{layer}" in name})
            layers.append(single)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecated in favour of torchao: still what torch ships
        # quantize_dynamic swaps child modules only, never the root: the LSTMs go in a holder.
        holder = torch.ao.quantization.quantize_dynamic(nn.ModuleList(layers), {nn.LSTM}, dtype=torch.qint8)
    quantized = list(holder)
    x = saved["x"]

    def merged(y: torch.Tensor) -> torch.Tensor:
        forward, backward = y[..., :hidden], y[..., hidden:]
        if merge == "sum":
            return forward + backward
        if merge == "mul":
            return forward * backward
        return (forward + backward) / 2

    def run() -> Any:
        with torch.inference_mode():
            y = x
            for lstm in quantized:
                y = lstm(y)[0]
                y = y if merge == "concat" else merged(y)
            return y

    return run, {"engine": torch.backends.quantized.engine, "module": type(quantized[0]).__name__}


def ort_dq_runner(spec: Dict[str, Any]) -> Tuple[Callable[[], Any], Dict[str, Any]]:
    """ONNX Runtime on its own dynamic-quantized graph (``DynamicQuantizeLSTM``)."""
    import onnx

    saved = torch.load(spec["tensors"], weights_only=True)
    ops = sorted({node.op_type for node in onnx.load(spec["onnx"]).graph.node})
    session = onnx_rnn.session(spec["onnx"], spec["threads"])
    feeds = {"x": saved["x"].numpy()}
    return (lambda: session.run(None, feeds)[0]), {"ops": ops}


FACTORIES = {"float32": float32_runner, "int8": int8_runner, "int8_avx2": int8_avx2_runner,
             "int8_vnni": int8_vnni_runner, "torch_dq": torch_dq_runner, "ort_dq": ort_dq_runner}


def runtimes() -> Tuple[str, ...]:
    """The runtimes of a row here: ``RUNTIMES``, and ``int8_vnni`` where the fastest int8 product is tiles."""
    from models.blocks.cpu_kernel import q8

    lib = q8.library()
    return RUNTIMES + (("int8_vnni",) if lib is not None and q8.best_product(lib) == "amx" else ())


def run_row(pool: WorkerPool, folder: Path, batch: int, hidden: int, merge: str, threads: int, budget_s: float
            ) -> Dict[str, Any]:
    spec = {**write_row(batch, hidden, merge, folder), "threads": threads}
    keys = runtimes()
    workers = {key: pool.get(key, threads) for key in keys}
    infos = {key: workers[key].call("load", FACTORIES[key], spec) for key in keys}
    outputs = {key: np.asarray(workers[key].call("output")[0]) for key in keys}
    errors = {key: float(np.abs(outputs[key] - outputs["float32"]).max()) for key in keys[1:]}
    samples = interleaved(workers, threads == 1, budget_s)
    rounds = len(samples["int8"])

    def ratio(key: str) -> float:
        return statistics.median(samples["int8"][i] / samples[key][i] for i in range(rounds))

    row: Dict[str, Any] = {
        "cell": "LSTM", "layers": LAYERS, "merge": merge, "T": STEPS, "B": batch, "H": hidden,
        "threads": threads, "clock": "process_cpu" if threads == 1 else "wall", "rounds": rounds,
        **{f"{key}_ms": 1e3 * statistics.median(samples[key]) for key in keys},
        **{f"int8_over_{key}": ratio(key) for key in keys if key != "int8"},
        **{f"{key}_max_abs_error": errors[key] for key in errors},
        "int8_avx2_over_float32": statistics.median(samples["int8_avx2"][i] / samples["float32"][i]
                                                    for i in range(rounds)),
        "int8_product": infos["int8"]["product"], "int8_avx2_product": infos["int8_avx2"]["product"],
        "ort_ops": infos["ort_dq"]["ops"], "torch_dq": infos["torch_dq"],
    }
    row["load_average"] = load_average()
    return row


COLUMNS: List[Column] = [
    ("H", lambda r: r["H"]), ("B", lambda r: r["B"]), ("merge", lambda r: r["merge"]),
    ("threads", lambda r: r["threads"]),
    number_column("float32 kernel ms", "float32_ms"),
    ("int8 ms", lambda r: f"{r['int8_ms']:.2f}" + (f" ({r['int8_product']})" if "int8_product" in r else "")),
    number_column("int8 AVX2 ms", "int8_avx2_ms"), number_column("int8 VNNI ms", "int8_vnni_ms"),
    number_column("torch DQ ms", "torch_dq_ms"), number_column("ORT DQ ms", "ort_dq_ms"),
    number_column("int8 / float32", "int8_over_float32", bold=True),
    number_column("int8 AVX2 / float32", "int8_avx2_over_float32"),
    number_column("int8 / int8 AVX2", "int8_over_int8_avx2"), number_column("int8 / int8 VNNI", "int8_over_int8_vnni"),
    number_column("int8 / torch DQ", "int8_over_torch_dq"),
    number_column("int8 / ORT DQ", "int8_over_ort_dq"),
    ("max err int8 / torch / ORT", lambda r: f"{r['int8_max_abs_error']:.1e} / {r['torch_dq_max_abs_error']:.1e} / "
                                             f"{r['ort_dq_max_abs_error']:.1e}"),
]


def _recorded(column: Column, rows: List[Dict[str, Any]]) -> bool:
    """Whether every row records what ``column`` shows (result files from before a column was added lack it)."""
    try:
        for row in rows:
            column[1](row)
    except KeyError:
        return False
    return True


def markdown(document: Dict[str, Any]) -> str:
    rows = document["rows"]
    head = (f"BiLSTM, {LAYERS} layers, the merge after each, T={STEPS}, batch-first, inference; each runtime in its "
            "own process; ratios: medians over interleaved rounds; max err: max |output - float32 block's output|.")
    notes = [document[key] for key in ("prediction", "note") if document.get(key)]  # the file's own words, if any
    return "\n\n".join([head, *notes, "\n".join(table([c for c in COLUMNS if _recorded(c, rows)], rows))])


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1])
    parser.add_argument("--batches", type=int, nargs="+", default=list(BATCHES))
    parser.add_argument("--hidden", type=int, nargs="+", default=list(HIDDEN))
    parser.add_argument("--merges", nargs="+", default=list(MERGES), choices=MERGES)
    parser.add_argument("--budget", type=float, default=2.0, help="seconds of interleaved rounds per row (>= 3 rounds)")
    parser.add_argument("--out", type=Path, default=None, help="JSON file (default results/quantized-<cap>.json)")
    args = parser.parse_args(argv)
    import onnxruntime

    from models.blocks import cpu_kernel

    if not cpu_kernel.available():
        raise SystemExit("the CPU kernel is not available here: there is no int8 kernel to time")
    out = args.out or RESULTS / f"quantized-{cpu_kernel.capability()}.json"
    machine = describe("cpu", max(args.threads))
    machine["onnxruntime"] = onnxruntime.__version__
    machine["capability"] = cpu_kernel.capability()
    machine["processes"] = "one worker process per runtime"
    torch.set_num_threads(1)
    rows: List[Dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="quantized-") as folder, WorkerPool() as pool:
        for case in grid(threads=args.threads, H=args.hidden, B=args.batches, merge=args.merges):
            row = run_row(pool, Path(folder), case["B"], case["H"], case["merge"], case["threads"], args.budget)
            rows.append(row)
            log(f"H={row['H']} B={row['B']} {row['merge']} threads={row['threads']}: int8/float32 "
                f"{row['int8_over_float32']:.2f}, int8/int8 AVX2 {row['int8_over_int8_avx2']:.2f}, "
                f"int8/torch DQ {row['int8_over_torch_dq']:.2f}, int8/ORT DQ {row['int8_over_ort_dq']:.2f}")
            write_results(out, {"machine": machine, "rows": rows})
    print(f"Machine: {machine['summary']}; onnxruntime {machine['onnxruntime']}; kernel {machine['capability']}")
    print(markdown({"rows": rows}))


if __name__ == "__main__":
    main()
