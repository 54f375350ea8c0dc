"""Prepared weights kept per module: ``ModulePlans``, the cache behind ``inference.py``'s float plans and
``bf16.py``'s packed bf16 weights. A plan lives as long as its module (weak keys), and a block's TorchScript twins,
which share its ``__dict__`` (``models/blocks/scriptable.py``; ``torch.jit.script(parent)`` leaves them in the parent),
share its plan."""

import threading
import weakref
from typing import Any

from torch import nn


class ModulePlans(weakref.WeakKeyDictionary):
    """``{module: plan}`` with weak keys; reads (``get``) take no lock, writes take ``lock``."""

    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()

    def put(self, module: nn.Module, plan: Any) -> None:
        with self.lock:
            self[module] = plan

    def share(self, module: nn.Module, twin: nn.Module) -> None:
        """``twin`` (a module with ``module``'s ``__dict__``: the same weight objects) reads ``module``'s plan
        rather than preparing a second copy."""
        with self.lock:
            plan = self.get(module)
            if plan is not None:
                self[twin] = plan

    def drop(self, module: nn.Module) -> None:
        """Forget ``module``'s plan and its twins' (the next call prepares it again)."""
        with self.lock:
            for other in [m for m in list(self.keys()) if m.__dict__ is module.__dict__]:
                self.pop(other, None)
