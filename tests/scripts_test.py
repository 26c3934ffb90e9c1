"""The scripts behind docs/RESULTS.md (the ablation sweep's commands, the table's wall-clock) and
docs/PERFORMANCE.md's profile, layer ablation and in-process A/Bs (`benchmarks/profile_step.py`,
`benchmarks/layer_ablation.py`, `benchmarks/step_ab.py`)."""
import gzip
import json
import pathlib
import sys

import pytest

_REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_REPO / "scripts"))
sys.path.insert(0, str(_REPO / "benchmarks"))
import ablations  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
import layer_ablation  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
import profile_step  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
import results_table  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
import step_ab  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position


def _flags(command):
  return [arg for arg in command if arg.startswith("--config.")]


def test_ablation_rows_run_on_the_sweep_baseline_and_a_row_replaces_its_own_fields():
  baseline, _ = ablations.row_commands("baseline", "W", 150, 2000)
  assert set(ablations.SWEEP_BASE) <= set(_flags(baseline))
  delta, _ = ablations.row_commands("delta5", "W", 150, 2000)
  assert _flags(delta) == _flags(baseline) + ["--config.meta.num_bootstrap_steps=5"]
  ways, evaluate = ablations.row_commands("ways20_tasks4", "W", 150, 2000)
  fields = [flag.partition("=")[0] for flag in _flags(ways)]
  assert len(fields) == len(set(fields)), "a field is set twice"
  assert "--config.tasks.num_ways=20" in ways and "--config.tasks.num_ways=5" not in ways
  assert "--episodes=2000" in evaluate and "--ways=5" in evaluate


@pytest.mark.parametrize("walls, expected", [
    ([10.0, 20.0, 30.0], 30.0),               # one launch
    ([10.0, 20.0, 5.0, 15.0], 35.0),          # resumed once: 20 + 15
    ([10.0, 3.0, 4.0, 1.0, 2.0], 16.0),       # resumed twice: 10 + 4 + 2
])
def test_training_wall_clock_sums_the_launches_of_a_resumed_run(walls, expected):
  lines = [{"step": i, "wall_s": wall} for i, wall in enumerate(walls)]
  lines.insert(1, {"step": 0, "eval_accuracy": 0.5})  # lines without wall_s are skipped
  assert results_table.training_seconds(lines) == pytest.approx(expected)


def test_profile_sums_operation_times_per_step_and_skips_executor_and_python_spans(tmp_path):
  events = [{"ph": "X", "name": "ynn_fusion.3", "dur": 4000},
            {"ph": "X", "name": "ynn_fusion.3", "dur": 2000},
            {"ph": "X", "name": "bitcast_select_fusion.12", "dur": 1000},
            {"ph": "X", "name": "ThunkExecutor::Execute", "dur": 9000},
            {"ph": "X", "name": "$jmeta_peer.py:161 step", "dur": 9000},
            {"ph": "i", "name": "ynn_fusion.3", "dur": 7000}]  # not a complete event
  trace = tmp_path / "host.trace.json.gz"
  with gzip.open(trace, "wt") as f:
    json.dump({"traceEvents": events}, f)
  total, calls = profile_step.operation_times(str(trace), num_steps=2)
  assert dict(total) == pytest.approx({"ynn_fusion.3": 3.0, "bitcast_select_fusion.12": 0.5})
  assert dict(calls) == pytest.approx({"ynn_fusion.3": 1.0, "bitcast_select_fusion.12": 0.5})


def test_layer_ablation_settings_name_the_layers_or_fail_naming_the_allowed_ones():
  assert layer_ablation.parse_removed("none") == ()
  assert layer_ablation.parse_removed("norm+relu+pool") == ("norm", "relu", "pool")
  with pytest.raises(ValueError, match="'dropout'.*norm"):
    layer_ablation.parse_removed("norm+dropout")


def test_step_ab_settings_parse_or_fail_naming_the_field_and_the_allowed_options():
  assert step_ab.parse_setting("base") == ("base", {})
  assert step_ab.parse_setting('floor={"query": 1, "support": 1}') == (
      "floor", {"query": 1, "support": 1})
  with pytest.raises(ValueError, match="unknown option.*'chunk'.*task_chunk_size"):
    step_ab.parse_setting('b={"chunk": 2}')
  with pytest.raises(ValueError, match="query must be a positive int"):
    step_ab.parse_setting('b={"query": 0}')
  with pytest.raises(ValueError, match="NAME"):
    step_ab.parse_setting('={"query": 1}')


