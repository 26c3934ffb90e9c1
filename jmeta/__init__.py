"""jmeta: functional JAX meta-learning."""
