r"""Samples a process's resident memory (VmRSS) every few seconds into JSON lines, until it exits.

  python scripts/sample_rss.py --pid 1234 --every 10 --out rss.jsonl

Used for the soak measurement in docs/RELIABILITY.md: a long `experiments.train` run's RSS after
warm-up should stay flat (no leak from the loop, metrics writers or checkpointing).
"""
import argparse
import json
import time


def resident_mb(pid: int) -> float:
  with open(f"/proc/{pid}/status") as status:
    for line in status:
      if line.startswith("VmRSS:"):
        return int(line.split()[1]) / 1024
  raise ValueError(f"/proc/{pid}/status has no VmRSS line")


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--pid", type=int, required=True)
  parser.add_argument("--every", type=float, default=10.0, help="seconds between samples")
  parser.add_argument("--out", required=True)
  args = parser.parse_args()
  start = time.time()
  with open(args.out, "a") as out:
    while True:
      try:
        rss = resident_mb(args.pid)
      except (FileNotFoundError, ProcessLookupError):
        break
      out.write(json.dumps({"t_s": round(time.time() - start, 1), "rss_mb": round(rss, 1)}) + "\n")
      out.flush()
      time.sleep(args.every)


if __name__ == "__main__":
  main()
