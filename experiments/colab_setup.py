"""Installs the project into a runtime that already has jax and TensorFlow.

  python experiments/colab_setup.py [--dry-run]

Colab (and most GPU images) come with a CUDA jaxlib and the full
`tensorflow` preinstalled. `pip install -e .` there would pull
`tensorflow-cpu` beside `tensorflow` (two distributions writing one
`tensorflow` package) and could replace the CUDA jax with a CPU one. This
installs the project with `--no-deps`, then only the requirements that are
absent or older than pyproject.toml's minimums, and never touches a jax or
a TensorFlow that is recent enough. A jax older than the minimum is named
with the command that upgrades it for the GPU (`jax[cuda12]`), not
replaced behind the user's back. Standard library only: it runs before
anything of the project can be imported.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Distributions that provide the same import as the pinned one.
SAME_PACKAGE = {"tensorflow-cpu": ("tensorflow", "tensorflow-cpu",
                                   "tf-nightly", "tensorflow-gpu")}
# Installed by the user for their accelerator; the project never replaces
# them.
HANDS_OFF = ("jax", "tensorflow-cpu")


def requirements(pyproject: str | None = None) -> list[tuple[str, str]]:
  """(name, minimum version) of pyproject.toml's runtime dependencies."""
  path = pyproject or os.path.join(ROOT, "pyproject.toml")
  with open(path) as f:
    text = f.read()
  block = re.search(r"^dependencies = \[(.*?)^\]", text, re.S | re.M)
  out = []
  for line in block.group(1).splitlines():
    m = re.match(r'\s*"([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?>=([0-9.]+)"', line)
    if m:
      out.append((m.group(1).lower(), m.group(2)))
  return out


def _version_tuple(text: str) -> tuple:
  return tuple(int(p) for p in re.findall(r"\d+", text)[:3])


def installed(name: str) -> tuple[str, str] | None:
  """(distribution, version) that provides `name`, or None."""
  for dist in SAME_PACKAGE.get(name, (name,)):
    try:
      return dist, importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
      continue
  return None


def plan(reqs, have=installed) -> tuple[list[str], list[str]]:
  """(pip specs to install, messages about versions left alone)."""
  install, notes = [], []
  for name, minimum in reqs:
    found = have(name)
    if found and _version_tuple(found[1]) >= _version_tuple(minimum):
      continue
    if found and name in HANDS_OFF:
      notes.append(f"{found[0]} {found[1]} is older than the project's "
                   f"minimum {minimum}; upgrade it for your accelerator "
                   f"(GPU: pip install -U 'jax[cuda12]>={minimum}')"
                   if name == "jax" else
                   f"{found[0]} {found[1]} is older than {minimum}; "
                   f"pip install -U '{found[0]}>={minimum}'")
      continue
    install.append(f"{name}>={minimum}")
  return install, notes


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--dry-run", action="store_true",
                      help="print the pip commands; install nothing")
  args = parser.parse_args(argv)
  install, notes = plan(requirements())
  commands = [[sys.executable, "-m", "pip", "install", "-q", "--no-deps",
               "-e", ROOT]]
  if install:
    commands.insert(0, [sys.executable, "-m", "pip", "install", "-q",
                        *install])
  for note in notes:
    print(f"warning: {note}", file=sys.stderr)
  for command in commands:
    print("$ " + " ".join(command[1:]), flush=True)
    if not args.dry_run and subprocess.run(command).returncode != 0:
      print(f"error: {' '.join(command[2:4])} failed (output above)",
            file=sys.stderr)
      return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
