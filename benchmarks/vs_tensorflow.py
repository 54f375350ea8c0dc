"""The blocks against TensorFlow-Keras' ``Bidirectional(LSTM|GRU)`` stacks on CPU, and both against ``nn.LSTM``.

Usage (the TF side needs its own environment, outside the repo)::

    python -m venv TFVENV && TFVENV/bin/pip install tensorflow-cpu keras      # TFVENV: any folder
    python -m benchmarks.vs_tensorflow --tf-python TFVENV/bin/python [--rounds 5] [--threads 2]
    (or set BIRNN_ZOO_TF_PYTHON=TFVENV/bin/python once instead of --tf-python)
                                       [--only TEXT] [--quick] [--out STEM]

Writes ``benchmarks/results/vs_tensorflow[-quick].json`` (raw per-round times, versions, machine) and ``.md``.

TensorFlow and torch cannot share a process here (two OpenMP/oneDNN runtimes, two thread pools, and TF is not
installed in the project's environment), so every measurement is a worker process that prints JSON:

- ``benchmarks/tf_keras_worker.py``, run by the TF venv's python: the Keras stacks (see its docstring);
- this module with ``--worker torch --spec JSON``, run by the project's python: ``models.BiLSTM/BiGRU`` (time-major
  ``(T, B, in)``, ``lengths=`` a CPU int64 tensor for the lengths cases) and the fused reference
  ``nn.LSTM/nn.GRU(bidirectional=True)`` (no lengths).

Both time inference and a training step (forward, mean, backward; no optimizer) with the same protocol and the same
lengths: one first call per case (tracing), 2 warm-up calls, then the median of ``--repeats`` repeats of >= 0.1 s
each, the repeats interleaved over the worker's cases in a rotating order.

Why processes alternate: on a shared, noisy machine the load drifts over minutes. Each round runs, for each
configuration, one TF worker and one torch worker back to back, TF first on even rounds and torch first on odd
ones, so drift and "who ran right after whom" (caches, CPU frequency) hit both sides alike. Ratios are taken
per round (torch and TF times measured a few seconds apart) and the report gives the median over rounds of those
per-round ratios, with their min and max. ``blocks / TF-Keras`` below 1.0 means the blocks are faster.
"""

import os

# Before torch is imported: no OpenMP spin-waiting (a shared 2-core machine). Keras on torch only matters for
# machine.describe's keras version lookup in this process; the TF worker gets KERAS_BACKEND=tensorflow.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("KERAS_BACKEND", "torch")

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable, Deque, Dict, List, Optional

import torch

from .configs import Config
from .harness import Column, table, write_results
from .tf_keras_worker import KINDS, case_key, draw_lengths, log, parse_spec, time_cases

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
TF_WORKER = HERE / "tf_keras_worker.py"
TF_PYTHON_ENV = "BIRNN_ZOO_TF_PYTHON"  # no default path: where the TF venv lives is each machine's business
VENV_HINT = "python -m venv TFVENV && TFVENV/bin/pip install tensorflow-cpu keras"

# (batch, seq_len, input_size, hidden, num_layers): the two sizes, then two more from configs.plan.
SHAPES = [(64, 128, 128, 256, 2), (16, 512, 64, 128, 3), (64, 128, 128, 256, 4), (32, 64, 128, 256, 2)]
QUICK_SHAPE = (16, 32, 64, 128, 2)
CELLS = ("LSTM", "GRU")
MERGE_MODES = ("sum", "concat")
RATIO_LABELS = {
    "blocks_vs_tf": "blocks / TF-Keras",
    "tf_vs_fused": "TF-Keras / torch fused",
    "blocks_vs_fused": "blocks / torch fused",
    "aten_vs_tf": "blocks on PyTorch's kernels / TF-Keras",
}
ATEN = "aten "  # case-key prefix: the same block with the CPU kernel switched off (the blocks before it)
_WORKER_LOG = re.compile(r"^\[\d\d:\d\d:\d\d\] (tf|torch): ")


# ----------------------------------------------------------------------------------------------- plan and specs


def plan(quick: bool) -> List[Config]:
    """Every (cell, shape) configuration of a run; quick: the tiny shape only."""
    shapes = [QUICK_SHAPE] if quick else SHAPES
    return [Config(cell, *shape, families=("blocks", "fused", "tf_keras"), merge_modes=MERGE_MODES)
            for shape in shapes for cell in CELLS]


