"""`train.make_update` never applies a non-finite update, and says so in its metrics."""
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jmeta import train


def objective(meta_params, key, task):
  del key
  loss = jnp.sum((meta_params["params"]["w"] - task) ** 2)
  return loss, {"meta_loss": loss}


def test_nonfinite_update_is_skipped_and_counted():
  optimizer = optax.adam(0.1)
  state = train.init_state({"params": {"w": jnp.ones(3)}}, optimizer)
  update = train.make_update(objective, optimizer, sample_tasks=lambda key, data: data,
                             num_tasks=2, donate=False)
  good, metrics = update(state, jax.random.key(0), jnp.zeros((2, 3)))
  assert bool(metrics["finite"]) and int(good.num_skipped) == 0
  assert not np.allclose(good.meta_params["params"]["w"], 1.0)
  bad, metrics = update(good, jax.random.key(0), jnp.full((2, 3), jnp.nan))
  assert not bool(metrics["finite"]) and int(metrics["skipped"]) == 1
  assert int(bad.num_skipped) == 1 and int(bad.step) == int(good.step) + 1
  for new, old in zip(jax.tree.leaves((bad.meta_params, bad.opt_state)),
                      jax.tree.leaves((good.meta_params, good.opt_state))):
    np.testing.assert_array_equal(new, old)
