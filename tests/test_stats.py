"""The run summary's weighted means and crossings, the sweep statistics and
the sweep report, against hand computations (no training, no JAX)."""

import itertools
import json

import numpy as np
import pytest
from scipy import stats as sps

from experiments import stats
from experiments import summary
from experiments import sweep_effects
from experiments import sweep_report

# Ten steps per epoch, a train row every 4 steps and at each evaluation, so
# windows of 4, 4, 2 steps in epoch 1 and 2, 4, 4 in epoch 2:
# (start, end, train_accuracy, train_loss).
WINDOWS = [(0, 4, 0.5, 2.0), (4, 8, 0.6, 1.6), (8, 10, 0.7, 1.2),
           (10, 12, 0.72, 1.1), (12, 16, 0.8, 0.9), (16, 20, 0.9, 0.5)]


def write_workdir(path, val=(0.45, 0.35), test=0.37, lrn=True,
                  test_split="test"):
  """A metrics.jsonl and config.json as the training loop writes them,
  with a row logged twice across a resume (the second copy counts)."""
  path.mkdir(parents=True, exist_ok=True)
  rows = []
  for start, end, acc, loss in WINDOWS:
    row = {"step": end, "train_loss": loss, "train_accuracy": acc,
           "learning_rate": 0.01, "images_per_sec": 100.0,
           "wall_time": 1000.0 + end, "epoch": end / 10}
    if end == 16:  # Logged, then lost to a crash and logged again.
      rows.append({**row, "train_accuracy": 0.1, "train_loss": 9.0})
    rows.append(row)
    if end % 10 == 0:
      e = {"step": end, "eval_loss": 1.0 + val[end // 10 - 1],
           "eval_top1_error": val[end // 10 - 1], "eval_top5_error": 0.1,
           "eval_examples": 100.0, "wall_time": 1000.5 + end,
           "epoch": end / 10}
      if lrn:
        e.update({f"lrn/{layer}/{k}": v * (end // 10) for layer in
                  ("conv1", "conv2") for k, v in
                  (("spread", 0.01), ("mean", 0.9), ("logdev", 0.02))})
      rows.append(e)
  if test is not None:
    rows.append({"step": 20, "test_loss": 1.4, "test_top1_error": test,
                 "test_top5_error": 0.12, "test_examples": 100.0,
                 "wall_time": 1030.0})
  (path / "metrics.jsonl").write_text(
      "".join(json.dumps(r) + "\n" for r in rows))
  config = {"batch_size": 8, "data": {"eval_split": "holdout",
                                      "test_split": test_split}}
  (path / "config.json").write_text(json.dumps(config))
  return path


def test_summary_weights_train_rows_by_their_steps(tmp_path):
  s = summary.summarize(str(write_workdir(tmp_path)))
  e1, e2 = s["epochs"]
  # Epoch 1: (4 * 0.5 + 4 * 0.6 + 2 * 0.7) / 10; unweighted would be 0.6.
  assert e1["train_accuracy"] == pytest.approx(0.58)
  assert e1["train_error"] == pytest.approx(0.42)
  assert e1["train_loss"] == pytest.approx((4 * 2.0 + 4 * 1.6 + 2 * 1.2) / 10)
  # Epoch 2: (2 * 0.72 + 4 * 0.8 + 4 * 0.9) / 10, the resumed row's copy.
  assert e2["train_accuracy"] == pytest.approx(0.824)
  assert e2["train_loss"] == pytest.approx((2 * 1.1 + 4 * 0.9 + 4 * 0.5) / 10)
  assert (e2["epoch"], e2["step"], e2["val_top1_error"]) == (2.0, 20, 0.35)
  assert e2["lrn"]["lrn/conv2/mean"] == pytest.approx(1.8)
  assert s["eval_split"] == "holdout" and s["test_split"] == "test"
  assert s["final_val_top1_error"] == 0.35
  assert s["best_val_top1_error"] == 0.35
  assert (s["test_top1_error"], s["test_top5_error"], s["test_loss"]) == (
      0.37, 0.12, 1.4)
  assert s["final_train_error"] == pytest.approx(0.176)
  assert s["train_val_gap"] == pytest.approx(0.35 - 0.176)
  assert s["lrn_final"]["conv1"] == pytest.approx(
      {"spread": 0.02, "mean": 1.8, "logdev": 0.04})
  assert s["steps"] == 20
  # 20 steps x 8 images at 100 images/s.
  assert s["train_seconds"] == pytest.approx(1.6)
  # The older names still hold the validation numbers.
  assert s["final_test_top1_error"] == 0.35
  assert e2["test_top1_error"] == 0.35


def test_the_running_training_error_crossing_is_interpolated(tmp_path):
  rows = summary.read_rows(str(write_workdir(tmp_path)))
  # Window midpoints and errors: 2: 0.5, 6: 0.4, 9: 0.3, 11: 0.28,
  # 14: 0.2, 18: 0.1. 25% lies between 11 and 14: 11 + 0.03 / 0.08 * 3.
  assert summary.steps_to_error(rows, 0.25) == pytest.approx(12.125)
  assert summary.steps_per_epoch(rows) == 10
  assert summary.epochs_to_error(rows, 0.25) == pytest.approx(1.2125)
  assert summary.steps_to_error(rows, 0.6) == 2.0  # The first window.
  assert summary.steps_to_error(rows, 0.3) == pytest.approx(9.0)
  assert summary.steps_to_error(rows, 0.05) is None
  s = summary.summarize(str(tmp_path))
  assert s["epochs_to_25pct_train_error"] == pytest.approx(1.2125)


def test_an_old_run_without_test_row_or_lrn_summarizes(tmp_path):
  s = summary.summarize(str(write_workdir(tmp_path, test=None, lrn=False,
                                          test_split="")))
  assert s["test_top1_error"] is None and s["test_split"] is None
  assert s["lrn_final"] == {} and s["epochs"][0]["lrn"] == {}


def test_paired_t_matches_scipy_and_the_formula():
  a = [26.5, 27.0, 26.2, 26.9, 27.3]
  b = [27.4, 27.5, 27.3, 27.2, 28.4]
  d = [0.9, 0.5, 1.1, 0.3, 1.1]
  mean = sum(d) / 5
  sd = (sum((x - mean) ** 2 for x in d) / 4) ** 0.5
  se = sd / 5 ** 0.5
  got = stats.paired_t(a, b)
  assert got["n"] == 5 and got["df"] == 4
  np.testing.assert_allclose([got["mean"], got["sd"], got["se"], got["t"]],
                             [mean, sd, se, mean / se], rtol=1e-10)
  want = sps.ttest_rel(b, a)
  np.testing.assert_allclose([got["t"], got["p"]],
                             [want.statistic, want.pvalue], rtol=1e-10)
  t975 = 2.7764451051977987  # t quantile, 4 degrees of freedom.
  np.testing.assert_allclose(got["ci"], [mean - t975 * se, mean + t975 * se],
                             rtol=1e-10)
  one = stats.paired_t([1.0], [2.0])
  assert one["mean"] == 1.0 and one["p"] is None and one["ci"] == [None, None]
  same = stats.paired_t([1.0, 2.0], [2.0, 3.0])
  assert same["sd"] == 0.0 and same["t"] is None and same["p"] is None
  with pytest.raises(ValueError, match="pairs"):
    stats.paired_t([1.0, 2.0], [1.0])
  assert stats.mean_std([1.0, 2.0, 3.0, 4.0]) == (2.5, np.std(
      [1.0, 2.0, 3.0, 4.0], ddof=1))


def test_holm_adjusts_in_the_given_order():
  # Sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1: 0.02, 0.03, 0.06,
  # 0.04 -> made non-decreasing: 0.06.
  np.testing.assert_allclose(stats.holm([0.01, 0.04, 0.03, 0.005]),
                             [0.03, 0.06, 0.06, 0.02])
  assert stats.holm([0.6, 0.7]) == [1.0, 1.0]  # Capped at 1.
  adj = stats.holm([0.5, 0.4, None])
  assert adj[2] is None
  np.testing.assert_allclose(adj[:2], [0.8, 0.8])
  assert stats.holm([]) == []


# y[seed][a][b]: three seeds, a 2 x 2 grid.
Y = {0: {"lrn": {"3/2": 26.3, "2/2": 27.0}, "none": {"3/2": 27.5, "2/2": 27.1}},
     1: {"lrn": {"3/2": 26.9, "2/2": 27.3}, "none": {"3/2": 28.0, "2/2": 28.2}},
     2: {"lrn": {"3/2": 26.7, "2/2": 27.4}, "none": {"3/2": 28.1, "2/2": 27.3}}}


def test_blocked_anova_matches_the_textbook_sums_of_squares():
  seeds, la, lb = [0, 1, 2], ["lrn", "none"], ["3/2", "2/2"]
  r, a, b = 3, 2, 2
  y = lambda s, i, j: Y[s][la[i]][lb[j]]
  g = sum(y(s, i, j) for s in seeds for i in range(a) for j in range(b)) / 12
  ai = [sum(y(s, i, j) for s in seeds for j in range(b)) / (r * b)
        for i in range(a)]
  bj = [sum(y(s, i, j) for s in seeds for i in range(a)) / (r * a)
        for j in range(b)]
  ab = [[sum(y(s, i, j) for s in seeds) / r for j in range(b)]
        for i in range(a)]
  sk = [sum(y(s, i, j) for i in range(a) for j in range(b)) / (a * b)
        for s in seeds]
  ss_a = b * r * sum((x - g) ** 2 for x in ai)
  ss_b = a * r * sum((x - g) ** 2 for x in bj)
  ss_ab = r * sum((ab[i][j] - ai[i] - bj[j] + g) ** 2
                  for i in range(a) for j in range(b))
  ss_blocks = a * b * sum((x - g) ** 2 for x in sk)
  ss_t = sum((y(s, i, j) - g) ** 2
             for s in seeds for i in range(a) for j in range(b))
  ss_e = ss_t - ss_a - ss_b - ss_ab - ss_blocks
  ms_e = ss_e / 6  # (r - 1)(ab - 1).

  out = stats.blocked_anova(Y, names=["norm", "pool"])
  terms = {t["source"]: t for t in out["terms"]}
  assert list(terms) == ["norm", "pool", "norm x pool", "blocks",
                         "residual", "total"]
  for name, ss, df in (("norm", ss_a, 1), ("pool", ss_b, 1),
                       ("norm x pool", ss_ab, 1), ("blocks", ss_blocks, 2),
                       ("residual", ss_e, 6), ("total", ss_t, 11)):
    assert terms[name]["df"] == df
    assert terms[name]["ss"] == pytest.approx(ss, rel=1e-9), name
  f_a = ss_a / ms_e
  assert terms["norm"]["F"] == pytest.approx(f_a, rel=1e-9)
  assert terms["norm"]["p"] == pytest.approx(sps.f.sf(f_a, 1, 6), rel=1e-9)
  assert out["levels"] == [la, lb] and out["seeds"] == seeds

  # The residual is that of least squares on block + A + B + A x B dummies.
  rows = [(s, i, j, y(s, i, j)) for s in seeds for i in range(a)
          for j in range(b)]
  x = np.array([[1, s == 1, s == 2, i, j, i * j] for s, i, j, _ in rows],
               dtype=float)
  v = np.array([row[-1] for row in rows])
  resid = v - x @ np.linalg.lstsq(x, v, rcond=None)[0]
  assert float(resid @ resid) == pytest.approx(ss_e, rel=1e-9)

  # The same from a long table.
  long = stats.blocked_anova([(s, la[i], lb[j], val) for s, i, j, val in rows])
  assert [t["ss"] for t in long["terms"]] == pytest.approx(
      [t["ss"] for t in out["terms"]])


def test_blocked_anova_refuses_an_unbalanced_design():
  rows = [(s, i, j, 1.0 + s + i) for s in range(3) for i in range(2)
          for j in range(2)]
  with pytest.raises(ValueError, match="unbalanced design: no value for "
                     "seed 2 in cell"):
    stats.blocked_anova(rows[:-1])
  with pytest.raises(ValueError, match="twice"):
    stats.blocked_anova(rows + rows[:1])


def test_one_factor_anova_is_the_paired_t_test_squared():
  a, b = [26.5, 27.0, 26.2, 26.9], [27.4, 27.5, 27.3, 27.2]
  out = stats.blocked_anova([(s, "ref", x) for s, x in enumerate(a)] +
                            [(s, "new", x) for s, x in enumerate(b)])
  t = stats.paired_t(a, b)
  assert out["terms"][0]["F"] == pytest.approx(t["t"] ** 2)
  assert out["terms"][0]["p"] == pytest.approx(t["p"])


def test_contrasts_pair_within_seeds_and_share_one_holm_family():
  y, levels = stats.to_array(Y)
  comps = stats.contrasts(y, levels[1:], ["norm", "pool"])
  assert len(comps) == 2 * 3  # Per axis: the main effect and two simple.
  main = comps[0]
  assert (main["field"], main["value"], main["context"]) == (
      "norm", "none", None)
  a = [(Y[s]["lrn"]["3/2"] + Y[s]["lrn"]["2/2"]) / 2 for s in Y]
  b = [(Y[s]["none"]["3/2"] + Y[s]["none"]["2/2"]) / 2 for s in Y]
  assert main["mean"] == pytest.approx(stats.paired_t(a, b)["mean"])
  assert main["p"] == pytest.approx(sps.ttest_rel(b, a).pvalue)
  simple = comps[1]
  assert simple["context"] == {"pool": "3/2"}
  assert simple["diffs"] == pytest.approx(
      [Y[s]["none"]["3/2"] - Y[s]["lrn"]["3/2"] for s in Y])
  assert [c["p_holm"] for c in comps] == pytest.approx(
      stats.holm([c["p"] for c in comps]))
  assert "bootstrap_ci" not in main  # Three seeds: no bootstrap.


def test_bootstrap_is_fixed_and_inside_the_range():
  d = [0.9, 0.5, 1.1, 0.3, 1.1, 0.7]
  lo, hi = stats.bootstrap_ci(d)
  assert min(d) <= lo < sum(d) / 6 < hi <= max(d)
  assert stats.bootstrap_ci(d) == [lo, hi]


AXES = [["model.norm", ["lrn", "none"]], ["model.pool", ["overlap",
                                                         "nonoverlap"]]]


def _record(cell, seed, **summ):
  return {**summ, "cell": cell, "seed": seed, "commit": "abc",
          "sweep": {"axes": AXES, "seeds": [0, 1, 2, 3, 4]}}


def _old_record(cell, seed, final):
  epochs = [{"epoch": float(e), "step": 10 * e, "test_top1_error": final + (
      2 - e) * 0.1, "test_top5_error": 0.02, "test_loss": 1.0,
             "train_loss": 1.0, "train_accuracy": 0.6 + 0.1 * e,
             "wall_seconds": 10.0 * e} for e in (1, 2)]
  return _record(cell, seed, epochs=epochs, final_test_top1_error=final,
                 final_test_top5_error=0.02, best_test_top1_error=final,
                 steps=20, train_seconds=1.0, wall_seconds=2.0,
                 images_per_sec_median=100.0,
                 config={"data": {"eval_split": "test"}})


def _effect(cell, seed):
  """Errors (fractions): a 1-point effect of norm=none, a seed offset and
  a deterministic wobble."""
  wobble = (seed * 7 + len(cell["model.pool"]) + 2 * len(
      cell["model.norm"])) % 5
  return 0.27 + 0.01 * (cell["model.norm"] == "none") + 0.002 * seed + (
      0.001 * wobble)


def _norm_effect(seeds):
  """The main effect of norm=none in points, paired per seed by hand."""
  per_seed = [sum(_effect({"model.norm": "none", "model.pool": p}, s) -
                  _effect({"model.norm": "lrn", "model.pool": p}, s)
                  for p in ("overlap", "nonoverlap")) / 2 for s in seeds]
  return 100 * sum(per_seed) / len(seeds)


def _write(results, record):
  runs = results / "runs"
  runs.mkdir(parents=True, exist_ok=True)
  name = "_".join(f"{k}-{v}" for k, v in record["cell"].items())
  (runs / f"{name}__seed{record['seed']}.json").write_text(json.dumps(record))


def test_the_report_builds_from_old_style_runs(tmp_path):
  for combo in itertools.product(*[v for _, v in AXES]):
    cell = dict(zip([f for f, _ in AXES], combo))
    for seed in range(3):
      _write(tmp_path, _old_record(cell, seed, _effect(cell, seed)))
  report = sweep_report.build(str(tmp_path))
  assert report["eval_splits"] == ["test"] and report["old_style_runs"] == 12
  assert report["seeds_complete"] == [0, 1, 2]
  main = report["comparisons"][0]
  assert main["mean"] == pytest.approx(_norm_effect(range(3)))
  assert main["text"].startswith(
      f"norm=none - norm=lrn, averaged over pool: {main['mean']:+.2f} points "
      "error on the test split used as eval split (95% CI")
  # Training error 30% and 20% in epochs 1 and 2 (midpoints 0.5 and 1.5):
  # 25% at epoch 1.0; the final training error is the last epoch's.
  assert report["cells"][0]["epochs_to_25pct_train_error"] == pytest.approx(
      [1.0] * 3)
  assert report["cells"][0]["final_train_error"][0] == pytest.approx(20.0)
  sweep_report.write(report, str(tmp_path))
  md = (tmp_path / "results.md").read_text()
  assert "With n = 3 seeds per cell this is a screen" in md
  assert "no separate test number exists" in md
  assert "evaluated on the test split at every epoch" in md
  assert "## Test split" not in md
  for name in ("curves.png", "train_curves.png", "bars.png"):
    assert (tmp_path / name).stat().st_size > 0


def test_the_report_builds_from_new_style_runs(tmp_path):
  workdir = tmp_path / "work"
  results = tmp_path / "results"
  for combo in itertools.product(*[v for _, v in AXES]):
    cell = dict(zip([f for f, _ in AXES], combo))
    for seed in range(5):
      if seed == 4 and combo == ("none", "nonoverlap"):
        continue  # Not run yet: seed 4 is left out of the paired analysis.
      err = _effect(cell, seed)
      run = write_workdir(workdir / f"{combo}{seed}", val=(0.5, err),
                          test=err + 0.005, lrn=combo[0] == "lrn")
      _write(results, _record(cell, seed, **summary.summarize(str(run))))
  report = sweep_report.build(str(results))
  assert report["seeds_complete"] == [0, 1, 2, 3]
  assert report["seeds_left_out"] == [4]
  assert report["missing"] == ["model.norm=none, model.pool=nonoverlap seed 4"]
  assert report["eval_splits"] == ["holdout"]
  main = report["comparisons"][0]
  assert main["n"] == 4 and main["mean"] == pytest.approx(
      _norm_effect(range(4)))
  assert "Holm p = " in main["text"] and "paired over 4 seeds" in main["text"]
  cell = report["cells"][0]
  assert len(cell["seeds"]) == 5
  assert cell["test_top1"][0] == pytest.approx(cell["val_mean"] + 0.5)
  assert cell["final_train_error"][0] == pytest.approx(17.6)
  assert cell["epochs_to_25pct_train_error"] == pytest.approx([1.2125] * 5)
  assert cell["lrn_final"]["conv1"]["spread"] == pytest.approx(0.02)
  assert report["cells"][2]["lrn_final"] == {}
  terms = [t["source"] for t in report["anova"]["terms"]]
  assert terms[:3] == ["model.norm", "model.pool", "model.norm x model.pool"]
  # The report survives JSON as it is (no NaN, no tuples).
  assert json.loads(json.dumps(report)) == report
  sweep_report.write(report, str(results))
  md = (results / "results.md").read_text()
  assert "## Test split (evaluated once at the end of training)" in md
  assert "left out: 1 seeds incomplete (4)" in md
  assert "| model.norm=lrn, model.pool=overlap | conv1 | 0.02 |" in md
  simple = report["comparisons"][1]
  assert (f"norm=none - norm=lrn at pool=overlap: {simple['mean']:+.2f} "
          "points validation error (95% CI") in md
  assert "Holm over all 6 contrasts listed" in md
  # The gap and test families follow, each with its own Holm family.
  gap, test = report["secondary_effects"]
  assert (gap["metric"], test["metric"]) == ("gap", "test")
  assert test["comparisons"][0]["mean"] == pytest.approx(
      _norm_effect(range(4)))
  assert "on the final train/validation gap:" in md
  assert "points test top-1 error (95% CI" in md


def test_the_gap_family_pairs_the_gap_not_the_validation_error():
  cells = [{"a": "x"}, {"a": "y"}]
  gaps = {"x": [1.0, 2.0, 3.0], "y": [2.0, 4.0, 3.0]}  # diffs 1, 2, 0
  views = [{"cell": c, "seed": s, "val": 30.0, "test": None,
            "gap": gaps[c["a"]][s]} for c in cells for s in range(3)]
  fams = sweep_effects.secondary(views, cells, [("a", ["x", "y"])],
                                 [0, 1, 2])
  assert [f["metric"] for f in fams] == ["gap"]  # No test numbers: no family.
  (c,) = fams[0]["comparisons"]
  half = sps.t.ppf(0.975, 2) * 1 / np.sqrt(3)  # sd 1 over 3 seeds
  assert c["mean"] == pytest.approx(1.0) and c["df"] == 2
  assert c["ci"] == pytest.approx([1 - half, 1 + half])
  assert c["p_holm"] == pytest.approx(c["p"])  # A family of one.
  assert c["text"].startswith("a=y - a=x: +1.00 points train/validation gap")
  assert sweep_effects.effects(views, cells, [("a", ["x", "y"])], [0, 1, 2],
                               "val", "v")["comparisons"][0]["mean"] == 0


def test_a_diverged_run_is_listed_and_left_out_of_the_numbers(tmp_path):
  for combo in itertools.product(*[v for _, v in AXES]):
    cell = dict(zip([f for f, _ in AXES], combo))
    for seed in range(3):
      _write(tmp_path, _old_record(cell, seed, _effect(cell, seed)))
  cell = {"model.norm": "none", "model.pool": "overlap"}
  _write(tmp_path, {**_record(cell, 3), "epochs": [], "diverged": True})
  report = sweep_report.build(str(tmp_path))
  assert report["diverged"] == [{"cell": cell, "seed": 3}]
  assert report["seeds_complete"] == [0, 1, 2]
  assert "Diverged (a non-finite training loss" in sweep_report.to_markdown(
      report)


def test_an_option_axis_keeps_its_values_as_strings():
  from experiments import ablation
  axes = ablation.parse_axes(("option=11pct,cpu|13pct,cpu",
                              "optim.learning_rate=0.001|0.002"))
  assert axes == [("option", ["11pct,cpu", "13pct,cpu"]),
                  ("optim.learning_rate", [0.001, 0.002])]
  assert ablation.cell_name({"option": "13pct,cpu"}) == "option-13pct,cpu"
  with pytest.raises(ValueError, match="option=a"):
    ablation.parse_axes(("nodot=1|2",))


def test_training_time_is_the_steps_at_the_median_rate_not_the_wall_time():
  """A run resumed after a pause: its wall time and a paused window's rate
  count the pause; steps x batch / the median rate does not."""

  run = {"steps": 100, "config": {"batch_size": 64},
         "images_per_sec_median": 320.0, "wall_seconds": 9999.0}
  assert summary._training_seconds(run) == 20.0
  assert summary._training_seconds({"wall_seconds": 5.0, "steps": 3}) == 5.0
