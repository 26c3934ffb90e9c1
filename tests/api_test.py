"""API conventions, checked by introspection (dm_pix's `api_test` pattern).

For every public function of the modules below: no parameter is called `rng` (or contains it);
samplers (`sample_*`, `random_*`, `views`) take `key` first, or are factories whose returned
function takes `key` first; every parameter with a default is keyword-only, except the few
listed in `POSITIONAL_DEFAULTS` with their reason. Differentiated functions built by the
factories (objectives, adaptation losses, the update) take `key` second.
"""
import importlib
import inspect

import jax
import optax
import pytest

from jmeta import classifiers
from jmeta import inner
from jmeta import meta
from jmeta import testing
from jmeta import train

# Listed explicitly so a module that fails to import fails this test instead of being skipped.
MODULES = (
    "jmeta.augment",
    "jmeta.tasks",
    "jmeta.losses",
    "jmeta.inner",
    "jmeta.meta",
    "jmeta.train",
    "jmeta.classifiers",
    "jmeta.evaluate",
    "jmeta.models.conv4",
    "jmeta.models.resnet12",
    "jmeta.models.layers",
    "jmeta.parallel",
    "jmeta.testing",
)

# function -> {parameter: reason it may be positional with a default}
POSITIONAL_DEFAULTS = {
    "jmeta.models.layers.conv2d": {
        "bias": "an optional operand (array), not an option: conv2d(x, kernel, bias) as in lax/flax",
    },
    "jmeta.parallel.make_mesh": {
        "num_devices": "the only argument; make_mesh(8) reads as what it is",
    },
}


def _public_functions():
  functions = []
  for module_name in MODULES:
    module = importlib.import_module(module_name)
    for name, fn in sorted(vars(module).items()):
      if name.startswith("_") or not inspect.isfunction(fn) or fn.__module__ != module.__name__:
        continue
      functions.append((f"{module_name}.{name}", fn))
  return functions


FUNCTIONS = _public_functions()


def _is_sampler(qualified_name):
  name = qualified_name.rsplit(".", 1)[1]
  return name.startswith(("sample_", "random_")) or name == "views"


def test_every_module_has_public_functions():
  modules = {name.rsplit(".", 1)[0] for name, _ in FUNCTIONS}
  assert modules == set(MODULES), set(MODULES) - modules


@pytest.mark.parametrize("qualified_name,fn", FUNCTIONS, ids=[name for name, _ in FUNCTIONS])
def test_no_rng_parameters(qualified_name, fn):
  names = list(inspect.signature(fn).parameters)
  assert not [n for n in names if "rng" in n.lower()], (
      f"{qualified_name}{inspect.signature(fn)}: call PRNG keys `key`, never `rng`")


@pytest.mark.parametrize("qualified_name,fn", FUNCTIONS, ids=[name for name, _ in FUNCTIONS])
def test_defaults_are_keyword_only(qualified_name, fn):
  allowed = POSITIONAL_DEFAULTS.get(qualified_name, {})
  positional_defaults = [
      p.name for p in inspect.signature(fn).parameters.values()
      if p.default is not inspect.Parameter.empty
      and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name not in allowed]
  assert not positional_defaults, (
      f"{qualified_name}{inspect.signature(fn)}: make {positional_defaults} keyword-only (after "
      "`*`), or list them in POSITIONAL_DEFAULTS with a reason")


def test_positional_default_exceptions_are_current():
  functions = dict(FUNCTIONS)
  for qualified_name, parameters in POSITIONAL_DEFAULTS.items():
    signature = inspect.signature(functions[qualified_name])
    for name in parameters:
      parameter = signature.parameters[name]
      assert parameter.kind == parameter.POSITIONAL_OR_KEYWORD, (qualified_name, name)
      assert parameter.default is not inspect.Parameter.empty, (qualified_name, name)


SAMPLERS = [(name, fn) for name, fn in FUNCTIONS if _is_sampler(name)]


@pytest.mark.parametrize("qualified_name,fn", SAMPLERS, ids=[name for name, _ in SAMPLERS])
def test_samplers_take_key_first(qualified_name, fn):
  parameters = [p for p in inspect.signature(fn).parameters.values()
                if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
  if parameters:
    assert parameters[0].name == "key", f"{qualified_name}{inspect.signature(fn)}"
    return
  # A factory of keyword-only options: the function it returns samples, key first.
  sampler = fn()
  first = next(iter(inspect.signature(sampler).parameters))
  assert first == "key", f"{qualified_name}() returns {inspect.signature(sampler)}"


def test_samplers_exist():
  """Guards the check above against a renaming that would leave it testing nothing."""
  names = {name.rsplit(".", 1)[1] for name, _ in SAMPLERS}
  assert {"views", "random_flip", "sample_episode", "sample_unsupervised_task",
          "random_direction"} <= names, names


def _differentiated_functions():
  """(name, fn, expected parameters) for callables the factories build."""
  model = testing.mlp(input_shape=(4, 4, 1))
  apply_fn, head = model.apply, classifiers.linear_head(model.apply)
  adapters = {
      "inner.contrastive": inner.contrastive(apply_fn, step_size=0.1),
      "inner.prototype": inner.prototype(apply_fn, step_size=0.1, num_ways=3),
      "inner.head": inner.head(apply_fn, step_size=0.1),
  }
  objectives = {
      "meta.bootstrap": meta.bootstrap(adapters["inner.head"], head, num_inner_steps=1),
      "meta.maml": meta.maml(adapters["inner.head"], head, num_inner_steps=1),
      "meta.bmssl": meta.bmssl(apply_fn, num_ways=3, step_size=0.1, num_inner_steps=1,
                               num_bootstrap_steps=1, mix=0.5)[1],
      "meta.umtra": meta.umtra(apply_fn, num_ways=3, embedding_dim=4, step_size=0.1,
                               num_inner_steps=1)[1],
      "meta.protonet": meta.protonet(apply_fn, num_ways=3),
      "meta.simclr": meta.simclr(apply_fn),
  }
  update = train.make_update(objectives["meta.protonet"], optax.sgd(0.1),
                             sample_tasks=testing.task_sampler(num_tasks=2), num_tasks=2)
  return ([(f"{name}(...).loss", adapter.loss, ["params", "key", "batch"])
           for name, adapter in adapters.items()]
          + [(f"{name}(...)", objective, ["meta_params", "key", "task"])
             for name, objective in objectives.items()]
          + [("train.make_update(...)", update, ["state", "key", "data"])])


@pytest.mark.parametrize("name,fn,expected", _differentiated_functions(),
                         ids=lambda value: value if isinstance(value, str) else "")
def test_differentiated_functions_take_key_second(name, fn, expected):
  assert list(inspect.signature(fn).parameters) == expected, f"{name}: {inspect.signature(fn)}"
