"""A Keras text model as a classifier of raw strings: :class:`KerasTextClassifier` puts an imported module behind the
interface ``Predictor``, ``save_pretrained`` and ``export`` take, and :func:`keras_text_predictor` builds the
``Predictor`` of a ``.keras`` / ``.h5`` file in one call.

::

    predictor = models.keras.keras_text_predictor("reviews.keras", class_names=["neg", "neu", "pos"])
    predictor(["Great film!", "meh"]).labels          # what the Keras model classifies these strings as

The Keras model's output decides how its rows become the ``(B, C)`` logits a ``Predictor`` softmaxes:
``"probabilities"`` (a final ``softmax``: ``log p``, whose softmax is ``p`` again), ``"logits"`` (linear, or
``log_softmax``: used as they are) or ``"sigmoid"`` (one ``sigmoid`` unit ``p``: two classes ``[log(1 - p),
log p]``, so class 1 is Keras's positive class). Any other output is refused, naming the layer.
"""

import json
from typing import Any, Dict, List, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from .errors import KerasImportError

OUTPUTS = ("logits", "probabilities", "sigmoid")
_LOGIT_ACTIVATIONS = ("linear", None, "log_softmax")


class KerasTextClassifier(nn.Module):
    """``ids (B, L)`` int64 (a ``TextVectorization``'s output) -> logits ``(B, C)``; ``module`` is the imported
    Keras model (``from_keras_text``'s), ``output`` how its rows become logits (module docstring).

    ``lengths`` is accepted and not read: the Keras model sees padding only through its ids (``Embedding(
    mask_zero=True)`` masks id 0, as in Keras; without it padding steps are run, as in Keras)."""

    token_input = True
    padding_idx = 0

    def __init__(self, module: nn.Module, output: str, num_classes: int) -> None:
        super().__init__()
        if output not in OUTPUTS:
            raise ValueError(f"output={output!r}: expected one of {list(OUTPUTS)}")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes={num_classes!r}: expected an integer >= 2")
        if output == "sigmoid" and num_classes != 2:
            raise ValueError(f"num_classes={num_classes}: a one-unit sigmoid output is 2 classes")
        specs = getattr(module, "keras_specs", None)
        if not isinstance(specs, str):
            raise TypeError(f"module must be an imported Keras model (with keras_specs), got {type(module).__name__}")
        self.module = module
        self.output = output
        self.num_classes = num_classes
        self.keras_specs: str = specs
        embeddings = [m.num_embeddings for m in module.modules() if isinstance(m, nn.Embedding)]
        self.vocab_size: Optional[int] = embeddings[0] if embeddings else None

    def forward(self, x: Tensor, lengths: Optional[Tensor] = None) -> Tensor:
        y = self.module(x)
        if self.output == "probabilities":
            return torch.log(y)
        if self.output == "sigmoid":
            return torch.cat([torch.log1p(-y), torch.log(y)], dim=-1)
        return y

    def extra_repr(self) -> str:
        return f"output={self.output!r}, num_classes={self.num_classes}"


def output_kind(keras_specs: str) -> str:
    """How an imported model's output becomes logits (``OUTPUTS``), read off its specs: the activation of the layer
    that gives the output (a ``Dense`` or an ``Activation``; any other layer gives linear values)."""
    specs = json.loads(keras_specs)
    if isinstance(specs, dict):
        last = _graph_output_spec(specs)
    else:
        kept = [spec for spec in specs if spec.get("kind") != "identity"]
        last = kept[-1]
    activation = last.get("options", {}).get("activation") if last.get("kind") in ("dense", "activation") else None
    if activation == "softmax":
        return "probabilities"
    if activation in _LOGIT_ACTIVATIONS:
        return "logits"
    if activation == "sigmoid" and last.get("options", {}).get("units") == 1:
        return "sigmoid"
    raise KerasImportError(f"layer {last.get('name')!r}: the model's output has activation {activation!r}; a "
                           f"classifier of raw strings needs logits (linear or log_softmax), softmax "
                           f"probabilities or one sigmoid unit (from_keras_text gives the module as it is)")


def _graph_output_spec(plan: Dict[str, Any]) -> Dict[str, Any]:
    """The spec of the layer whose node gives a functional graph's one output value."""
    if len(plan["outputs"]) != 1:
        raise KerasImportError(f"the model has {len(plan['outputs'])} outputs; a classifier has one")
    wanted, value = plan["outputs"][0], len(plan["input_kinds"])
    specs = {spec["name"]: spec for spec in plan["layers"]}
    for node in plan["nodes"]:
        value += len(node["outputs"])
        if wanted < value:
            return specs[node["layers"][-1]]
    raise KerasImportError(f"the graph's output value {wanted} is not made by any node")


def as_text_classifier(module: nn.Module, probe_length: int) -> KerasTextClassifier:
    """``module`` (``from_keras_text``'s) as a :class:`KerasTextClassifier`; its class count is read off one run
    on a batch ``(1, probe_length)`` of OOV ids (the output must be ``(B, C)``)."""
    output = output_kind(module.keras_specs)
    with torch.no_grad():
        probe = module.eval()(torch.ones(1, probe_length, dtype=torch.int64))   # id 1: OOV, in every vocabulary
    if not isinstance(probe, Tensor) or probe.dim() != 2:
        shape = list(probe.shape) if isinstance(probe, Tensor) else type(probe).__name__
        raise KerasImportError(f"the model returns {shape}, not one (batch, classes) tensor: not a classifier "
                               f"(from_keras_text gives the module as it is)")
    classes = 2 if output == "sigmoid" else int(probe.shape[1])
    if classes < 2:
        raise KerasImportError(f"the model's output has {probe.shape[1]} unit with {output}: a classifier needs "
                               f"2 or more classes (or one sigmoid unit)")
    return KerasTextClassifier(module, output, classes).eval()


def keras_text_predictor(path: Union[str, Any], class_names: Optional[Sequence[str]] = None, *,
                         batch_size: int = 32, device: Union[str, torch.device] = "cpu") -> Any:
    """A ``Predictor`` of raw strings from a Keras model file whose string input feeds a ``TextVectorization``
    (``from_keras_text``): ``predictor(texts)`` gives the labels and probabilities Keras's
    ``model.predict(texts, batch_size=batch_size)`` gives. ``class_names``: the label of each class (default
    ``"0", "1", ...``); ``batch_size`` matters only where ``output_sequence_length`` is unset and the model does
    not mask padding (Keras pads each batch to its longest row)."""
    from ..data.preprocessing import Preprocessing
    from ..deploy.predictor import Predictor
    from .convert import from_keras_text

    module, vectorizer = from_keras_text(str(path))
    if vectorizer is None:
        raise KerasImportError(f"{path}: the model has no TextVectorization layer; from_keras imports it (it takes "
                               f"token ids, not strings)")
    classifier = as_text_classifier(module, vectorizer.output_sequence_length or 1)
    names: List[str] = [str(i) for i in range(classifier.num_classes)] if class_names is None else list(class_names)
    preprocessing = Preprocessing.from_text_vectorizer(vectorizer, names)
    return Predictor(classifier, preprocessing, batch_size=batch_size, device=device, source=str(path))
