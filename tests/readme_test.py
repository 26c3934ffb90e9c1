"""The README's example composing a new objective runs as written."""
import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _block_after(marker):
  text = README.read_text()
  match = re.search(re.escape(marker) + r"\s*```(?:python|bash)\n(.*?)```", text, re.S)
  assert match, f"no code block after {marker} in README.md"
  return match.group(1)


def test_readme_example_composes_and_trains_one_step():
  namespace = {}
  exec(compile(_block_after("<!-- readme-example -->"), "README-example", "exec"), namespace)
  metrics = namespace["metrics"]
  assert float(metrics["meta_loss"]) >= 0 and bool(metrics["finite"])
  assert int(namespace["state"].step) == 1


def test_readme_set_up_commands_are_present_and_ci_runs_the_test_command():
  main = _block_after("<!-- main-command -->")
  test = _block_after("<!-- test-command -->")
  assert "experiments.train --config=configs/bmssl_omniglot.py" in main
  assert "pytest" in test
  ci = (README.parent / ".ci" / "run").read_text()
  assert "test-command" in ci
