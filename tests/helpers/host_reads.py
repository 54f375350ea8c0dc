"""Count the reads of tensor values back to the host: on CUDA each is a device sync, so a CPU test that counts
them counts the syncs a CUDA run of the same code path would make.

Counted: ``aten._local_scalar_dense`` (``.item()``, ``int(t)``, ``float(t)``, ``bool(t)``), the ops whose output
size depends on values (``nonzero``, ``masked_select``, ``unique``, ``repeat_interleave`` without
``output_size``), all seen by a ``TorchDispatchMode``, and ``Tensor.tolist``/``Tensor.numpy`` (which read the
data without dispatching an op on the CPU). Not counted: ``.cpu()``/``.to("cpu")``, no-ops on CPU tensors.
"""

import contextlib
from typing import Any, Callable, Iterator, List

import torch
from torch.utils._python_dispatch import TorchDispatchMode

_READING_OPS = {
    "aten._local_scalar_dense", "aten.nonzero", "aten.masked_select", "aten._unique2", "aten.unique_dim",
    "aten.unique_consecutive", "aten.repeat_interleave",
}


class HostReads(TorchDispatchMode):
    """``with HostReads() as reads:`` ... ``reads.count``; ``reads.ops`` names each read in order."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: List[str] = []

    @property
    def count(self) -> int:
        return len(self.ops)

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        name = str(func.overloadpacket)
        if name in _READING_OPS and not (name == "aten.repeat_interleave" and (kwargs or {}).get("output_size")):
            self.ops.append(name)
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def counting_host_reads() -> Iterator[HostReads]:
    """A ``HostReads`` mode that also counts ``Tensor.tolist`` and ``Tensor.numpy`` calls."""
    reads = HostReads()
    originals = {name: getattr(torch.Tensor, name) for name in ("tolist", "numpy")}

    def counted(name: str) -> Callable[..., Any]:
        original = originals[name]

        def read(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            reads.ops.append(f"Tensor.{name}")
            return original(self, *args, **kwargs)
        return read

    for name in originals:
        setattr(torch.Tensor, name, counted(name))
    try:
        with reads:
            yield reads
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)
