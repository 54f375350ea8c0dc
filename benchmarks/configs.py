"""Problem sizes, the variant plan per size, and the FLOP count of a bidirectional stack."""

from dataclasses import asdict, dataclass
from typing import Dict, List, Optional

_GATES = {"LSTM": 4, "GRU": 3}

# Variant families (see cases.py): which ones run on a configuration.
FULL_MATRIX = ("fused", "threads1", "blocks", "script", "compile", "flip", "loop", "keras", "lengths", "lowp",
               "aten")
GRU_MATRIX = ("fused", "threads1", "blocks", "script", "compile", "flip", "loop", "keras", "lengths", "aten",
              "one_mode")  # GRU: script/compile/flip/loop for sum only; autocast does not touch aten::gru
CORE = ("fused", "blocks", "lengths", "aten", "one_length")


@dataclass(frozen=True)
class Config:
    """One problem: ``cell`` over ``(T, B, input_size)`` with ``num_layers`` bidirectional layers of ``hidden``."""

    cell: str
    batch: int
    seq_len: int
    input_size: int
    hidden: int
    num_layers: int
    families: tuple = CORE
    merge_modes: tuple = ("concat", "sum")
    budget_s: float = 60.0  # timing budget after the warm-up: rounds are added until it is spent
    min_rounds: int = 3

    @property
    def name(self) -> str:
        return (f"{self.cell} B={self.batch} T={self.seq_len} in={self.input_size} H={self.hidden} "
                f"L={self.num_layers}")

    @property
    def tokens(self) -> int:
        """Time steps processed per call (padded tokens; the lengths variants run the same padded batch)."""
        return self.batch * self.seq_len

    def as_dict(self) -> Dict[str, object]:
        out = asdict(self)
        out["name"] = self.name
        return out


def forward_flops(config: Config, merge_mode: Optional[str]) -> float:
    """FLOPs of one forward pass: ``2*T*B*G*H*(in+H)`` per direction and layer (``G`` = 4 LSTM, 3 GRU).

    Layers after the first read ``2H`` features after ``concat`` and ``H`` after ``sum``/``mul``/``ave``.
    A training step (forward + backward) is counted as 3x this.
    """
    gates = _GATES[config.cell]
    total = 0.0
    layer_in = config.input_size
    for _ in range(config.num_layers):
        total += 2 * 2.0 * config.seq_len * config.batch * gates * config.hidden * (layer_in + config.hidden)
        layer_in = 2 * config.hidden if merge_mode in (None, "concat") else config.hidden
    return total


def plan(quick: bool) -> List[Config]:
    """The configurations of one run.

    Full: every variant on a small ``L=2`` problem (B=32, T=64, in=128, H=256), the core set on the
    issue's three sizes (B=64, T=128, in=128, H=256, L=2 and 4; B=16, T=512, in=64, H=128, L=3), LSTM
    and GRU. One training step of the largest ones takes seconds on 2 cores, which is what bounds the matrix.
    Quick: a tiny problem, no compile, two rounds.
    """
    every_mode = ("concat", "sum", "mul", "ave")
    if quick:
        quick_families = ("fused", "blocks", "lengths", "aten", "script", "flip", "loop", "keras")
        return [Config(cell, 16, 32, 64, 128, 2, quick_families, ("concat", "sum"), budget_s=10.0)
                for cell in ("LSTM", "GRU")]
    configs: List[Config] = [
        Config("LSTM", 32, 64, 128, 256, 2, FULL_MATRIX, every_mode, budget_s=150.0),
        Config("GRU", 32, 64, 128, 256, 2, GRU_MATRIX, every_mode, budget_s=90.0),
    ]
    for cell in ("LSTM", "GRU"):
        configs.append(Config(cell, 64, 128, 128, 256, 2, CORE, ("concat", "sum"), budget_s=45.0, min_rounds=2))
        configs.append(Config(cell, 16, 512, 64, 128, 3, CORE, ("concat", "sum"), budget_s=45.0, min_rounds=2))
        configs.append(Config(cell, 64, 128, 128, 256, 4, CORE, ("concat", "sum"), budget_s=45.0, min_rounds=2))
    return configs
