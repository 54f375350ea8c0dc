"""Deployment: ``compile_model`` (TorchScript, ``torch.compile``) and ``export`` / ``load_exported`` (.pt2, ONNX)."""

from .compile import COMPILE_MODES, compile_model
from .exporters import EXPORT_FORMATS, export, load_exported

__all__ = ["COMPILE_MODES", "compile_model", "EXPORT_FORMATS", "export", "load_exported"]