def test_step_ab_patch_is_entered_while_its_setting_is_built_and_left_after(tmp_path):
  patch = tmp_path / "patch.py"
  patch.write_text("import contextlib\nimport step_ab_probe\n"
                   "@contextlib.contextmanager\ndef patched():\n"
                   "  step_ab_probe.events.append('enter')\n  yield\n"
                   "  step_ab_probe.events.append('exit')\n")
  probe = type(sys)("step_ab_probe")
  probe.events = []
  sys.modules["step_ab_probe"] = probe

  class FakePeer:
    class Runner:
      def __init__(self, variant, **kwargs):
        probe.events.append(("build", variant, kwargs))

      def step(self, index):
        probe.events.append(("step", index))

  try:
    step_ab.build(FakePeer, "so", 2, {"patch": str(patch), "task_chunk_size": 2})
  finally:
    del sys.modules["step_ab_probe"]
  assert probe.events == ["enter", ("build", "so", {"devices": 2, "task_chunk_size": 2}),
                          ("step", 0), "exit"]
  with pytest.raises(ValueError, match="no `patched\\(\\)`"):
    empty = tmp_path / "empty.py"
    empty.write_text("")
    step_ab.build(FakePeer, "so", 2, {"patch": str(empty)})


def test_step_ab_slices_every_task_to_its_first_query_and_support_images():
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jmeta import types  # pylint: disable=g-import-not-at-top
  task = types.Task(support=np.arange(2 * 5 * 4, dtype=np.float32).reshape(2, 5, 2, 2, 1),
                    support_labels=np.tile(np.arange(5, dtype=np.int32), (2, 1)),
                    query=np.arange(2 * 6 * 4, dtype=np.float32).reshape(2, 6, 2, 2, 1),
                    query_labels=np.tile(np.arange(6, dtype=np.int32), (2, 1)))
  runner = type("Runner", (), {"batches": [task]})()
  step_ab.slice_images(runner, query=2, support=1)
  (sliced,) = runner.batches
  np.testing.assert_array_equal(sliced.query, task.query[:, :2])
  np.testing.assert_array_equal(sliced.query_labels, [[0, 1], [0, 1]])
  np.testing.assert_array_equal(sliced.support, task.support[:, :1])
  np.testing.assert_array_equal(sliced.support_labels, [[0], [0]])


def _without_and_with_patch(patch_name, compute):
  """`compute()` with the library as it is, then inside `benchmarks/ab_patches/<patch_name>.py`."""
  library = compute()
  with step_ab.load_patch(str(_REPO / "benchmarks" / "ab_patches" / f"{patch_name}.py"))():
    return library, compute()


def _assert_same_value_and_gradient(patched, library):
  import numpy as np  # pylint: disable=g-import-not-at-top
  np.testing.assert_allclose(patched[0], library[0], rtol=1e-4)
  np.testing.assert_allclose(patched[1], library[1], rtol=1e-3,
                             atol=1e-3 * np.abs(library[1]).max())


@pytest.mark.parametrize("patch_name", ["winograd_off", "winograd_weight_grad_lhs_transposed",
                                        "winograd_no_barriers", "winograd_strided_windows",
                                        "winograd_forward_chunks", "kron_kernel_transform"])
def test_step_ab_patches_compute_the_same_convolutions_and_restore_the_library(patch_name):
  """The A/B patch modules behind docs/PERFORMANCE.md's rows change how, not what: the patched
  native convolution and its kernel gradient equal the library's, which is back afterwards."""
  import jax  # pylint: disable=g-import-not-at-top
  from jmeta.models import layers, winograd  # pylint: disable=g-import-not-at-top
  keys = jax.random.split(jax.random.key(3), 2)
  x = jax.random.normal(keys[0], (20, 7, 7, 64))  # Winograd applies; 2 forward chunks of 15
  kernel = jax.random.normal(keys[1], (3, 3, 64, 64)) / 24.0

  def conv_and_kernel_grad():
    loss = lambda k: (layers.conv2d(x, k, impl="native") ** 2).sum()
    return jax.jit(jax.value_and_grad(loss))(kernel)

  library = (winograd.conv3x3, winograd.conv3x3_weight_grad, winograd._kernel_transform,  # pylint: disable=protected-access
             winograd._windows, layers.WINOGRAD_MIN_CHANNELS)  # pylint: disable=protected-access
  expected, patched = _without_and_with_patch(patch_name, conv_and_kernel_grad)
  _assert_same_value_and_gradient(patched, expected)
  assert (winograd.conv3x3, winograd.conv3x3_weight_grad, winograd._kernel_transform,  # pylint: disable=protected-access
          winograd._windows, layers.WINOGRAD_MIN_CHANNELS) == library  # pylint: disable=protected-access


