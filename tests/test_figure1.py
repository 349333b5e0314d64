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
  assert table["relu"]["rows"][-1] == (0.016, None, True, False, 1.0,
                                       "not reached within 1.0 epochs")
  md = fig1.to_markdown(table, None, [])
  never = "not reached within 1.0 epochs"
  assert f"| relu | 0.004 (fastest) | 3.50 | {never} |" in md
  assert "diverged" in md
  assert f"| tanh | 0.001 | {never} | {never} |" in md
  assert ("| tanh | 0.016 | did not leave chance, stopped within 1.0 "
          "epochs | - |") in md


def test_the_one_epoch_mean_is_weighted_by_steps_and_ignores_a_lucky_window():
  r = run("tanh", 0, 0.7)
  r["train_curve"] = [[0.25, 0.5, 10], [0.5, 0.3, 10], [0.75, 0.2, 10],
                      [1.0, 0.2, 10], [1.25, 0.1, 30]]
  # At 1.0 the last epoch's mean is 12/40 = 0.3; at 1.25 the windows in
  # (0.25, 1.25] give (3 + 2 + 2 + 3) / 60 = 0.167.
  assert fig1.epoch_mean_crossing(r) == 1.25
  assert fig1.epoch_mean_crossing(r, threshold=0.3) == 1.0
  assert fig1.epoch_mean_crossing({**r, "diverged": True}) is None
  relu = run("relu", 0, 0.5)
  relu["train_curve"] = [[0.5, 0.2, 10], [1.0, 0.2, 10]]
  smoothed = fig1.ratio([r, relu], fig1.epoch_mean_crossing)
  assert smoothed["per_seed"] == {0: 1.25}
  md = fig1.to_markdown({}, fig1.ratio([r, relu]), [r, relu], smoothed)
  assert "| tanh | 0 | 0.70 | 1.25 |" in md
  assert "1-epoch mean of 25% training error: 1.25x" in md
  # A run the runner stopped at its first window <= 24%: no reading.
  relu["stop_train_error"] = 0.24
  relu["train_curve"] = [[0.5, 0.3, 10], [0.9, 0.2, 10]]
  md = fig1.to_markdown({}, None, [relu])
  assert "| relu | 0 | 0.50 | - (stopped at the first window) |" in md


def test_ratio_is_paired_by_seed_with_a_t_interval_of_log_ratios():
  seeds = [run("relu", 0, 2.0), run("tanh", 0, 12.0),
           run("relu", 1, 4.0), run("tanh", 1, 12.0),
           run("relu", 2, 3.0), run("tanh", 2, None)]
  r = fig1.ratio(seeds)
  assert r["per_seed"] == {0: 6.0, 1: 3.0}
  assert r["not_reached"] == [2]
  # Seed 2's tanh trained 1 epoch (its curve's end) without reaching 25%:
  # its ratio is above 1.0 / 3.0, and the report says so.
  assert r["at_least"] == {2: pytest.approx(1.0 / 3.0)}
  assert "seed 2: tanh did not reach 25% within the run, its ratio > 0.33" \
      in fig1._ratio_line("epochs to 25%", r)
  assert r["geometric_mean"] == pytest.approx(math.sqrt(18.0))
  # Two log ratios, log 6 and log 3: t(1) interval by hand.
  logs = [math.log(6.0), math.log(3.0)]
  m = sum(logs) / 2
  se = abs(logs[0] - logs[1]) / 2  # sd / sqrt(2) with sd = |a - b| / sqrt 2.
  half = 12.706204736 * se
  assert r["ci"][0] == pytest.approx(math.exp(m - half), rel=1e-6)
  assert r["ci"][1] == pytest.approx(math.exp(m + half), rel=1e-6)


def test_the_seeds_plot_takes_a_grid_run_standing_in_for_its_seed(tmp_path):
  """A grid run copied in as a seed (its cell names a rate) next to
  fig1_seeds runs (their cells do not): the plot is drawn per activation."""
  seeds = [run("relu", 0, 2.0), run("tanh", 0, 12.0, 0.016),
           run("relu", 1, 4.0), run("tanh", 1, 12.0)]
  fig1.plot(seeds, str(tmp_path / "seeds.png"))
  fig1.plot([run("relu", 0, 2.0, 0.002), run("tanh", 0, 9.0, 0.016)],
            str(tmp_path / "grid.png"))
  assert (tmp_path / "seeds.png").stat().st_size > 1000
  assert (tmp_path / "grid.png").stat().st_size > 1000