def make_spec(config: Config, threads: int, repeats: int, min_time: float) -> Dict[str, Any]:
    """The JSON spec both workers read (see ``tf_keras_worker.parse_spec`` for the defaults)."""
    return {"cell": config.cell, "batch": config.batch, "seq_len": config.seq_len,
            "input_size": config.input_size, "hidden": config.hidden, "num_layers": config.num_layers,
            "merge_modes": list(config.merge_modes), "lengths": [False, True], "threads": threads,
            "repeats": repeats, "min_time": min_time, "warmup": 2, "seed": 0}


def shape_label(config: Dict[str, Any]) -> str:
    """``B=16 T=512 in=64 H=128 L=3`` from a ``Config.as_dict()``."""
    return (f"B={config['batch']} T={config['seq_len']} in={config['input_size']} H={config['hidden']} "
            f"L={config['num_layers']}")


# ----------------------------------------------------------------------------------------------- torch worker


def torch_callables(model: torch.nn.Module, x: torch.Tensor, kwargs: Dict[str, Any]) -> Dict[str, Callable[[], None]]:
    """``{"infer": ..., "train": ...}``: a forward under ``inference_mode``; grads to None, forward, mean, backward."""

    def infer() -> None:
        with torch.inference_mode():
            model(x, **kwargs)

    def train() -> None:
        model.zero_grad(set_to_none=True)
        out = model(x, **kwargs)[0]
        out.mean().backward()

    return {"infer": infer, "train": train}


def torch_cases(spec: Dict[str, Any]) -> Dict[str, Callable[[], None]]:
    """``{case_key: callable}``: the fused reference (full length), then the blocks per merge mode and lengths."""
    from models import BiGRU, BiLSTM

    from .variants import AtenPath, fused_baseline

    blocks = {"LSTM": BiLSTM, "GRU": BiGRU}
    torch.manual_seed(spec["seed"])
    x = torch.randn(spec["seq_len"], spec["batch"], spec["input_size"])
    lengths = torch.tensor(draw_lengths(spec["batch"], spec["seq_len"], spec["seed"]), dtype=torch.int64)
    cases: Dict[str, Callable[[], None]] = {}
    fused = fused_baseline(spec["cell"], spec["input_size"], spec["hidden"], spec["num_layers"])
    for kind, fn in torch_callables(fused, x, {}).items():
        cases[case_key("fused", False, kind)] = fn
    for mode in spec["merge_modes"]:
        block = blocks[spec["cell"]](spec["input_size"], spec["hidden"], num_layers=spec["num_layers"], merge_mode=mode)
        for with_lengths in spec["lengths"]:
            kwargs = {"lengths": lengths} if with_lengths else {}
            for kind, fn in torch_callables(block, x, kwargs).items():
                cases[case_key(mode, with_lengths, kind)] = fn
            for kind, fn in torch_callables(AtenPath(block), x, kwargs).items():
                cases[ATEN + case_key(mode, with_lengths, kind)] = fn
    return cases