def test_winograd_cpu_off_patch_compiles_the_xla_form_with_the_same_values():
  """The fused-kernels A/B patch: under it a Winograd-sized convolution and its kernel gradient
  compile to XLA operations (without it, to the two fused custom calls), with the same values;
  the kernels are back afterwards."""
  import jax  # pylint: disable=g-import-not-at-top
  from jmeta.models import layers, winograd_cpu  # pylint: disable=g-import-not-at-top
  keys = jax.random.split(jax.random.key(6), 2)
  x = jax.random.normal(keys[0], (5, 14, 14, 64))
  kernel = jax.random.normal(keys[1], (3, 3, 64, 64)) / 24.0

  def conv_and_kernel_grad():
    step = jax.jit(jax.value_and_grad(lambda k: (layers.conv2d(x, k, impl="native") ** 2).sum()))
    return step(kernel), step.lower(kernel).compile().as_text().count("jmeta_winograd_")

  (expected, fused_calls), (patched, patched_calls) = _without_and_with_patch(
      "winograd_cpu_off", conv_and_kernel_grad)
  assert fused_calls >= 2 and patched_calls == 0
  _assert_same_value_and_gradient(patched, expected)
  assert winograd_cpu.enabled()


def test_one_channel_multiply_adds_constant_patch_compiles_no_convolution_with_the_same_values(
    monkeypatch):
  """The first-block A/B (`AB_CONSTANT=layers.ONE_CHANNEL_MULTIPLY_ADDS=1` through
  set_constant.py): under it the one-channel convolution compiles to multiply-adds (by default,
  to one library convolution), the values and kernel gradient stay the same, and the default is
  back afterwards."""
  import jax  # pylint: disable=g-import-not-at-top
  from jmeta.models import layers  # pylint: disable=g-import-not-at-top
  monkeypatch.setenv("AB_CONSTANT", "layers.ONE_CHANNEL_MULTIPLY_ADDS=1")
  keys = jax.random.split(jax.random.key(4), 2)
  x = jax.random.normal(keys[0], (4, 8, 8, 1))
  kernel = jax.random.normal(keys[1], (3, 3, 1, 16))

  def conv_and_kernel_grad():
    loss = jax.jit(jax.value_and_grad(lambda k: (layers.conv2d(x, k, impl="native") ** 2).sum()))
    convolutions = loss.lower(kernel).compile().as_text().count(" convolution(")
    return loss(kernel), convolutions

  (expected, convolutions), (patched, patched_convolutions) = _without_and_with_patch(
      "set_constant", conv_and_kernel_grad)
  assert (convolutions, patched_convolutions) == (1, 0)
  _assert_same_value_and_gradient(patched, expected)
  assert layers.ONE_CHANNEL_MULTIPLY_ADDS is False


def test_per_task_loop_batching_patch_unrolls_the_tasks_with_the_same_values():
  """The grouped-vs-unrolled A/B patch: vmapped per-task kernels compile to one fused Winograd
  convolution per task under it (one for all tasks without it), with the same convolution and
  kernel gradients; the grouped binding is back afterwards."""
  import jax  # pylint: disable=g-import-not-at-top
  from jmeta.models import layers  # pylint: disable=g-import-not-at-top
  keys = jax.random.split(jax.random.key(5), 2)
  x = jax.random.normal(keys[0], (3, 2, 7, 7, 64))  # 3 tasks; Winograd applies
  kernels = jax.random.normal(keys[1], (3, 3, 3, 64, 64)) / 24.0
  library = layers._bind_grouped  # pylint: disable=protected-access

  def conv_and_kernel_grads():
    loss = lambda k: (jax.vmap(lambda x, k: layers.conv2d(x, k, impl="native"))(x, k) ** 2).sum()
    step = jax.jit(jax.value_and_grad(loss))
    forward = jax.jit(jax.vmap(lambda x, k: layers.conv2d(x, k, impl="native")))
    calls = forward.lower(x, kernels).compile().as_text().count(
        'custom_call_target="jmeta_winograd_conv"')
    return step(kernels), calls

  (expected, grouped_calls), (patched, unrolled_calls) = _without_and_with_patch(
      "per_task_loop_batching", conv_and_kernel_grads)
  assert (grouped_calls, unrolled_calls) == (1, 3)
  _assert_same_value_and_gradient(patched, expected)
  assert layers._bind_grouped is library  # pylint: disable=protected-access


def test_set_constant_patch_sets_the_named_constant_and_rejects_what_it_cannot_set(monkeypatch):
  from jmeta.models import winograd  # pylint: disable=g-import-not-at-top
  default = winograd.WEIGHT_GRAD_IMAGES_PER_CHUNK
  monkeypatch.setenv("AB_CONSTANT", "winograd.WEIGHT_GRAD_IMAGES_PER_CHUNK=5")
  patched = step_ab.load_patch(str(_REPO / "benchmarks" / "ab_patches" / "set_constant.py"))
  with patched():
    assert winograd.WEIGHT_GRAD_IMAGES_PER_CHUNK == 5
  assert winograd.WEIGHT_GRAD_IMAGES_PER_CHUNK == default
  parse = patched.__globals__["parse"]  # the patch module's own parser
  with pytest.raises(ValueError, match="expected module.NAME=int"):
    parse("WEIGHT_GRAD_IMAGES_PER_CHUNK=5")
  with pytest.raises(ValueError, match="has no NOPE"):
    parse("winograd.NOPE=5")
