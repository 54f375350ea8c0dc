"""TensorFlow-Keras side of ``benchmarks.vs_tensorflow``: times one configuration and prints JSON.

Run it with the python of a separate TensorFlow environment (TF and torch do not share a process here)::

    TFVENV/bin/python benchmarks/tf_keras_worker.py --spec '{"cell": "LSTM", "batch": 16, ...}'

For every merge mode of the spec it builds ``keras.Sequential([Input((T, in)), Bidirectional(LSTM|GRU(H,
return_sequences=True), merge_mode=m) x L])`` (float32, batch-major: Keras' native layout) and times:

- inference: a ``tf.function`` (``jit_compile=False``) returning ``model(x, training=False)``;
- a training step: a ``tf.function`` returning the gradients of ``reduce_mean(model(x, training=True))``
  w.r.t. ``model.trainable_variables`` under ``tf.GradientTape`` (no optimizer step). The gradients are
  returned so that ``tf.function`` cannot prune their computation;
- with lengths, the same two with a boolean mask ``(B, T)`` (right padding) passed as ``model(x, mask=m)``:
  Keras hands it to every ``Bidirectional`` layer; ``check_mask`` verifies once per process that it reaches
  the RNNs (zero outputs at padded steps, a padded row equal to that row run alone).

Each callable is traced, warmed up and timed by ``time_cases`` (median of repeats, interleaved over the cases). Output,
one JSON object on stdout: ``{"times": {case_key: seconds_per_call}, "samples": ..., "versions": ..., "threads": ...}``.

This file imports neither torch nor ``models``; its pure helpers (``parse_spec``, ``draw_lengths``,
``case_key``, ``time_cases``) are shared with the torch worker in ``vs_tensorflow``, so both sides use the same
lengths and the same timing protocol. TensorFlow is imported inside the functions that need it.
"""

import argparse
import json
import os
import random
import sys
import warnings
from typing import Any, Callable, Dict, List, Optional

# Run as a script, this file's folder heads sys.path, where a module named like a standard one (an earlier
# benchmarks/concurrent.py shadowed ``concurrent``, which TensorFlow imports) would break TF: drop the folder.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
if not __package__:  # run as a script: the checkout's root, for the harness (standard library only, no torch)
    sys.path.insert(0, os.path.dirname(_HERE))

from benchmarks.harness import in_process, interleaved  # noqa: E402 (after the path fix above)
from benchmarks.harness import log as harness_log  # noqa: E402

# Before TensorFlow is imported: the TF backend for Keras, no OpenMP spin-waiting on a shared machine.
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

KINDS = ("infer", "train")
SPEC_FIELDS = ("cell", "batch", "seq_len", "input_size", "hidden", "num_layers")
SPEC_DEFAULTS: Dict[str, Any] = {
    "merge_modes": ["sum", "concat"],
    "lengths": [False, True],
    "threads": 2,
    "repeats": 3,
    "min_time": 0.1,
    "warmup": 2,
    "seed": 0,
}


def parse_spec(text: str) -> Dict[str, Any]:
    """The JSON spec of one configuration, with defaults filled in; ``ValueError`` on a missing field."""
    spec = json.loads(text)
    missing = [f for f in SPEC_FIELDS if f not in spec]
    if missing:
        raise ValueError(f"spec is missing {missing}; got {sorted(spec)}")
    if spec["cell"] not in ("LSTM", "GRU"):
        raise ValueError(f"spec cell must be 'LSTM' or 'GRU', got {spec['cell']!r}")
    return {**SPEC_DEFAULTS, **spec}


def case_key(mode: str, lengths: bool, kind: str) -> str:
    """The key of one timed case, e.g. ``"sum|lengths|train"`` (``mode`` is ``"fused"`` for the reference)."""
    return f"{mode}|{'lengths' if lengths else 'full'}|{kind}"


