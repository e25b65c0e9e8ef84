"""translator: neural machine translation on Keras 3 + TensorFlow.

Importing the package does not import TensorFlow; ``Translator`` is loaded on first use.
"""

__version__ = "0.1.0"

__all__ = ["Translator", "__version__"]


def __getattr__(name):
    if name == "Translator":
        from translator.translator import Translator

        return Translator
    raise AttributeError(f"module 'translator' has no attribute {name!r}")
