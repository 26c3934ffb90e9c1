r"""Launches a multi-process jmeta run on this machine, as a pod or cluster would.

Each process is `python -m experiments.train` with the coordinator on loopback, its own process
id and `--devices_per_process` simulated CPU devices; cross-process collectives use gloo. The
launcher forwards every other argument, waits, and if any process fails it stops the others
and exits with that process's code.

Example (2 processes × 4 devices = one 8-device mesh):
  python -m experiments.launch_local --num_processes=2 --devices_per_process=4 -- \
      --config=configs/bmssl_omniglot.py:smoke --workdir=/tmp/multi
"""
import argparse
import os
import socket
import subprocess
import sys
import time


def free_port() -> int:
  with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    return sock.getsockname()[1]


def with_cpu_devices(env, count: int) -> dict:
  """A copy of `env` whose XLA_FLAGS also simulate `count` CPU devices (its other flags kept)."""
  flags = env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={count}"
  return dict(env, XLA_FLAGS=flags.strip())


def launch(train_args, *, num_processes: int, devices_per_process: int,
           port: int = 0, heartbeat_timeout_seconds: int = 30, env=None) -> int:
  """Runs the processes to completion; returns 0 or the first failing process's exit code."""
  port = port or free_port()
  env = with_cpu_devices(os.environ if env is None else env, devices_per_process)
  env.setdefault("JAX_PLATFORMS", "cpu")
  processes = [
      subprocess.Popen([sys.executable, "-m", "experiments.train",
                        f"--coordinator_address=127.0.0.1:{port}",
                        f"--num_processes={num_processes}", f"--process_id={index}",
                        f"--heartbeat_timeout_seconds={heartbeat_timeout_seconds}",
                        *train_args], env=env)
      for index in range(num_processes)]
  try:
    while True:
      codes = [process.poll() for process in processes]
      failed = [code for code in codes if code not in (None, 0)]
      if failed:
        print(f"launch_local: a process exited with {failed[0]}; stopping the others.",
              file=sys.stderr)
        return failed[0]
      if all(code == 0 for code in codes):
        return 0
      time.sleep(0.5)
  finally:
    for process in processes:
      if process.poll() is None:
        process.terminate()
    for process in processes:
      try:
        process.wait(timeout=60)
      except subprocess.TimeoutExpired:
        process.kill()


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--num_processes", type=int, default=2)
  parser.add_argument("--devices_per_process", type=int, default=4)
  parser.add_argument("--port", type=int, default=0, help="coordinator port (0: a free one)")
  parser.add_argument("--heartbeat_timeout_seconds", type=int, default=30)
  args, train_args = parser.parse_known_args()
  train_args = [a for a in train_args if a != "--"]
  sys.exit(launch(train_args, num_processes=args.num_processes,
                  devices_per_process=args.devices_per_process, port=args.port,
                  heartbeat_timeout_seconds=args.heartbeat_timeout_seconds))


if __name__ == "__main__":
  main()
