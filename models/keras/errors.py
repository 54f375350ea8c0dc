"""The one error type of the Keras import."""


class KerasImportError(ValueError):
    """A Keras file that cannot be imported exactly: names the layer (or file part) and the reason."""
