"""A sweep's effects on one per-run number, with the seed as a block.

experiments/sweep_report.py asks for three families, each its own Holm
family, on the seeds complete in every cell:

  val   the final validation top-1 error: the primary family (what the
        ablation is for; the blocked ANOVA is on it)
  gap   the train/validation gap (validation error minus the final running
        training error): the paper's overfitting claims are about it
  test  the test top-1 error, read once at the end of every run

For every axis each value is compared with the reference (first) value as
a paired difference per seed, averaged over the other axes (main effect)
and at each of their levels (simple effects): experiments/stats.py.
"""

from __future__ import annotations

import numpy as np

from experiments import stats

# metric key in summary.record_view -> words for it in the report.
SECONDARY = (("gap", "train/validation gap"), ("test", "test top-1 error"),
             ("multiview", "top-1 error on the 10-view test "
              "(experiments/multiview.py)"))


def cell_key(cell: dict) -> str:
  """A cell as text: "model.norm=lrn, model.pool=overlap"."""
  return ", ".join(f"{k}={v}" for k, v in cell.items())


def short_names(axes) -> dict:
  """model.norm -> norm, unless two axes end in the same name."""
  tails = [f.split(".")[-1] for f, _ in axes]
  return {f: (t if tails.count(t) == 1 else f)
          for (f, _), t in zip(axes, tails)}


def p_text(p, relation: str = "") -> str:
  """0.017 (or "= 0.017" with relation "= "), "< 0.001" for small p."""
  return "-" if p is None else ("< 0.001" if p < 0.001 else
                                f"{relation}{p:.2g}")


def words(c: dict, short: dict, error: str) -> str:
  """norm=none - norm=lrn, averaged over pool: +0.76 points validation
  error (95% CI +0.2 to +1.3, paired over 5 seeds, ..., Holm p = 0.03)."""
  f = short[c["field"]]
  if c["context"] is None:
    where = ("" if not c["averaged_over"] else ", averaged over " +
             ", ".join(short[k] for k in c["averaged_over"]))
  else:
    where = " at " + ", ".join(f"{short[k]}={v}" for k, v in
                               c["context"].items())
  head = (f"{f}={c['value']} - {f}={c['reference']}{where}: "
          f"{c['mean']:+.2f} points {error}")
  if c["n"] < 2:
    return f"{head} (one seed: no interval, no test)"
  lo, hi = c["ci"]
  test = (f"t({c['df']}) = {c['t']:.2f}, p {p_text(c['p'], '= ')}, Holm p "
          f"{p_text(c['p_holm'], '= ')}" if c["p"] is not None else
          "every seed gives the same difference, no test")
  boot = ("" if "bootstrap_ci" not in c else
          "; seed-bootstrap 95% CI {:+.2f} to {:+.2f}".format(
              *c["bootstrap_ci"]))
  return (f"{head} (95% CI {lo:+.2f} to {hi:+.2f}, paired over {c['n']} "
          f"seeds, {test}{boot})")


def effects(views: list[dict], grid: list[dict], axes, seeds: list,
            metric: str, error: str, anova: bool = True) -> dict | None:
  """The family of contrasts of `metric` (a record_view key, in points)
  over `seeds`; None where a run of those seeds lacks the number."""
  value = {(cell_key(v["cell"]), v["seed"]): v.get(metric) for v in views}
  y = [value.get((cell_key(c), s)) for s in seeds for c in grid]
  if not seeds or any(x is None for x in y):
    return None
  y = np.array(y, dtype=float).reshape(
      [len(seeds)] + [len(vals) for _, vals in axes])
  names = [f for f, _ in axes]
  comps = stats.contrasts(y, [vals for _, vals in axes], names)
  short = short_names(axes)
  for c in comps:
    c["text"] = words(c, short, error)
  return {
      "metric": metric, "error": error, "comparisons": comps,
      "family": (f"Holm over all {len(comps)} contrasts listed (every axis; "
                 "main effects" + (" and simple effects" if len(axes) > 1
                                   else "") + f"), on the final {error}"),
      "anova": (stats.blocked_anova(y, names, [seeds] + [
          vals for _, vals in axes]) if anova else None)}


def secondary(views, grid, axes, seeds) -> list[dict]:
  """The gap, test and 10-view families (each its own Holm family), where
  every run of the complete seeds has the number."""
  out = [effects(views, grid, axes, seeds, m, e, anova=False)
         for m, e in SECONDARY]
  return [f for f in out if f is not None]


def to_markdown(families: list[dict]) -> list[str]:
  """The secondary families' section of results.md."""
  if not families:
    return []
  lines = ["", "## Effects on the gap and on the test split (paired over "
           "seeds)", "",
           "The same paired contrasts on the train/validation gap (the "
           "paper's overfitting claims are about it: a positive difference "
           "overfits more) and on the test error read once at the end"
           + (", and on the eval split's error on cuda-convnet's 10-view "
              "test (experiments/multiview.py: the last checkpoint, softmax "
              "averaged over the corner and centre crops and their mirrors)"
              if any(f["metric"] == "multiview" for f in families) else "")
           + ". Each metric is its own Holm family, apart from the primary "
           "one above."]
  for fam in families:
    lines += ["", f"{fam['family'][0].upper()}{fam['family'][1:]}:", ""]
    lines += [f"- {c['text']}." for c in fam["comparisons"]]
  return lines
