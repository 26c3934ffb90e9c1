r"""SIGKILLs a real training run at random moments, relaunching it until it finishes; its final
parameters must be bitwise equal to an uninterrupted run of the same config.

  nice -n 10 python scripts/kill_resume.py --workdir /tmp/kill_resume --kills 12 --seed 0 \
      -- --config.num_steps=60 --config.checkpoint_every_steps=3

Arguments after `--` go to `python -m experiments.train` (default config: BMSSL smoke). The
uninterrupted run goes first (its step time scales the kill delays), then the killed one:
  * a "training" kill comes a random 0..(--steps_per_window × the uninterrupted run's seconds
    per step) after the relaunch logs a step beyond the last one logged before, so it lands in
    a step, an evaluation, a metrics write or a checkpoint save;
  * a "startup" kill (probability --startup_fraction) comes a random 0..startup seconds after
    launch: in imports, data loading, restoring the checkpoint or compiling;
  * a "save" kill (probability --save_fraction) comes a random 0..50 ms after orbax creates the
    temporary directory of a save beyond the last logged step: aimed at a checkpoint write.
A kill landed in a checkpoint write if orbax's temporary directory of a save begun by that launch
is left behind. One JSON line per kill, then a summary line; the exit code is 1 if the final
fingerprints or metrics differ, or fewer kills than asked for landed.
"""
import argparse
import json
import os
import pathlib
import random
import re
import signal
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
TMP_MARKER = "orbax-checkpoint-tmp"
LAUNCH_MARKER = "===== launch"


def launch(workdir: pathlib.Path, config: str, overrides: list, log) -> subprocess.Popen:
  command = [sys.executable, "-m", "experiments.train", f"--config={config}",
             f"--workdir={workdir}", *overrides]
  return subprocess.Popen(command, cwd=REPO, stdout=log, stderr=log)


def records(workdir: pathlib.Path) -> list:
  path = workdir / "metrics.jsonl"
  if not path.exists():
    return []
  lines = []
  for line in path.read_text().splitlines():
    try:
      lines.append(json.loads(line))
    except json.JSONDecodeError:  # a line cut by the kill; the resumed run truncates it away
      break
  return lines


def last_step(workdir: pathlib.Path) -> int:
  logged = records(workdir)
  return logged[-1]["step"] if logged else 0


def checkpoint_dir_entries(workdir: pathlib.Path) -> list:
  directory = workdir / "checkpoints"
  return sorted(os.listdir(directory)) if directory.exists() else []


def partial_saves_since(workdir: pathlib.Path, since: float) -> list:
  """Temporary save directories created or written to after `since` (by this launch)."""
  directory = workdir / "checkpoints"
  return [name for name in checkpoint_dir_entries(workdir)
          if TMP_MARKER in name and os.stat(directory / name).st_mtime >= since]


def wait_for_save(process, workdir, after_step, since, timeout):
  """The temporary directory of a save of a step > after_step begun after `since`, or None."""
  start = time.time()
  while time.time() - start < timeout:
    if process.poll() is not None:
      return None
    for name in partial_saves_since(workdir, since):
      step = name.split(".")[0]
      if step.isdigit() and int(step) > after_step:
        return name
    time.sleep(0.005)
  raise TimeoutError(f"no checkpoint save began in {workdir} within {timeout} s")


def wait_for_new_step(process, workdir, after_step, timeout):
  """Seconds until the run logs a step > after_step, or None if it exited first."""
  start = time.time()
  while time.time() - start < timeout:
    if process.poll() is not None:
      return None
    if last_step(workdir) > after_step:
      return time.time() - start
    time.sleep(0.05)
  raise TimeoutError(f"no new step logged in {workdir} within {timeout} s")


def run_straight(workdir, config, overrides, log_path):
  """The uninterrupted reference run: (seconds to its first step, seconds per step)."""
  with open(log_path, "w") as log:
    process = launch(workdir, config, overrides, log)
    startup = wait_for_new_step(process, workdir, 0, timeout=3600)
    if process.wait() != 0:
      raise RuntimeError(f"the uninterrupted run failed; see {log_path}")
  logged = [r for r in records(workdir) if not r.get("final")]
  per_step = (logged[-1]["wall_s"] - logged[0]["wall_s"]) / max(len(logged) - 1, 1)
  return startup, per_step


