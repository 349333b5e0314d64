"""The Figure 1 report: the fastest rate per activation and the paired
tanh / ReLU ratio, on hand-made per-run records."""

import math

import pytest

from experiments import figure1_report as fig1


def run(act, seed, epochs, rate=None, diverged=False, gave_up=False):
  cell = ({"model.activation": act, "optim.learning_rate": rate}
          if rate is not None else {"option": f"fig1_{act}"})
  r = {"cell": cell, "seed": seed, "epochs_to_25pct_train_error": epochs,
       "train_curve": [[0.5, 0.6, 10], [1.0, 0.2, 10]]}
  if diverged:
    r["diverged"] = True
  if gave_up:
    r["ended"] = "gave_up"
  return r


def test_the_fastest_rate_per_activation_skips_diverged_and_unreached():
  grid = [run("relu", 0, 6.0, 0.001), run("relu", 0, 3.5, 0.004),
          run("relu", 0, 2.0, 0.016, diverged=True),
          run("tanh", 0, None, 0.001), run("tanh", 0, 20.0, 0.004),
          run("tanh", 0, None, 0.016, gave_up=True)]
  table = fig1.rate_table(grid)
  assert table["relu"]["best"] == 0.004 and table["tanh"]["best"] == 0.004
  assert table["relu"]["rows"][-1] == (0.016, None, True, False, 1.0)
  md = fig1.to_markdown(table, None, [])
  assert "| relu | 0.004 (fastest) | 3.50 |" in md and "diverged" in md
  assert "| tanh | 0.001 | not reached within 1.0 epochs |" in md
  assert ("| tanh | 0.016 | did not leave chance, stopped within 1.0 "
          "epochs |") in md


def test_ratio_is_paired_by_seed_with_a_t_interval_of_log_ratios():
  seeds = [run("relu", 0, 2.0), run("tanh", 0, 12.0),
           run("relu", 1, 4.0), run("tanh", 1, 12.0),
           run("relu", 2, 3.0), run("tanh", 2, None)]
  r = fig1.ratio(seeds)
  assert r["per_seed"] == {0: 6.0, 1: 3.0}
  assert r["not_reached"] == [2]
  assert r["geometric_mean"] == pytest.approx(math.sqrt(18.0))
  # Two log ratios, log 6 and log 3: t(1) interval by hand.
  logs = [math.log(6.0), math.log(3.0)]
  m = sum(logs) / 2
  se = abs(logs[0] - logs[1]) / 2  # sd / sqrt(2) with sd = |a - b| / sqrt 2.
  half = 12.706204736 * se
  assert r["ci"][0] == pytest.approx(math.exp(m - half), rel=1e-6)
  assert r["ci"][1] == pytest.approx(math.exp(m + half), rel=1e-6)
