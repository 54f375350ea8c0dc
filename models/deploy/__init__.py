"""Deployment: ``compile_model`` (TorchScript, ``torch.compile``), ``export`` / ``load_exported`` (.pt2, ONNX) with a
JSON of the preprocessing beside the file, ``load_run`` (a run -> a :class:`Predictor` of raw text) and
``save_pretrained`` / ``from_pretrained`` (safetensors + config.json) and ``quantize`` (an int8 copy for serving)."""

from .compile import COMPILE_MODES, compile_model
from .exporters import EXPORT_FORMATS, export, load_exported
from .predictor import Predictions, Predictor, load_run
from .pretrained import from_pretrained, push_to_hub, save_pretrained
from .quantize import quantize

__all__ = ["COMPILE_MODES", "compile_model", "EXPORT_FORMATS", "export", "load_exported", "Predictions", "Predictor",
           "load_run", "from_pretrained", "push_to_hub", "save_pretrained", "quantize"]