def resumed_from(log_path: pathlib.Path):
  """The step the latest launch resumed from, per its log (None: it had not restored yet)."""
  latest = log_path.read_text().rsplit(LAUNCH_MARKER, 1)[-1]
  found = re.findall(r"resumed from step (\d+)", latest)
  return int(found[-1]) if found else None


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", required=True, help="a new directory for both runs")
  parser.add_argument("--config", default="configs/bmssl_omniglot.py:smoke")
  parser.add_argument("--kills", type=int, default=12)
  parser.add_argument("--seed", type=int, default=0, help="seeds the kill delays")
  parser.add_argument("--steps_per_window", type=float, default=5.0,
                      help="training kills come within this many steps of the first new one")
  parser.add_argument("--startup_fraction", type=float, default=0.15)
  parser.add_argument("--save_fraction", type=float, default=0.25)
  parser.add_argument("overrides", nargs="*", help="after --: flags for experiments.train")
  args = parser.parse_args()
  base = pathlib.Path(args.workdir).resolve()
  base.mkdir(parents=True, exist_ok=False)  # both workdirs must start empty
  straight, interrupted = base / "straight", base / "interrupted"
  rng = random.Random(args.seed)
  wall_start = time.time()

  startup, per_step = run_straight(straight, args.config, args.overrides, base / "straight.log")
  max_delay = args.steps_per_window * per_step

  kills, launches = [], 0
  log_path = base / "interrupted.log"
  with open(log_path, "w") as log:
    while True:
      launches += 1
      log.write(f"\n{LAUNCH_MARKER} {launches}\n")
      log.flush()
      resume_step = last_step(interrupted)
      launched_at = time.time()
      process = launch(interrupted, args.config, args.overrides, log)
      if len(kills) >= args.kills:
        break  # the last launch runs to the end
      draw = rng.random()
      if draw < args.startup_fraction:
        kind, delay = "startup", rng.uniform(0, startup)
        time.sleep(delay)
      elif draw < args.startup_fraction + args.save_fraction:
        kind, delay = "save", rng.uniform(0, 0.05)
        if wait_for_save(process, interrupted, resume_step, launched_at, timeout=3600) is None:
          break
        time.sleep(delay)
      else:
        kind, delay = "training", rng.uniform(0, max_delay)
        if wait_for_new_step(process, interrupted, resume_step, timeout=3600) is None:
          break  # finished before any new step: nothing left to kill
        time.sleep(delay)
      if process.poll() is not None:
        break  # it finished before the kill came
      process.send_signal(signal.SIGKILL)
      if process.wait() != -signal.SIGKILL:
        break  # it ended on its own just before the kill: not a kill, and nothing to relaunch
      partial = partial_saves_since(interrupted, launched_at)
      kill = {"kill": len(kills) + 1, "kind": kind, "delay_s": round(delay, 2),
              "seconds_since_launch": round(time.time() - launched_at, 1),
              "logged_before": resume_step, "resumed_from": resumed_from(log_path),
              "last_logged_step": last_step(interrupted),
              "checkpoints": [e for e in checkpoint_dir_entries(interrupted) if e.isdigit()],
              "during_checkpoint_write": bool(partial), "partial_saves": partial,
              "returncode": process.returncode}
      kills.append(kill)
      print(json.dumps(kill), flush=True)
    returncode = process.wait()

  resumes = [int(step) for step in re.findall(r"resumed from step (\d+)", log_path.read_text())]
  final_interrupted, final_straight = records(interrupted)[-1], records(straight)[-1]
  same_metrics = ([{k: v for k, v in r.items() if k != "wall_s"} for r in records(interrupted)]
                  == [{k: v for k, v in r.items() if k != "wall_s"} for r in records(straight)])
  summary = {
      "summary": True, "kills": len(kills), "kills_asked": args.kills,
      "training_kills": sum(k["kind"] == "training" for k in kills),
      "startup_kills": sum(k["kind"] == "startup" for k in kills),
      "save_kills": sum(k["kind"] == "save" for k in kills),
      "during_checkpoint_write": sum(k["during_checkpoint_write"] for k in kills),
      "launches": launches, "resumes": resumes, "final_returncode": returncode,
      "final_step": final_interrupted["step"],
      "fingerprint_interrupted": final_interrupted.get("fingerprint"),
      "fingerprint_straight": final_straight.get("fingerprint"),
      "max_delay_s": round(max_delay, 2), "startup_s": round(startup, 1),
      "seconds": round(time.time() - wall_start),
  }
  summary["fingerprints_equal"] = (summary["fingerprint_interrupted"] is not None and
                                   summary["fingerprint_interrupted"] ==
                                   summary["fingerprint_straight"])
  summary["metrics_equal"] = same_metrics  # every logged value but wall_s
  print(json.dumps(summary), flush=True)
  ok = (summary["fingerprints_equal"] and same_metrics and returncode == 0
        and len(kills) >= args.kills)
  sys.exit(0 if ok else 1)


if __name__ == "__main__":
  main()
