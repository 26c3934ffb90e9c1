"""jmeta: functional JAX meta-learning."""

__version__ = "0.1.0"
