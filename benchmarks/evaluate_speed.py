"""Few-shot evaluation throughput: episodes per second of `evaluate.few_shot` with Conv4.

Prints one JSON line per protocol, e.g.
  {"benchmark": "evaluate", "num_ways": 5, "num_shots": 1, "episodes_per_s": 812.3, ...}

`episodes_per_s` is the steady state: `few_shot`'s jitted batch step
(`evaluate.make_batch_accuracy`), compiled by a first call, then timed over the remaining
batches. `total_s` is the wall time of one `few_shot(num_episodes=...)` call, compilation
included, and `first_batch_s` the compile-and-run time of the first batch.

Usage (from the repository root):
  python benchmarks/evaluate_speed.py --data_dir ../shared/data            # Omniglot test set
  python benchmarks/evaluate_speed.py --data fake --num_episodes 200     # no data needed
"""
import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO not in sys.path:
  sys.path.insert(0, _REPO)

from jmeta import evaluate  # noqa: E402
from jmeta.data.dataset import Dataset  # noqa: E402


def load_data(name, data_dir):
  """The evaluation `Dataset`, or None (with a message) when it is not available offline."""
  if name == "fake":
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(100, dtype=np.int32), 20)
    images = rng.integers(0, 256, (labels.size, 28, 28, 1), dtype=np.uint8)
    return Dataset(images, labels, tuple(f"fake{c}" for c in range(100)))
  try:
    from jmeta.data import omniglot  # pylint: disable=import-outside-toplevel
  except ImportError as error:
    print(f"skipping: jmeta.data.omniglot is not available ({error})", file=sys.stderr)
    return None
  try:
    return omniglot.load("vinyals_test", rotations=True, data_dir=data_dir, download=False)
  except Exception as error:  # pylint: disable=broad-except  # MissingDataError, DataError...
    print(f"skipping: Omniglot vinyals_test is not available offline ({error}); pass "
          "--data_dir or set JMETA_DATA_DIR", file=sys.stderr)
    return None


def make_embed_fn(image_shape, width, conv_impl):
  """Conv4 (jmeta.models.conv4) with random parameters: `images [B, H, W, C] -> [B, D]`."""
  from jmeta.models import conv4  # pylint: disable=import-outside-toplevel
  height, _, channels = image_shape
  model = conv4.make(image_size=height, channels=channels, width=width, conv_impl=conv_impl)
  params = model.init(jax.random.key(0))
  return lambda images: model.apply(params, images)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data", choices=("omniglot", "fake"), default="omniglot")
  parser.add_argument("--data_dir", default=None, help="default: $JMETA_DATA_DIR")
  parser.add_argument("--protocols", default="5x1,5x5,20x1,20x5",
                      help="comma-separated WAYSxSHOTS")
  parser.add_argument("--num_queries", type=int, default=15)
  parser.add_argument("--num_episodes", type=int, default=600)
  parser.add_argument("--batch_size", type=int, default=50)
  parser.add_argument("--max_images_per_batch", type=int, default=4000,
                      help="caps batch_size so that N*(K+Q)*batch_size stays below this, as "
                      "experiments.evaluate does")
  parser.add_argument("--width", type=int, default=64)
  parser.add_argument("--episodes_per_chunk", type=int, default=1,
                      help="episodes vmapped together on a device (evaluate.few_shot)")
  parser.add_argument("--conv_impl", choices=("xla", "matmul", "native"), default="xla",
                      help="convolution lowering; experiments.evaluate uses xla (one set of "
                      "weights shared by every episode)")
  parser.add_argument("--xla_fast_flags", action=argparse.BooleanOptionalAction, default=True,
                      help="add experiments/xla_cpu.py's flags to XLA_FLAGS first, as "
                      "experiments.evaluate does")
  args = parser.parse_args(argv)
  if args.xla_fast_flags:
    from experiments import xla_cpu  # pylint: disable=import-outside-toplevel
    xla_cpu.add_fast_flags()

  dataset = load_data(args.data, args.data_dir)
  if dataset is None:
    return
  try:
    embed_fn = make_embed_fn(dataset.image_shape, args.width, args.conv_impl)
  except ImportError as error:
    print(f"skipping: jmeta.models.conv4 is not available ({error})", file=sys.stderr)
    return
  from jmeta import tasks  # pylint: disable=import-outside-toplevel
  pool = tasks.labeled_pool(dataset)  # on device once, shared by every call

  for protocol in args.protocols.split(","):
    num_ways, num_shots = (int(x) for x in protocol.split("x"))
    images_per_episode = num_ways * (num_shots + args.num_queries)
    batch_size = max(1, min(args.batch_size, args.max_images_per_batch // images_per_episode,
                            args.num_episodes))
    unit = jax.local_device_count() * args.episodes_per_chunk
    batch_size = -(-batch_size // unit) * unit  # as few_shot rounds it
    kwargs = dict(num_ways=num_ways, num_shots=num_shots, num_queries=args.num_queries,
                  batch_size=batch_size, episodes_per_chunk=args.episodes_per_chunk,
                  progress=False)
    start = time.perf_counter()
    result = evaluate.few_shot(embed_fn, pool, num_episodes=args.num_episodes, **kwargs)
    total = time.perf_counter() - start
    # Steady state: the jitted batch step of few_shot, compiled once, then timed alone.
    batch_fn = evaluate.make_batch_accuracy(
        evaluate.prototype_classifier(embed_fn, num_ways=num_ways), num_ways=num_ways,
        num_shots=num_shots, num_queries=args.num_queries, seed=0, batch_size=batch_size,
        episodes_per_chunk=args.episodes_per_chunk)
    start = time.perf_counter()
    batch_fn(pool, jnp.int32(0)).block_until_ready()
    first_batch = time.perf_counter() - start
    num_batches = max(1, args.num_episodes // batch_size - 1)
    start = time.perf_counter()
    for b in range(1, num_batches + 1):
      last = batch_fn(pool, jnp.int32(b * batch_size))
    last.block_until_ready()
    steady = time.perf_counter() - start
    print(json.dumps({
        "benchmark": "evaluate",
        "data": args.data,
        "num_ways": num_ways,
        "num_shots": num_shots,
        "num_queries": args.num_queries,
        "num_episodes": args.num_episodes,
        "batch_size": batch_size,
        "episodes_per_s": round(num_batches * batch_size / steady, 1),
        "total_s": round(total, 2),
        "first_batch_s": round(first_batch, 2),
        "accuracy": str(result),
        "conv_impl": args.conv_impl,
        "episodes_per_chunk": args.episodes_per_chunk,
        "num_devices": jax.local_device_count(),
        "max_images_per_batch": args.max_images_per_batch,
        "backend": jax.default_backend(),
    }, ensure_ascii=False), flush=True)


if __name__ == "__main__":
  main()
