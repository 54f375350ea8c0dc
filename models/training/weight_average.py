"""``optim.ema_decay``: an exponential moving average of the weights, validated, tested and saved instead of them.

After every optimiser step ``average = decay * average + (1 - decay) * weights`` over the model's parameters (the
first step copies them; buffers are copied, not averaged), as Keras's optimisers do with ``use_ema=True,
ema_momentum=decay``. Validation, ``best.pt``'s ``model`` (and so the test split, exports and ``trainer.init_from``)
use the average; training continues on the raw weights, which ``last.pt`` keeps in ``model`` with the average in
``ema`` so a resume continues both bit for bit. ``ema_decay: 0`` (the default) keeps none of this.

PyTorch's ``torch.optim.swa_utils.AveragedModel`` with ``get_ema_multi_avg_fn`` does the averaging (its
``_foreach`` update and ``n_averaged`` counter); :meth:`WeightAverage.swapped_in` puts the average into the model's
own tensors for a while, so a compiled or DistributedDataParallel forward that shares them evaluates it.
"""

from contextlib import contextmanager
from typing import Any, Dict, Iterator, Optional

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


class WeightAverage:
    """The moving average of ``model``'s weights with ``decay`` in ``(0, 1)``."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"optim.ema_decay={decay!r} must be in [0, 1) (0: no average)")
        self.model = model
        self.average = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=False)

    @torch.no_grad()
    def update(self) -> None:
        """One optimiser step's update (the first call copies the weights)."""
        self.average.update_parameters(self.model)

    def weights(self) -> Dict[str, torch.Tensor]:
        """The averaged weights under the model's own ``state_dict`` names (what ``best.pt`` saves as ``model``);
        before the first update, the model's own (there is no average yet)."""
        if int(self.average.n_averaged) == 0:
            return self.model.state_dict()
        return self.average.module.state_dict()

    def state_dict(self) -> Dict[str, Any]:
        """For ``last.pt``'s ``ema``: the averaged weights and how many steps they average."""
        return {"weights": self.weights(), "n_averaged": self.average.n_averaged.clone()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.average.module.load_state_dict(state["weights"])
        self.average.n_averaged.copy_(state["n_averaged"])

    @contextmanager
    def swapped_in(self) -> Iterator[None]:
        """The model holds the averaged weights inside the block (its raw weights back after it). Before the first
        update there is no average yet: the model keeps its weights."""
        if int(self.average.n_averaged) == 0:
            yield
            return
        own, average = self.model.state_dict(), self.weights()
        raw = {name: tensor.detach().clone() for name, tensor in own.items()}
        with torch.no_grad():
            for name, tensor in own.items():
                tensor.copy_(average[name])
        try:
            yield
        finally:
            with torch.no_grad():
                for name, tensor in own.items():
                    tensor.copy_(raw[name])


def weight_average(model: nn.Module, decay: Optional[float]) -> Optional[WeightAverage]:
    """A :class:`WeightAverage` for ``optim.ema_decay`` > 0, else None."""
    return WeightAverage(model, float(decay)) if decay else None