def torch_worker(spec: Dict[str, Any]) -> Dict[str, Any]:
    """Time every torch case of ``spec`` with the TF worker's protocol; same result layout as the TF worker."""
    torch.set_num_threads(int(spec["threads"]))
    result: Dict[str, Any] = {"threads": {"intra_op": torch.get_num_threads(),
                                          "inter_op": torch.get_num_interop_threads()},
                              "versions": {"torch": torch.__version__, "onednn": torch.backends.mkldnn.is_available(),
                                           "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                                           "python": sys.version.split()[0]},
                              "lengths": draw_lengths(spec["batch"], spec["seq_len"], spec["seed"])}
    result.update(time_cases(torch_cases(spec), spec, spec["cell"], "torch"))
    return result


# ----------------------------------------------------------------------------------------------- orchestration


def check_tf_python(path: str) -> None:
    """Exit with instructions when the TF environment's python is missing or not executable."""
    if not (Path(path).is_file() and os.access(path, os.X_OK)):
        raise SystemExit(f"TensorFlow python not found at {path!r}. Create the TF environment outside the repo:\n"
                         f"    {VENV_HINT}\nand pass --tf-python /path/to/python of an environment with tensorflow-cpu "
                         f"and keras (or set {TF_PYTHON_ENV}).")


def worker_command(side: str, spec: Dict[str, Any], tf_python: str) -> List[str]:
    """The command line of one worker process."""
    if side == "tf":
        return [tf_python, str(TF_WORKER), "--spec", json.dumps(spec)]
    return [sys.executable, "-m", "benchmarks.vs_tensorflow", "--worker", "torch", "--spec", json.dumps(spec)]


def worker_env(side: str) -> Dict[str, str]:
    """The environment of a worker: passive OpenMP waits; Keras on TensorFlow for the TF side."""
    env = dict(os.environ)
    env["OMP_WAIT_POLICY"] = "PASSIVE"
    if side == "tf":
        env["KERAS_BACKEND"] = "tensorflow"
    return env


def run_worker(side: str, command: List[str]) -> Dict[str, Any]:
    """Run one worker, forward its progress lines to stderr, and return its JSON result.

    Raises ``RuntimeError`` with the tail of its stderr when it fails or prints no JSON.
    """
    tail: Deque[str] = deque(maxlen=40)
    with tempfile.TemporaryFile("w+") as stdout:
        proc = subprocess.Popen(command, cwd=ROOT, env=worker_env(side), stdout=stdout, stderr=subprocess.PIPE,
                                text=True)
        assert proc.stderr is not None
        for line in proc.stderr:
            tail.append(line.rstrip())
            if _WORKER_LOG.match(line):
                print(line.rstrip(), file=sys.stderr, flush=True)
        code = proc.wait()
        stdout.seek(0)
        out = stdout.read().strip().splitlines()
    if code != 0 or not out:
        raise RuntimeError(f"{side} worker failed (exit {code}): {' '.join(command[:4])} ...\n" + "\n".join(tail))
    return json.loads(out[-1])


def round_ratios(tf_times: Dict[str, float], torch_times: Dict[str, float]) -> Dict[str, Dict[str, float]]:
    """Per-round ratios for every TF case key: blocks / TF, TF / fused, blocks / fused; for lengths cases also the
    cost of lengths on each side (time with lengths / the same case without)."""
    out: Dict[str, Dict[str, float]] = {}
    for key, tf_s in tf_times.items():
        mode, lengths, kind = key.split("|")
        fused = torch_times[case_key("fused", False, kind)]
        ratios = {"blocks_vs_tf": torch_times[key] / tf_s, "tf_vs_fused": tf_s / fused,
                  "blocks_vs_fused": torch_times[key] / fused}
        if ATEN + key in torch_times:
            ratios["aten_vs_tf"] = torch_times[ATEN + key] / tf_s
        full = case_key(mode, False, kind)
        if lengths == "lengths" and full in tf_times:
            ratios["blocks_lengths_cost"] = torch_times[key] / torch_times[full]
            ratios["tf_lengths_cost"] = tf_s / tf_times[full]
        out[key] = ratios
    return out


def summarize(values: List[float]) -> Dict[str, float]:
    """Median, min, max and count of ``values``."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def aggregate(per_round: List[Dict[str, Dict[str, float]]]) -> Dict[str, Dict[str, Dict[str, float]]]:
    """``{case_key: {ratio: summary over rounds}}`` from a list of ``round_ratios`` results."""
    values: Dict[str, Dict[str, List[float]]] = {}
    for ratios in per_round:
        for key, named in ratios.items():
            for name, value in named.items():
                values.setdefault(key, {}).setdefault(name, []).append(value)
    return {key: {name: summarize(v) for name, v in named.items()} for key, named in values.items()}


def median_times(rounds: List[Dict[str, Any]], side: str) -> Dict[str, float]:
    """Median over rounds of each case's seconds per call on ``side`` ("tf" or "torch")."""
    keys = rounds[0][side]["times"]
    return {k: statistics.median(r[side]["times"][k] for r in rounds) for k in keys}


def summarize_config(config: Config, rounds: List[Dict[str, Any]]) -> Dict[str, Any]:
    """A configuration's JSON block: its raw rounds, the per-round ratios' summaries and the median times."""
    per_round = [round_ratios(r["tf"]["times"], r["torch"]["times"]) for r in rounds]
    return {"config": config.as_dict(), "rounds": rounds, "ratios": aggregate(per_round),
            "median_s": {"tf": median_times(rounds, "tf"), "torch": median_times(rounds, "torch")}}


# ----------------------------------------------------------------------------------------------- report


def _cell(summary: Optional[Dict[str, float]], spread: bool) -> str:
    """``0.42 (0.40-0.45)``: the median, and with ``spread`` the min-max over rounds; ``-`` when missing."""
    if summary is None:
        return "-"
    text = f"{summary['median']:.2f}"
    return text + (f" ({summary['min']:.2f}-{summary['max']:.2f})" if spread and summary["n"] > 1 else "")


def markdown(payload: Dict[str, Any]) -> str:
    """Three tables: the ratios (headline ``blocks / TF-Keras`` first), the cost of lengths, the median times."""
    v = payload["versions"]
    lines = [
        "# Blocks vs TensorFlow-Keras (CPU)", "",
        f"Machine: {payload['machine'].get('summary', '')}", "",
        f"TensorFlow {v.get('tensorflow')}, Keras {v.get('keras')} (oneDNN {v.get('tf_onednn')}, intra/inter-op "
        f"threads {v.get('tf_threads')}); torch {v.get('torch')} (threads {v.get('torch_threads')}). "
        f"{payload['rounds']} rounds; {payload['repeats']} repeats of >= {payload['min_time']} s per case and worker.",
        "",
        "Each cell: median over rounds of the per-round time ratio (min-max over rounds). Per round, the TF and torch "
        "worker processes run back to back, alternating which goes first. `blocks / TF-Keras` < 1 means the blocks "
        "are faster. TF-Keras: `Bidirectional(LSTM|GRU(H, return_sequences=True), merge_mode=m) x L`, batch-major, "
        "`tf.function` (no XLA); with lengths a boolean mask. blocks: `models.BiLSTM/BiGRU`, time-major, `lengths=`. "
        "torch fused: `nn.LSTM/nn.GRU(bidirectional=True)` without lengths (concat). blocks on PyTorch's kernels: the "
        "blocks inside `models.blocks.cpu_kernel.disabled()`, as they ran before the CPU kernel. Training step: "
        "forward + mean + gradients, no optimizer.", "",
    ]
    ratio_rows: List[Dict[str, Any]] = []
    for block in payload["configs"]:
        c, ratios, med = block["config"], block["ratios"], block["median_s"]
        for mode in c["merge_modes"]:
            for with_lengths in (False, True):
                keys = {kind: case_key(mode, with_lengths, kind) for kind in KINDS}
                if keys["infer"] not in ratios:
                    continue
                fused = {kind: med["torch"][case_key("fused", False, kind)] for kind in KINDS}
                ratio_rows.append({"label": shape_label(c), "cell": c["cell"], "mode": mode, "lengths": with_lengths,
                                   "ratios": {kind: ratios[keys[kind]] for kind in KINDS},
                                   "ms": {(side, kind): med[side][keys[kind]] * 1e3 for side in ("torch", "tf")
                                          for kind in KINDS} | {("fused", kind): fused[kind] * 1e3 for kind in KINDS}})
    lengths_rows = [r for r in ratio_rows if r["lengths"]]
    lines += table(_ROW_COLUMNS + [(f"{label} {kind}", _ratio_cell(name, kind, True))
                                   for name, label in RATIO_LABELS.items() for kind in KINDS], ratio_rows,
                   "llll" + "r" * (len(RATIO_LABELS) * len(KINDS)))
    cost = ["## Cost of lengths", "", "Time with lengths / the same case without (median of per-round ratios).", ""]
    cost += table(_ROW_COLUMNS[:3] + [(f"{side} {kind}", _ratio_cell(name, kind, False))
                                     for name, side in (("blocks_lengths_cost", "blocks"),
                                                        ("tf_lengths_cost", "TF-Keras")) for kind in KINDS],
                  lengths_rows, "lllrrrr")
    times = ["## Median times (ms per call)", ""]
    times += table(_ROW_COLUMNS + [(f"{label} {kind}", _ms_cell(side, kind))
                                   for side, label in (("torch", "blocks"), ("tf", "TF-Keras"),
                                                       ("fused", "torch fused"))
                                   for kind in KINDS], ratio_rows, "llllrrrrrr")
    return "\n".join([*lines, "", *cost, "", *times]) + "\n"


_ROW_COLUMNS: List[Column] = [("config", lambda r: r["label"]), ("cell", lambda r: r["cell"]),
                              ("merge", lambda r: r["mode"]), ("lengths", lambda r: "yes" if r["lengths"] else "no")]


def _ratio_cell(name: str, kind: str, spread: bool) -> Callable[[Dict[str, Any]], str]:
    return lambda r: _cell(r["ratios"][kind].get(name), spread)


def _ms_cell(side: str, kind: str) -> Callable[[Dict[str, Any]], str]:
    return lambda r: f"{r['ms'][side, kind]:.1f}"


def write_outputs(stem: Path, payload: Dict[str, Any]) -> None:
    """``<stem>.json`` and ``<stem>.md``."""
    write_results(stem.with_suffix(".json"), payload, stem.with_suffix(".md"), markdown(payload))


def collect_versions(tf_result: Dict[str, Any], torch_result: Dict[str, Any]) -> Dict[str, Any]:
    """The versions and thread settings both workers reported."""
    tf_v, torch_v = tf_result["versions"], torch_result["versions"]
    return {"tensorflow": tf_v.get("tensorflow"), "keras": tf_v.get("keras"),
            "keras_backend": tf_v.get("keras_backend"),
            "tf_numpy": tf_v.get("numpy"), "tf_onednn": tf_v.get("onednn"), "tf_python": tf_v.get("python"),
            "tf_threads": tf_result.get("threads"), "torch": torch_v.get("torch"),
            "torch_onednn": torch_v.get("onednn"), "torch_threads": torch_result.get("threads"),
            "tf_mask_check": tf_result.get("mask_check")}


def parse(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """Command-line arguments (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tf-python", default=os.environ.get(TF_PYTHON_ENV, ""),
                        help=f"python of the TF venv (default ${TF_PYTHON_ENV})")
    parser.add_argument("--rounds", type=int, default=None, help="rounds of worker pairs (default 5; 2 with --quick)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads; TF intra- and inter-op threads")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per case and worker (median)")
    parser.add_argument("--min-time", type=float, default=0.1, help="seconds each repeat lasts at least")
    parser.add_argument("--only", action="append", default=[], help="only configurations whose name contains "
                        "this text, e.g. 'GRU' or 'B=16 T=512'; repeat it for several")
    parser.add_argument("--quick", action="store_true", help="one tiny configuration per cell, 2 rounds")
    parser.add_argument("--out", default=None,
                        help="output stem under benchmarks/results (default vs_tensorflow[-quick])")
    parser.add_argument("--worker", choices=("torch",), default=None, help=argparse.SUPPRESS)
    parser.add_argument("--spec", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def orchestrate(args: argparse.Namespace) -> Dict[str, Any]:
    """All rounds over all configurations; writes the JSON and markdown after every round."""
    from .machine import describe

    check_tf_python(args.tf_python)
    rounds = args.rounds if args.rounds is not None else (2 if args.quick else 5)
    configs = [c for c in plan(args.quick) if not args.only or any(text in c.name for text in args.only)]
    if not configs:
        raise SystemExit(f"--only {args.only!r} matches no configuration of {[c.name for c in plan(args.quick)]}")
    stem = RESULTS / (args.out or ("vs_tensorflow" + ("-quick" if args.quick else "")))
    machine = describe("cpu", args.threads)
    log(machine["summary"], side="main")
    log(f"{len(configs)} configurations x {rounds} rounds, TF python {args.tf_python}", side="main")
    started = time.perf_counter()
    raw: Dict[str, List[Dict[str, Any]]] = {c.name: [] for c in configs}
    payload: Dict[str, Any] = {}
    for r in range(rounds):
        order = ("tf", "torch") if r % 2 == 0 else ("torch", "tf")
        for config in configs:
            spec = make_spec(config, args.threads, args.repeats, args.min_time)
            entry: Dict[str, Any] = {"round": r, "order": list(order)}
            for side in order:
                log(f"round {r + 1}/{rounds} {config.name}: {side} worker", side="main")
                t0 = time.perf_counter()
                entry[side] = run_worker(side, worker_command(side, spec, args.tf_python))
                entry[f"{side}_wall_s"] = time.perf_counter() - t0
            raw[config.name].append(entry)
            for key, ratio in round_ratios(entry["tf"]["times"], entry["torch"]["times"]).items():
                log(f"  {config.name} {key}: blocks/TF {ratio['blocks_vs_tf']:.2f}, TF/fused "
                    f"{ratio['tf_vs_fused']:.2f}, blocks/fused {ratio['blocks_vs_fused']:.2f}", side="main")
        first = raw[configs[0].name][0]
        payload = {
            "quick": args.quick, "rounds": r + 1, "rounds_planned": rounds, "repeats": args.repeats,
            "min_time": args.min_time, "threads": args.threads, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "machine": machine, "versions": collect_versions(first["tf"], first["torch"]),
            "wall_s": time.perf_counter() - started,
            "configs": [summarize_config(c, raw[c.name]) for c in configs],
        }
        write_outputs(stem, payload)
    try:
        payload["machine"]["load_average_end"] = os.getloadavg()
    except OSError:
        pass
    write_outputs(stem, payload)
    log(f"wrote {stem}.json and .md in {payload['wall_s']:.0f}s", side="main")
    return payload


def main(argv: Optional[List[str]] = None) -> Optional[Dict[str, Any]]:
    """Orchestrate, or with ``--worker torch --spec JSON`` time the torch side and print JSON on stdout."""
    args = parse(argv)
    if args.worker == "torch":
        if not args.spec:
            raise SystemExit("--worker torch needs --spec JSON")
        print(json.dumps(torch_worker(parse_spec(args.spec))), flush=True)
        return None
    return orchestrate(args)


if __name__ == "__main__":
    main()
