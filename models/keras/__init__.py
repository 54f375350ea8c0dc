"""Import Keras bidirectional-RNN models (``.keras``, ``.h5``, ``.weights.h5``; Keras 3, or Keras 2: tf.keras /
``tf_keras``) as zoo modules.

Files are read as data (JSON + h5py), never executed or unpickled; Keras is not needed at run time.
"""

from .convert import from_keras, from_keras_text, load_keras_weights
from .errors import KerasImportError
from .graph_module import KerasGraphModel
from .module import KerasModel, KerasPairModel, module_from_specs
from .text_classifier import KerasTextClassifier, keras_text_predictor
from .text_vectorization import TextVectorizer

__all__ = ["KerasGraphModel", "KerasImportError", "KerasModel", "KerasPairModel", "KerasTextClassifier",
           "TextVectorizer", "from_keras", "from_keras_text", "keras_text_predictor", "load_keras_weights",
           "module_from_specs"]
