"""The Colab notebook, executed top to bottom in CPU mode, and its installer."""

import importlib.util
import json
import pathlib

import pytest

from experiments import colab_setup
from tests.test_checkpoint import ROOT, environment

NOTEBOOK = pathlib.Path(ROOT) / "experiments" / "colab.ipynb"
HAS_NBCLIENT = all(importlib.util.find_spec(m) for m in
                   ("nbclient", "nbformat", "ipykernel"))


def test_the_notebook_is_committed_without_outputs():
  nb = json.loads(NOTEBOOK.read_text())
  code = [c for c in nb["cells"] if c["cell_type"] == "code"]
  assert code and all(not c["outputs"] and c["execution_count"] is None
                      for c in code)
  assert "parameters" in code[0]["metadata"].get("tags", [])


# Four training subprocesses (smoke, CIFAR-10, two sweep cells): about two
# minutes on the 2-core CI machine. `pytest -m slow tests/test_notebook.py`.
@pytest.mark.slow
@pytest.mark.skipif(not HAS_NBCLIENT, reason="nbclient/ipykernel missing")
def test_the_notebook_runs_in_cpu_mode(tmp_path, monkeypatch):
  import nbclient
  import nbformat
  nb = nbformat.read(str(NOTEBOOK), as_version=4)
  # As papermill does: the parameters cell, then one that overrides it.
  nb.cells.insert(2, nbformat.v4.new_code_cell(
      f"MODE = 'cpu'\nWORK = {str(tmp_path / 'work')!r}\nUSE_DRIVE = False"))
  for key, value in environment().items():
    monkeypatch.setenv(key, value)  # One CPU device, as the CLI tests.
  client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                   resources={"metadata": {"path": ROOT}})
  client.execute()
  text = "\n".join(o.get("text", "") or json.dumps(o.get("data", {}))
                   for c in nb.cells if c.cell_type == "code"
                   for o in c.outputs)
  assert "alexnet_jax already installed" in text
  assert "cpu" in text  # The device cell ran and MODE=cpu let it pass.
  assert "precision: bfloat16 compute (cpu has bfloat16)" in text
  results = tmp_path / "work" / "sweep" / "results"
  assert (results / "results.md").exists()
  assert len(list((results / "runs").glob("*.json"))) == 2  # lrn, none.
  assert "Sweep results" in text and "2 of 2 runs done" in text  # Shown.
  assert (tmp_path / "work" / "smoke" / "checkpoints").exists()


def test_the_installer_leaves_a_recent_jax_and_tensorflow_alone():
  reqs = colab_setup.requirements()
  names = dict(reqs)
  assert names["jax"] and names["tensorflow-cpu"] and names["flax"]
  colab = {"jax": ("jax", "99.0"), "tensorflow-cpu": ("tensorflow", "99.0"),
           "flax": ("flax", "0.1.0")}
  install, notes = colab_setup.plan(reqs, have=colab.get)
  # A full tensorflow satisfies tensorflow-cpu; an old flax is upgraded;
  # absent packages are installed; jax is never in the list.
  assert not any(s.startswith(("jax", "tensorflow-cpu")) for s in install)
  assert f"flax>={names['flax']}" in install
  assert f"ml-collections>={names['ml-collections']}" in install
  assert not notes


def test_the_installer_names_an_old_jax_instead_of_replacing_it():
  reqs = colab_setup.requirements()
  install, notes = colab_setup.plan(
      reqs, have=lambda n: ("jax", "0.4.1") if n == "jax" else (n, "99"))
  assert install == []
  assert len(notes) == 1 and "jax[cuda12]" in notes[0]


def test_a_full_tensorflow_counts_as_tensorflow_cpu(monkeypatch):
  versions = {"tensorflow": "2.30.0"}

  def version(dist):
    if dist not in versions:
      raise colab_setup.importlib.metadata.PackageNotFoundError(dist)
    return versions[dist]

  monkeypatch.setattr(colab_setup.importlib.metadata, "version", version)
  assert colab_setup.installed("tensorflow-cpu") == ("tensorflow", "2.30.0")
  assert colab_setup.installed("flax") is None
