"""jmeta: a functional JAX meta-learning framework (BMSSL, MAML, ProtoNets, SimCLR)."""
import setuptools

setuptools.setup(
    name="jmeta",
    version="0.1.0",
    description="Bootstrapped meta self-supervised learning and friends, as pure JAX functions.",
    packages=setuptools.find_packages(include=["jmeta", "jmeta.*"]),
    # The fused Winograd kernels' C++ source, compiled on first use (jmeta/models/winograd_cpu.py).
    package_data={"jmeta.models": ["winograd_cpu.cc"]},
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.4.30",
        "jaxlib>=0.4.30",
        "flax",
        "optax",
        "chex",
        "numpy",
        "pillow",
        "tqdm",
        "ml-collections",
        "absl-py",
        "orbax-checkpoint",
        "tensorboardX",
        "matplotlib",
    ],
    extras_require={
        "tfds": ["tensorflow-datasets", "grain", "array_record"],
        "test": ["pytest", "pytest-xdist", "hypothesis", "tensorflow-datasets", "grain", "array_record"],
    },
)
