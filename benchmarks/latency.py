"""``python -m benchmarks.latency [--requests 1000] [--threads 1 2] [--model bilstm]``: serving latency on CPU.

Single requests (B = 1) whose lengths are drawn from TREC's question lengths (the data cache that ``python train.py
experiment=trec`` fills, ``$BIRNN_ZOO_CACHE``, or ``--data`` for a local copy; a fixed stand-in distribution when
absent, said in the output), the same request sequence for
every variant, interleaved request by request (rotating order), wall time per call as a caller sees it; p50 / p99 /
mean per variant, and the p50 of process CPU time (on a shared machine the wall times include waiting for a core;
with one thread the CPU time is what the call itself cost). Then throughput at B = 64 (batches of those requests,
right-padded). Variants:

- ``block`` / ``block ORT``: the zoo model's recurrent encoder alone (``BiLSTM``/``BiGRU``, eager, no grad) on
  ``(1, L, E)`` features, and ONNX Runtime on its twin graph of fused ``LSTM``/``GRU`` ops (dynamic ``T``,
  ``benchmarks/onnx_rnn.py``). Each reads weights no other variant reads: the block runs on a copy of the
  encoder, since the zoo variants' calls would otherwise bring its prepared weights into the caches just before
  it (measured: 0.58x its twin at p50 with the encoder shared, 0.83-0.88x with its own copy);
- ``zoo eager``: ``create_model(name)(token_ids)`` under ``torch.inference_mode``;
- ``TorchScript``: ``models.export(model, ..., "torchscript")`` loaded with ``torch.jit.load`` (dynamic ``T``);
- ``pt2`` / ``ORT .onnx``: ``models.export(..., "pt2" | "onnx", max_len=M)``: these take a static ``T = M`` (the
  longest TREC question, rounded up), so each request is right-padded to ``M``; ``zoo eager @M`` is the eager
  model on the same padded input, the like-for-like comparison for them;
- ``block int8`` / ``zoo int8`` and ``block bf16`` / ``zoo bf16``: the encoder and the zoo model after
  ``models.quantize``, and under bf16 autocast (``benchmarks/latency_low_precision.py``), on the same requests as
  ``block`` and ``zoo eager``.

``--variants block block-ort`` times only those (no exports, no throughput: about a minute): the block against
its ONNX Runtime twin, the issue's goal being at most 0.8x at p50 and p99 on one thread. Each row also shows its
distance from the physical floor, the larger of two times: the request's multiply-adds (``4 T (4H) (in + H)`` a
layer, both directions) at this core's measured single-thread float32 GEMM rate (``float32_peak``), and reading
the weights a one-row request must read (``request_bytes_floor``: all of them once, each direction's ``W_hh``
again every step) at this core's measured read rates (``read_bandwidth``). At B = 1 the second is the larger:
each weight read feeds one multiply-add.

Results: ``benchmarks/results/latency-<capability>.json`` and a Markdown table on stdout. About 2-4 minutes on
2 cores (the ONNX export is most of the setup).
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: no OpenMP spin-waiting on a shared machine

import argparse
import copy
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

import models
from models.blocks import cpu_kernel
from models.data.download import cache_dir

from . import latency_low_precision, onnx_rnn
from .harness import Column, in_process, interleaved, log, table, write_results
from .machine import describe

# --variants names -> the table's variant names ({M}: the static length of the exported files)
VARIANTS = {"block": "block", "block-ort": "block ORT", "zoo": "zoo eager", "torchscript": "TorchScript",
            "zoo-padded": "zoo eager @{M}", "pt2": "pt2 @{M}", "onnx": "ORT .onnx @{M}",
            **latency_low_precision.VARIANTS}
EXPORTED = {"torchscript", "zoo-padded", "pt2", "onnx"}


def float32_peak(n: int = 1024, repeats: int = 5) -> float:
    """GFLOP/s of one thread's float32 GEMM (``n x n @ n x n``, the fastest of ``repeats``): what this core's FMA
    units sustain, the rate of the physical floor."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        a, b = torch.randn(n, n), torch.randn(n, n)
        a @ b
        best = min(_timed(lambda: a @ b) for _ in range(repeats))
    finally:
        torch.set_num_threads(previous)
    return 2.0 * n ** 3 / best / 1e9


