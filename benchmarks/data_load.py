"""Times Omniglot loading: cold decode (empty cache) vs. cached load, for every split.

Each (split, rotations) pair is loaded once into a fresh, empty temporary cache directory
(cold: read the zip(s), decode and resize every PNG, write the ``.npz`` cache) and then
``--repeats`` times from that cache (cached: the fastest is reported). Prints one JSON line
per measurement with wall-clock ``seconds`` and this process's ``cpu_seconds`` (the latter is
less sensitive to other jobs on a shared machine), e.g.::

  {"benchmark": "data_load", "split": "background", "rotations": false, "image_size": 28,
   "cached": false, "seconds": 3.1, "cpu_seconds": 3.0, "num_classes": 964,
   "num_images": 19280}

Usage (from the repository root)::

  JMETA_DATA_DIR=../shared/data python benchmarks/data_load.py [--splits background ...]
"""
import argparse
import json
import pathlib
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from jmeta.data import omniglot  # pylint: disable=g-import-not-at-top,wrong-import-position


def _timed(**kwargs):
  """Returns (wall seconds, CPU seconds of this process, dataset) of one `omniglot.load`."""
  start, start_cpu = time.perf_counter(), time.process_time()
  dataset = omniglot.load(**kwargs)
  return time.perf_counter() - start, time.process_time() - start_cpu, dataset


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  parser.add_argument("--data-dir", default=None,
                      help="data directory (default: $JMETA_DATA_DIR, else ~/.cache/jmeta)")
  parser.add_argument("--splits", nargs="+", default=list(omniglot.SPLITS),
                      choices=omniglot.SPLITS)
  parser.add_argument("--image-size", type=int, default=28)
  parser.add_argument("--repeats", type=int, default=3, help="cached loads per pair (best)")
  args = parser.parse_args(argv)
  for split in args.splits:
    for rotations in (False, True):
      with tempfile.TemporaryDirectory(prefix="jmeta_bench_cache_") as cache_dir:
        kwargs = dict(split=split, data_dir=args.data_dir, image_size=args.image_size,
                      rotations=rotations, download=False, cache_dir=cache_dir)
        cold = _timed(**kwargs)
        cached = min(_timed(**kwargs)[:2] for _ in range(args.repeats))
      dataset = cold[2]
      for is_cached, (seconds, cpu_seconds) in ((False, cold[:2]), (True, cached)):
        print(json.dumps({"benchmark": "data_load", "split": split, "rotations": rotations,
                          "image_size": args.image_size, "cached": is_cached,
                          "seconds": round(seconds, 4), "cpu_seconds": round(cpu_seconds, 4),
                          "num_classes": dataset.num_classes,
                          "num_images": len(dataset.images)}), flush=True)


if __name__ == "__main__":
  main()
