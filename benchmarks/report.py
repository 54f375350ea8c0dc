"""Turn timings into rows (tokens/s, ratio to the fused baseline, GFLOP/s, % of matmul peak), check the
targets, and write ``results/<device>.json`` and ``results/<device>.md``."""

from typing import Any, Dict, List

from .cases import Case
from .configs import Config
from .harness import Column, table
from .timing import Series

KINDS = ("inference", "train")
_PEAK_KEY = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def rows(config: Config, cases: List[Case], timings: Dict[str, Series], peak: Dict[str, float]) -> List[Dict[str, Any]]:
    """One dict per case with, for each kind, median seconds, tokens/s, ratios, GFLOP/s and % of peak."""
    base = cases[0].name
    out: List[Dict[str, Any]] = []
    for case in cases:
        row: Dict[str, Any] = {"name": case.name, "family": case.family, "merge_mode": case.merge_mode,
                               "precision": case.precision, "compare_to": case.compare_to}
        for kind in KINDS:
            series = timings[f"{case.name}|{kind}"]
            seconds = series.median
            flops = case.flops * (3.0 if kind == "train" else 1.0)
            gflops = flops / seconds / 1e9
            entry = {
                "median_s": seconds,
                "samples_s": series.samples,
                "calls_per_sample": series.number,
                "spread": series.spread,
                "tokens_per_s": config.tokens / seconds,
                "ratio_to_fused": seconds / timings[f"{base}|{kind}"].median,
                "best_s": series.best,
                "best_ratio_to_fused": series.best / timings[f"{base}|{kind}"].best,
                "gflops": gflops,
                "pct_of_peak": 100.0 * gflops / peak.get(_PEAK_KEY[case.precision], float("nan")),
            }
            if case.compare_to and f"{case.compare_to}|{kind}" in timings:
                entry["ratio_to_compare"] = seconds / timings[f"{case.compare_to}|{kind}"].median
                entry["best_ratio_to_compare"] = series.best / timings[f"{case.compare_to}|{kind}"].best
            row[kind] = entry
        if case.setup:
            setup = dict(case.setup)
            setup["compile_inference_s"] = setup["first_inference_s"] - row["inference"]["median_s"]
            setup["compile_train_s"] = setup["first_train_step_s"] - row["train"]["median_s"]
            row["setup"] = setup
        out.append(row)
    return out


def check_targets(config: Config, results: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The issue's targets on this configuration; ``value`` is a time ratio unless said otherwise."""
    checks: List[Dict[str, Any]] = []

    def check(target: str, key: str, r: Dict[str, Any], limit: float, kind: str, at_most: bool = True) -> None:
        value, best = r[kind][key], r[kind]["best_" + key]
        met = value <= limit if at_most else value >= limit
        met_best = best <= limit if at_most else best >= limit
        checks.append({"config": config.name, "target": target, "kind": kind, "value": round(value, 3),
                       "best_value": round(best, 3), "limit": limit, "met": bool(met), "met_best": bool(met_best)})

    for kind in KINDS:
        for r in results:
            if r["family"] == "blocks":
                if r["merge_mode"] == "concat":
                    check("blocks[concat] / fused <= 1.03", "ratio_to_fused", r, 1.03, kind)
                elif config.num_layers >= 2:
                    check(f"blocks[{r['merge_mode']}] / fused <= 1.0", "ratio_to_fused", r, 1.0, kind)
                    if r["merge_mode"] == "sum":
                        check("blocks[sum] / fused <= 0.90", "ratio_to_fused", r, 0.90, kind)
            elif r["family"] == "lengths":
                check(f"{r['name']} / blocks[{r['merge_mode']}] <= 1.15", "ratio_to_compare", r, 1.15, kind)
            elif r["family"] == "flip":
                check(f"{r['name']} / blocks[{r['merge_mode']}] > 1 (blocks faster)", "ratio_to_compare", r, 1.0,
                      kind, at_most=False)
            elif r["family"] == "keras" and kind == "train":
                check(f"{r['name']} / blocks[{r['merge_mode']}] >= 2 (train step)", "ratio_to_compare", r, 2.0,
                      kind, at_most=False)
    return checks


def _ref(r: Dict[str, Any]) -> str:
    i, t = r["inference"], r["train"]
    if "ratio_to_compare" not in i:
        return ""
    return (f"{i['ratio_to_compare']:.2f} / {t['ratio_to_compare']:.2f} "
            f"({i['best_ratio_to_compare']:.2f} / {t['best_ratio_to_compare']:.2f})")


def _kind_columns(kind: str, label: str) -> List[Column]:
    return [(f"{label} ms", lambda r: f"{r[kind]['median_s'] * 1e3:.1f}"),
            (f"{label} tok/s", lambda r: f"{r[kind]['tokens_per_s']:.0f}"),
            (f"{label} x fused (best)",
             lambda r: f"{r[kind]['ratio_to_fused']:.2f} ({r[kind]['best_ratio_to_fused']:.2f})"),
            (f"{label} GFLOP/s (% peak)", lambda r: f"{r[kind]['gflops']:.1f} ({r[kind]['pct_of_peak']:.0f}%)")]


VARIANT_COLUMNS: List[Column] = [("variant", lambda r: r["name"]), *_kind_columns("inference", "inf"),
                                 *_kind_columns("train", "train"), ("ref", lambda r: r["compare_to"] or ""),
                                 ("x ref inf / train (best)", _ref)]
TARGET_COLUMNS: List[Column] = [
    ("config", lambda c: c["config"]), ("target", lambda c: c["target"]), ("kind", lambda c: c["kind"]),
    ("value", lambda c: f"{c['value']:.3f}"), ("met", lambda c: "yes" if c["met"] else "NO"),
    ("best", lambda c: f"{c['best_value']:.3f}"), ("met (best)", lambda c: "yes" if c["met_best"] else "NO")]


def markdown(payload: Dict[str, Any]) -> str:
    """Markdown tables: one per configuration, then the targets."""
    lines = [f"# Benchmark results: {payload['device']}", "", f"Machine: {payload['machine']['summary']}", "",
             "Matmul peak (GFLOP/s): " + ", ".join(f"{k} {v:.0f}" for k, v in payload["matmul_peak_gflops"].items()),
             "", "Times are medians of interleaved rounds; `x fused` = time / fused baseline's time in the same "
             "run (lower is faster), `(best)` the same from each variant's fastest round; `x ref` = time / the "
             "variant named in `ref`. GFLOP/s counts "
             "2*T*B*G*H*(in+H) per direction and layer (G=4 LSTM, 3 GRU), 3x for a training step.", ""]
    for block in payload["configs"]:
        lines += [f"## {block['config']['name']}", ""] + table(VARIANT_COLUMNS, block["results"], "lrrrrrrrrlr")
        compiled = [r for r in block["results"] if "setup" in r]
        if compiled:
            lines += ["", "Compile time (first call minus a steady call): " + ", ".join(
                f"{r['name']} inference {r['setup']['compile_inference_s']:.1f}s / train "
                f"{r['setup']['compile_train_s']:.1f}s" for r in compiled)]
        lines.append("")
    lines += ["## Targets", "", "`value` from medians, `best` from the fastest round of each.", ""]
    lines += table(TARGET_COLUMNS, payload["targets"], "lllrlrl")
    return "\n".join(lines) + "\n"