def draw_lengths(batch: int, seq_len: int, seed: int) -> List[int]:
    """Right-padding lengths drawn uniformly in ``[T/2, T]`` with a fixed seed; at least one row has length T.

    Uses the standard library's ``random`` so both environments (TF venv, project) draw the same lengths.
    """
    rng = random.Random(seed)
    lengths = [rng.randint(max(1, seq_len // 2), seq_len) for _ in range(batch)]
    lengths[rng.randrange(batch)] = seq_len
    return lengths


def _sample(fn: Callable[[], object], number: int) -> float:
    """Seconds per call of ``number`` back-to-back calls."""
    return in_process(fn)(number, 0, 0)[0] / number


def measure_all(fns: Dict[str, Callable[[], object]], repeats: int, min_time: float,
                warmup: int) -> Dict[str, Dict[str, Any]]:
    """Warm each callable up with ``warmup`` calls (the last one timed, to pick how many back-to-back calls make a
    repeat last ``min_time`` seconds), then run ``repeats`` repeats, each timing every callable once in a rotating
    order, so a burst of background load spreads over the cases instead of hitting one (``benchmarks/harness.py``).

    Returns ``{key: {"median": seconds per call, "samples": per-repeat seconds per call, "number": calls per
    repeat}}``.
    """
    series = interleaved({key: in_process(fn) for key, fn in fns.items()}, min_time=min_time, first_calls=warmup,
                         min_rounds=repeats)
    return {key: {"median": s.median, "samples": s.samples, "number": s.number} for key, s in series.items()}


def time_cases(fns: Dict[str, Callable[[], object]], spec: Dict[str, Any], label: str,
               side: str) -> Dict[str, Dict[str, Any]]:
    """The shared protocol of both workers: one first call per case (tracing, for ``tf.function``), then
    ``measure_all``. Returns the result fields ``times``, ``samples``, ``calls_per_sample`` and ``first_call_s``."""
    first: Dict[str, float] = {}
    for key, fn in fns.items():
        first[key] = _sample(fn, 1)
    log(f"{label}: {len(fns)} cases, first calls {sum(first.values()):.1f}s; warm-up and {spec['repeats']} "
        "interleaved repeats", side=side)
    measured = measure_all(fns, int(spec["repeats"]), float(spec["min_time"]), int(spec["warmup"]))
    for key, m in measured.items():
        log(f"{label} {key}: {m['median'] * 1e3:.1f} ms (first call {first[key]:.2f}s, {m['number']} calls x "
            f"{len(m['samples'])})", side=side)
    return {"times": {k: m["median"] for k, m in measured.items()},
            "samples": {k: m["samples"] for k, m in measured.items()},
            "calls_per_sample": {k: m["number"] for k, m in measured.items()},
            "first_call_s": first}


def log(message: str, side: str = "tf") -> None:
    """A timestamped progress line on stderr (stdout carries the JSON result only), e.g. ``[12:00:00] tf: ...``."""
    harness_log(message, side)


def configure_threads(threads: int) -> Dict[str, int]:
    """Set TF's intra- and inter-op thread pools (before any op runs) and return what TF reports back."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    return {"intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
            "inter_op": tf.config.threading.get_inter_op_parallelism_threads()}


def versions() -> Dict[str, Any]:
    """TensorFlow, Keras, numpy and Python versions, the Keras backend, and whether oneDNN is on."""
    import keras
    import numpy
    import tensorflow as tf

    info: Dict[str, Any] = {"tensorflow": tf.__version__, "keras": keras.__version__, "numpy": numpy.__version__,
                            "keras_backend": keras.backend.backend(), "python": sys.version.split()[0]}
    try:  # private API; TF prints "oneDNN custom operations are on" at import as well
        from tensorflow.python.util import _pywrap_util_port

        info["onednn"] = bool(_pywrap_util_port.IsMklEnabled())
    except Exception:
        info["onednn"] = None
    info["tf_enable_onednn_opts"] = os.environ.get("TF_ENABLE_ONEDNN_OPTS")
    return info


def build_model(cell: str, seq_len: int, input_size: int, hidden: int, num_layers: int, merge_mode: str) -> Any:
    """``Bidirectional(LSTM|GRU(hidden, return_sequences=True), merge_mode) x num_layers`` on ``(B, T, in)``."""
    import keras

    layer_cls = {"LSTM": keras.layers.LSTM, "GRU": keras.layers.GRU}[cell]
    layers: List[Any] = [keras.Input((seq_len, input_size), dtype="float32")]
    for _ in range(num_layers):
        layers.append(keras.layers.Bidirectional(layer_cls(hidden, return_sequences=True), merge_mode=merge_mode))
    return keras.Sequential(layers)


def make_mask(lengths: List[int], seq_len: int) -> Any:
    """Boolean ``(B, T)`` mask, True at valid steps (right padding)."""
    import numpy as np

    return np.arange(seq_len)[None, :] < np.asarray(lengths)[:, None]


def check_mask(cell: str) -> Dict[str, float]:
    """On a tiny stack: outputs at padded steps must be zero and a padded row must equal that row run alone.

    Raises ``RuntimeError`` when the mask does not reach the RNNs (both hold only if it does).
    """
    import numpy as np
    import tensorflow as tf

    seq_len, feat = 7, 3
    model = build_model(cell, seq_len, feat, 4, 2, "sum")
    x = np.random.default_rng(0).standard_normal((3, seq_len, feat)).astype("float32")
    lengths = [7, 3, 5]
    call = tf.function(lambda a, m: model(a, mask=m, training=False), jit_compile=False)
    out = call(tf.constant(x), tf.constant(make_mask(lengths, seq_len))).numpy()
    padded_max = float(max(np.abs(out[i, n:]).max(initial=0.0) for i, n in enumerate(lengths)))
    alone = model(x[1:2, : lengths[1]], training=False).numpy()
    row_diff = float(np.abs(out[1, : lengths[1]] - alone[0]).max())
    if padded_max != 0.0 or row_diff > 1e-5:
        raise RuntimeError(f"the mask does not reach the RNNs: |out| at padded steps {padded_max}, "
                           f"padded row vs alone {row_diff}")
    return {"padded_abs_max": padded_max, "row_vs_alone_max_diff": row_diff}


def callables(model: Any, x: Any, mask: Optional[Any]) -> Dict[str, Callable[[], object]]:
    """``{"infer": ..., "train": ...}``: fresh ``tf.function``s (``jit_compile=False``) bound to ``x`` and ``mask``."""
    import tensorflow as tf

    @tf.function(jit_compile=False)
    def infer(inputs: Any, m: Optional[Any]) -> Any:
        return model(inputs, mask=m, training=False)

    @tf.function(jit_compile=False)
    def train(inputs: Any, m: Optional[Any]) -> Any:
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(model(inputs, mask=m, training=True))
        return loss, tape.gradient(loss, model.trainable_variables)

    return {"infer": lambda: infer(x, mask), "train": lambda: train(x, mask)}


def time_spec(spec: Dict[str, Any]) -> Dict[str, Any]:
    """Build and trace every (merge mode, lengths, kind) case of ``spec``, then time them all (``time_cases``)."""
    import numpy as np
    import tensorflow as tf

    threads = configure_threads(int(spec["threads"]))
    import keras

    keras.utils.set_random_seed(int(spec["seed"]))
    batch, seq_len = spec["batch"], spec["seq_len"]
    x = tf.constant(np.random.default_rng(spec["seed"]).standard_normal(
        (batch, seq_len, spec["input_size"])).astype("float32"))
    lengths = draw_lengths(batch, seq_len, spec["seed"])
    mask = tf.constant(make_mask(lengths, seq_len))
    result: Dict[str, Any] = {"threads": threads, "versions": versions(), "lengths": lengths}
    if any(spec["lengths"]):
        result["mask_check"] = check_mask(spec["cell"])
    fns: Dict[str, Callable[[], object]] = {}
    for mode in spec["merge_modes"]:
        model = build_model(spec["cell"], seq_len, spec["input_size"], spec["hidden"], spec["num_layers"], mode)
        for with_lengths in spec["lengths"]:
            for kind, fn in callables(model, x, mask if with_lengths else None).items():
                fns[case_key(mode, with_lengths, kind)] = fn
    result.update(time_cases(fns, spec, spec["cell"], "tf"))
    return result


def main(argv: Optional[List[str]] = None) -> None:
    """Parse ``--spec`` (and ``--threads``, which overrides the spec's), time it, print the JSON result."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", required=True, help="JSON: cell, batch, seq_len, input_size, hidden, num_layers, ...")
    parser.add_argument("--threads", type=int, default=None, help="TF intra- and inter-op threads (default: spec's, 2)")
    args = parser.parse_args(argv)
    # Expected: the mask is meant for the Bidirectional layers; the Sequential itself returns no mask.
    warnings.filterwarnings("ignore", message=".*does not support masking and will therefore destroy the mask")
    spec = parse_spec(args.spec)
    if args.threads is not None:
        spec["threads"] = args.threads
    print(json.dumps(time_spec(spec)), flush=True)


if __name__ == "__main__":
    main()
