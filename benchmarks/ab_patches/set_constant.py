"""step_ab / profile_step patch: one module constant of jmeta's models set while the step
compiles, named by the environment: AB_CONSTANT="winograd.WEIGHT_GRAD_IMAGES_PER_CHUNK=5" (a
module of `jmeta.models`, a constant it defines, an int)."""
import importlib
import os
from unittest import mock


def parse(spec: str):
  """"module.NAME=int" -> (the jmeta.models module, NAME, int); fails naming what is wrong."""
  target, _, value = spec.partition("=")
  module_name, _, name = target.rpartition(".")
  if not module_name or not name or not value.lstrip("-").isdigit():
    raise ValueError(f"AB_CONSTANT={spec!r}: expected module.NAME=int, e.g. "
                     "winograd.WEIGHT_GRAD_IMAGES_PER_CHUNK=5")
  module = importlib.import_module(f"jmeta.models.{module_name}")
  if not hasattr(module, name):
    raise ValueError(f"AB_CONSTANT={spec!r}: jmeta.models.{module_name} has no {name}")
  return module, name, int(value)


def patched():
  return mock.patch.object(*parse(os.environ.get("AB_CONSTANT", "")))