def _timed(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def read_bandwidth(nbytes: int, repeats: int = 5, total: int = 256 << 20) -> float:
    """GB/s at which one thread reads a float32 buffer of ``nbytes`` over and over (a stride-0 view of it summed:
    no copy; the best of ``repeats``): this core's rate from the cache level that holds that many bytes."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        numel = max(16, nbytes // 4)
        rows = max(1, total // (numel * 4))
        again = torch.randn(numel).as_strided((rows, numel), (0, 1))
        again.sum()
        best = min(_timed(again.sum) for _ in range(repeats))
    finally:
        torch.set_num_threads(previous)
    return rows * numel * 4 / best / 1e9


def request_bytes_floor(steps: int, ih_bytes: List[int], hh_bytes: List[int], model_rate: float,
                        step_rate: float) -> float:
    """Seconds to read what a one-row request must read: every weight once (``sum(ih_bytes) + sum(hh_bytes)``, one
    entry per layer and direction, at ``model_rate`` GB/s: the rate for a buffer the model's size, since another
    request's work may have evicted it), then each direction's ``W_hh`` once more for every further step (at
    ``step_rate``: the rate for one direction's ``W_hh``, which stays in cache across that direction's steps).
    With one row a step's product is a matrix-vector product: one multiply-add per weight read, so at this size
    reading the weights, not the multiply-adds, bounds the time."""
    once = (sum(ih_bytes) + sum(hh_bytes)) / (model_rate * 1e9)
    return once + max(0, steps - 1) * sum(hh_bytes) / (step_rate * 1e9)


def request_mflop(steps: int, input_size: int, hidden: int, gates: int, layer_inputs: List[int]) -> float:
    """Multiply-adds x 2 of one request of ``steps`` tokens through the block: both directions, every layer
    (``layer_inputs``: each layer's input size; ``gates``: 4 for LSTM, 3 for GRU)."""
    return sum(2 * 2 * steps * gates * hidden * (size + hidden) for size in layer_inputs) / 1e6

RESULTS = Path(__file__).resolve().parent / "results"


def trec_lengths(root: Path) -> Tuple[List[int], str]:
    """Token counts of TREC's training questions (the project's tokenizer), and which data they came from (named
    by the file, not by this machine's folders)."""
    path = root / "trec" / "train_5500.label"
    if path.exists():
        from models.data.text import read_trec, tokenize

        rows, _ = read_trec(path)
        return [max(1, len(tokenize(text))) for _, text in rows], f"TREC {path.name}"
    # Stand-in: TREC's shape (median 10, p99 25, max 37 tokens) as a clipped log-normal
    rng = np.random.default_rng(0)
    return [int(v) for v in np.clip(np.round(rng.lognormal(2.3, 0.35, 5000)), 3, 37)], "stand-in log-normal"


def percentile(values: List[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def interleaved_requests(fns: Dict[str, Callable[[int], Any]], lengths: List[int]
                         ) -> Tuple[Dict[str, List[float]], Dict[str, List[float]]]:
    """Each request (index i, length lengths[i]) through every variant in a rotating order (request i in round
    i), one call a sample, after 20 untimed warm-up requests per variant (first-call costs: allocations, prepared
    weights, TorchScript's profiling runs); wall seconds and process CPU seconds per call (CPU time: what the call
    cost when other jobs share the cores)."""
    series = interleaved({key: in_process(fn, indexed=True) for key, fn in fns.items()}, number=1,
                         first_calls=min(20, len(lengths)), min_rounds=len(lengths))
    return {key: s.wall for key, s in series.items()}, {key: s.cpu for key, s in series.items()}


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="bilstm", help="zoo model name (bilstm, bigru, ...)")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batches", type=int, default=30, help="B=64 batches timed per variant for throughput")
    parser.add_argument("--data", type=Path, default=None,
                        help="a folder holding trec/train_5500.label (default: the data cache)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS),
                        help="which variants to time (block block-ort: the block against its ONNX Runtime twin, no "
                             "exports)")
    parser.add_argument("--artifacts", type=Path, default=None,
                        help="folder for the exported files; existing ones are reused (default: a new temporary "
                             "folder). The exports are most of the setup: ~1 min idle, 5+ min on a loaded 2-core box")
    args = parser.parse_args(argv)
    import onnxruntime as ort

    torch.manual_seed(0)
    pool, source = trec_lengths(args.data if args.data is not None else cache_dir())
    rng = random.Random(0)
    lengths = [rng.choice(pool) for _ in range(args.requests)]
    max_len = int(np.ceil(max(pool) / 8) * 8)
    vocab = 8000
    model = models.create_model(args.model, vocab_size=vocab, num_classes=6).eval()
    encoder = next(m for m in model.modules() if isinstance(m, (models.BiLSTM, models.BiGRU)))
    if not encoder.batch_first:
        raise ValueError(f"{args.model}'s encoder is not batch-first; this benchmark feeds (B, T, E)")
    twin = (nn.LSTM if isinstance(encoder, models.BiLSTM) else nn.GRU)(
        encoder.input_size, encoder.hidden_size, encoder.num_layers, batch_first=True, bidirectional=True).eval()
    if not encoder.all_concat:
        raise ValueError("the ORT twin of the encoder is built for merge_mode='concat'")
    twin.load_state_dict(encoder.state_dict())
    tokens = [torch.randint(1, vocab, (1, n)) for n in lengths]
    padded = [torch.nn.functional.pad(t, (0, max_len - t.shape[1])) for t in tokens]  # padding_idx 0 on the right
    features = [torch.randn(1, n, encoder.input_size) for n in lengths]

    started = time.perf_counter()
    exported = bool(EXPORTED & set(args.variants))
    scripted = program = onnx_path = None
    if exported:
        folder = args.artifacts or Path(tempfile.mkdtemp(prefix="birnn_latency_"))
        folder.mkdir(parents=True, exist_ok=True)
        tag = f"{args.model}-T{max_len}"
        if args.artifacts is not None and (folder / f"{tag}.state.pt").exists():  # the weights the files were made from
            model.load_state_dict(torch.load(folder / f"{tag}.state.pt", weights_only=True))
        else:
            torch.save(model.state_dict(), folder / f"{tag}.state.pt")
        paths = {fmt: folder / f"{tag}.{ext}" for fmt, ext in (("torchscript", "pt"), ("pt2", "pt2"),
                                                                ("onnx", "onnx"))}
        for fmt, path in paths.items():
            if not path.exists():
                log(f"exporting {fmt}" + (f" (static T = {max_len})" if fmt != "torchscript" else ""))
                models.export(model, path, fmt, **({} if fmt == "torchscript" else {"max_len": max_len}))
        scripted = torch.jit.load(paths["torchscript"])
        program = torch.export.load(paths["pt2"]).module()
        onnx_path = str(paths["onnx"])
    twin.load_state_dict(encoder.state_dict())  # the weights the exports were made from, if reloaded
    block = copy.deepcopy(encoder)  # its own weights, as the twin's (the docstring says why)
    twin_bytes = onnx_rnn.build(twin, with_lengths=False)
    # after any reload above: the int8 copies (bf16: the autocast wrappers) of the weights the other variants run
    low_precision = {precision: latency_low_precision.pair(precision, model, encoder, tokens[0], features[0])
                     for precision in latency_low_precision.wanted(args.variants)}
    setup_s = time.perf_counter() - started
    log(f"exports took {setup_s:.0f} s")

    machine = describe("cpu", max(args.threads))
    peak = float32_peak()
    gates = 4 if isinstance(encoder, models.BiLSTM) else 3
    layer_inputs = [encoder.input_size] + [2 * encoder.hidden_size] * (encoder.num_layers - 1)
    flop_floors = [request_mflop(n, encoder.input_size, encoder.hidden_size, gates, layer_inputs) * 1e6 / (peak * 1e9)
                   for n in lengths]  # seconds
    ih_bytes = [4 * gates * encoder.hidden_size * size for size in layer_inputs for _ in range(2)]
    hh_bytes = [4 * gates * encoder.hidden_size * encoder.hidden_size] * (2 * encoder.num_layers)
    model_rate, step_rate = read_bandwidth(sum(ih_bytes) + sum(hh_bytes)), read_bandwidth(hh_bytes[0])
    byte_floors = [request_bytes_floor(n, ih_bytes, hh_bytes, model_rate, step_rate) for n in lengths]
    floors = [max(f, b) for f, b in zip(flop_floors, byte_floors, strict=True)]
    median_length = int(statistics.median(lengths))
    machine.update(onnxruntime=ort.__version__, capability=cpu_kernel.capability(), lengths_source=source,
                   model=args.model, max_len=max_len, export_s=round(setup_s, 1), peak_gflops_1thread=round(peak, 1),
                   median_request_tokens=median_length,
                   median_request_mflop=round(request_mflop(median_length, encoder.input_size, encoder.hidden_size,
                                                            gates, layer_inputs), 2),
                   floor_p50_ms=1e3 * percentile(floors, 50), floor_p99_ms=1e3 * percentile(floors, 99),
                   flop_floor_p50_ms=1e3 * percentile(flop_floors, 50),
                   byte_floor_p50_ms=1e3 * percentile(byte_floors, 50),
                   weight_mb=round((sum(ih_bytes) + sum(hh_bytes)) / 1e6, 2),
                   read_gbs_model=round(model_rate, 1), read_gbs_step=round(step_rate, 1),
                   nice=os.nice(0))
    for precision, (_, _, errors) in low_precision.items():
        machine[f"{precision}_max_abs_error"] = errors
    results: Dict[str, Any] = {"machine": machine, "latency": [], "throughput": []}
    for threads in args.threads:
        torch.set_num_threads(threads)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        block_session = onnx_rnn.session(twin_bytes, threads)

        def grad_free(fn: Callable[..., Any]) -> Callable[..., Any]:
            def call(*a: Any) -> Any:
                with torch.inference_mode():
                    return fn(*a)
            return call

        with torch.inference_mode():  # the block and its twin agree before any timing
            want = block(features[0])[0].reshape(-1)
        twin_out = torch.from_numpy(block_session.run(None, {"x": features[0].numpy()})[0]).reshape(-1)
        difference = float((twin_out - want).abs().max())
        if difference > 1e-4:
            raise AssertionError(f"the block and its ONNX Runtime twin differ by {difference}")
        variants: Dict[str, Callable[[int], Any]] = {
            "block": grad_free(lambda i: block(features[i])),
            "block ORT": lambda i: block_session.run(None, {"x": features[i].numpy()}),  # noqa: B023 (called in this iteration)
        }
        if exported:
            zoo_session = ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])
            zoo_input = zoo_session.get_inputs()[0].name
            with torch.inference_mode():  # the variants agree before any timing
                want = model(padded[0])
                for name, got in (("TorchScript", scripted(padded[0])), ("pt2", program(padded[0])),
                                  ("ORT .onnx",
                                   torch.from_numpy(zoo_session.run(None, {zoo_input: padded[0].numpy()})[0])),
                                  ("zoo eager (unpadded)", model(tokens[0]))):
                    diff = float((got - want).abs().max())
                    if diff > 1e-4:
                        raise AssertionError(f"{name} differs from the eager model by {diff}")
            variants.update({
                "TorchScript": grad_free(lambda i: scripted(tokens[i])),
                f"zoo eager @{max_len}": grad_free(lambda i: model(padded[i])),
                f"pt2 @{max_len}": grad_free(lambda i: program(padded[i])),
                f"ORT .onnx @{max_len}": lambda i: zoo_session.run(None, {zoo_input: padded[i].numpy()}),  # noqa: B023 (called in this iteration)
            })
        variants["zoo eager"] = grad_free(lambda i: model(tokens[i]))
        for precision, (low_model, low_encoder, _) in low_precision.items():
            variants.update(latency_low_precision.latency_variants(precision, low_model, low_encoder, tokens,
                                                                   features))
        wanted = {VARIANTS[key].format(M=max_len) for key in args.variants}
        variants = {name: fn for name, fn in variants.items() if name in wanted}
        log(f"{threads} thread(s): {len(lengths)} requests x {len(variants)} variants")
        times, cpu = interleaved_requests(variants, lengths)
        for name, samples in times.items():
            results["latency"].append({"variant": name, "threads": threads, "p50_ms": 1e3 * percentile(samples, 50),
                                       "p99_ms": 1e3 * percentile(samples, 99),
                                       "p50_over_floor": percentile(samples, 50) / percentile(floors, 50),
                                       "mean_ms": 1e3 * statistics.fmean(samples), "requests": len(samples),
                                       "cpu_p50_ms": 1e3 * percentile(cpu[name], 50)})
        if not exported:
            continue
        # Throughput: B = 64 batches of the same requests, padded to the batch's longest (static T: to max_len)
        batches = []
        for b in range(args.batches):
            picked = [(b * 64 + j) % len(lengths) for j in range(64)]
            longest = max(lengths[i] for i in picked)
            batches.append((torch.cat([torch.nn.functional.pad(tokens[i], (0, longest - lengths[i])) for i in picked]),
                            torch.cat([padded[i] for i in picked])))
        throughput = {
            "zoo eager": grad_free(lambda k: model(batches[k][0])),  # noqa: B023 (called in this iteration)
            "TorchScript": grad_free(lambda k: scripted(batches[k][0])),  # noqa: B023 (called in this iteration)
            f"pt2 @{max_len}": grad_free(lambda k: program(batches[k][1])),  # noqa: B023 (called in this iteration)
            f"ORT .onnx @{max_len}": lambda k: zoo_session.run(None, {zoo_input: batches[k][1].numpy()}),  # noqa: B023 (called in this iteration)
        }
        for precision, (low_model, _, _) in low_precision.items():
            if f"zoo-{precision}" in args.variants:
                throughput.update(latency_low_precision.throughput_variants(precision, low_model, batches))
        batch_times, _ = interleaved_requests(throughput, list(range(len(batches))))
        for name, samples in batch_times.items():
            results["throughput"].append({"variant": name, "threads": threads, "batch": 64,
                                          "requests_per_s": 64 / statistics.median(samples),
                                          "batch_ms_p50": 1e3 * statistics.median(samples)})
    out = args.out or RESULTS / f"latency-{cpu_kernel.capability() or 'none'}.json"
    write_results(out, results)
    print(markdown(results))
    log(f"total {time.perf_counter() - started:.0f} s (exports {setup_s:.0f} s); written {out}")


LATENCY_COLUMNS: List[Column] = [
    ("variant", lambda r: r["variant"]), ("threads", lambda r: r["threads"]),
    ("p50 ms", lambda r: f"{r['p50_ms']:.3f}"), ("p99 ms", lambda r: f"{r['p99_ms']:.3f}"),
    ("mean ms", lambda r: f"{r['mean_ms']:.3f}"), ("p50 CPU ms", lambda r: f"{r['cpu_p50_ms']:.3f}")]
THROUGHPUT_COLUMNS: List[Column] = [
    ("throughput, B = 64", lambda r: r["variant"]), ("threads", lambda r: r["threads"]),
    ("requests / s", lambda r: f"{r['requests_per_s']:.0f}"),
    ("ms per batch (p50)", lambda r: f"{r['batch_ms_p50']:.2f}")]


def versus_ort(rows: List[Dict[str, Any]]) -> List[str]:
    """One line per thread count: the block's p50 and p99 over its ONNX Runtime twin's (goal: at most 0.8)."""
    lines = []
    for threads in sorted({r["threads"] for r in rows}):
        by = {r["variant"]: r for r in rows if r["threads"] == threads}
        if "block" in by and "block ORT" in by:
            lines.append(f"Block / its ONNX Runtime twin, {threads} thread(s), same run, interleaved: p50 "
                         f"{by['block']['p50_ms'] / by['block ORT']['p50_ms']:.2f}x, p99 "
                         f"{by['block']['p99_ms'] / by['block ORT']['p99_ms']:.2f}x (goal: at most 0.8x).")
    return lines


def markdown(results: Dict[str, Any]) -> str:
    m = results["machine"]
    lines = [f"Machine: {m['summary']}; onnxruntime {m['onnxruntime']}; kernel {m['capability']}; model "
             f"{m['model']}; request lengths from {m['lengths_source']}; static T of pt2/onnx = {m['max_len']}", ""]
    if "floor_p50_ms" in m:
        flops = (f"Physical floor: the median request ({m['median_request_tokens']} tokens, "
                 f"{m['median_request_mflop']} MFLOP through the block) at this core's measured float32 GEMM rate, "
                 f"{m['peak_gflops_1thread']} GFLOP/s on one thread")
        if "byte_floor_p50_ms" in m:
            flops += (f": {m['flop_floor_p50_ms']:.3f} ms of multiply-adds; reading its weights ({m['weight_mb']} MB "
                      f"once at {m['read_gbs_model']} GB/s, then each direction's W_hh again every step at "
                      f"{m['read_gbs_step']} GB/s, this core's measured read rates for buffers of those sizes): "
                      f"{m['byte_floor_p50_ms']:.3f} ms; the floor is the larger")
        lines += [flops + f": {m['floor_p50_ms']:.3f} ms (p99 request {m['floor_p99_ms']:.3f} ms); \"x floor\" is a "
                  f"row's p50 over it (run at nice {m.get('nice', 0)} on a machine shared with other jobs).", ""]
    lines += versus_ort(results["latency"]) + [""]
    columns = LATENCY_COLUMNS + ([("x floor", lambda r: f"{r['p50_over_floor']:.1f}")]
                                 if all("p50_over_floor" in r for r in results["latency"]) else [])
    lines += table(columns, results["latency"])
    if results["throughput"]:
        lines += [""] + table(THROUGHPUT_COLUMNS, results["throughput"])
    return "\n".join(lines)


if __name__ == "__main__":
    main()
