"""Statistics for a sweep whose seeds are blocks.

A sweep runs every cell (one value of each axis) with the same seeds, and a
seed fixes the initialisation, the data order and the dropout draws in every
cell. A seed is therefore a block: cells are compared within a seed (paired
differences) and the seed-to-seed variation is taken out of the error term
(a two-way ANOVA with an additive block factor). Pure python, numpy and
scipy.stats; no JAX.

  paired_t(a, b)        b - a over matched seeds: mean, sd, se, t, p, 95% CI
  holm(p)               Holm-Bonferroni adjusted p-values
  blocked_anova(data)   factorial ANOVA (all interactions) + block factor
  contrasts(y, levels)  each non-reference value against the reference:
                        main effects and simple effects, paired over seeds
  bootstrap_ci(d)       percentile CI of a mean, resampling seeds
"""

from __future__ import annotations

import itertools
import math
import statistics

import numpy as np
from scipy import stats as sps


def mean_std(values) -> tuple[float, float]:
  """Mean and sample standard deviation (n - 1); std 0 for one value."""
  values = [float(v) for v in values]
  m = statistics.fmean(values)
  return m, (statistics.stdev(values) if len(values) > 1 else 0.0)


def t_ci(values, level: float = 0.95) -> tuple[float, float | None,
                                               float | None]:
  """Mean and its t confidence interval over the values (None for n < 2)."""
  m, s = mean_std(values)
  n = len(values)
  if n < 2:
    return m, None, None
  h = float(sps.t.ppf(0.5 + level / 2, n - 1)) * s / math.sqrt(n)
  return m, m - h, m + h


def _finite(x) -> float | None:
  x = float(x)
  return x if math.isfinite(x) else None


def paired_t(a, b, level: float = 0.95) -> dict:
  """The paired t-test of b - a (a[i] and b[i] from the same seed): n, the
  differences, their mean, sd and standard error, t, df, the two-sided p
  and the t confidence interval. t, p and the interval are None for fewer
  than two pairs; t and p also when every difference is the same."""
  if len(a) != len(b):
    raise ValueError(f"paired_t: {len(a)} and {len(b)} values; pairs needed")
  d = [float(y) - float(x) for x, y in zip(a, b)]
  n = len(d)
  out = {"n": n, "diffs": d, "mean": statistics.fmean(d) if d else None,
         "sd": None, "se": None, "t": None, "df": n - 1, "p": None,
         "ci": [None, None]}
  if n < 2:
    return out
  m, sd = mean_std(d)
  se = sd / math.sqrt(n)
  _, lo, hi = t_ci(d, level)
  out.update(sd=sd, se=se, ci=[lo, hi])
  if se > 0:
    t = m / se
    out.update(t=t, p=float(2 * sps.t.sf(abs(t), n - 1)))
  return out


def holm(pvalues) -> list[float | None]:
  """Holm-Bonferroni adjusted p-values, in the order given: the i-th
  smallest of m is multiplied by m - i (i from 0), made non-decreasing in
  that order and capped at 1. None entries stay None and do not count."""
  idx = sorted((i for i, p in enumerate(pvalues) if p is not None),
               key=lambda i: pvalues[i])
  m, out, running = len(idx), [None] * len(pvalues), 0.0
  for rank, i in enumerate(idx):
    running = max(running, min(1.0, (m - rank) * pvalues[i]))
    out[i] = running
  return out


def bootstrap_ci(diffs, n_boot: int = 10000, level: float = 0.95,
                 seed: int = 0) -> list[float]:
  """Percentile interval of the mean of per-seed values, resampling seeds
  with replacement (a fixed generator, so a report rebuilds identically)."""
  d = np.asarray(diffs, dtype=float)
  rng = np.random.default_rng(seed)
  means = d[rng.integers(0, len(d), size=(n_boot, len(d)))].mean(axis=1)
  q = np.quantile(means, [0.5 - level / 2, 0.5 + level / 2])
  return [float(q[0]), float(q[1])]


def to_array(data) -> tuple[np.ndarray, list[list]]:
  """(y, levels): y[seed, level of factor 1, ...] from a nested dict
  {seed: {a: {b: value}}} or a long table of (seed, a, b, ..., value) rows,
  and the levels of the seeds and of each factor in first-seen order. A
  ValueError names the first missing or repeated combination."""
  if isinstance(data, np.ndarray):
    return data.astype(float), [list(range(n)) for n in data.shape]
  if isinstance(data, dict):
    rows = []
    def walk(node, path):
      if isinstance(node, dict):
        for k, v in node.items():
          walk(v, path + (k,))
      else:
        rows.append(path + (node,))
    walk(data, ())
  else:
    rows = [tuple(r) for r in data]
  if not rows or len({len(r) for r in rows}) != 1 or len(rows[0]) < 3:
    raise ValueError("blocked design: want rows of (seed, factor level(s),"
                     " value) of one length")
  k = len(rows[0]) - 1
  levels = [list(dict.fromkeys(r[i] for r in rows)) for i in range(k)]
  y = np.full([len(l) for l in levels], np.nan)
  for r in rows:
    at = tuple(levels[i].index(r[i]) for i in range(k))
    if not np.isnan(y[at]):
      raise ValueError(f"blocked design: {r[:-1]} given twice")
    y[at] = float(r[-1])
  if np.isnan(y).any():
    at = tuple(int(i[0]) for i in np.nonzero(np.isnan(y)))
    missing = tuple(levels[i][j] for i, j in enumerate(at))
    raise ValueError(f"unbalanced design: no value for seed {missing[0]!r}"
                     f" in cell {missing[1:]!r} (use the seeds complete in "
                     f"every cell)")
  return y, levels


def blocked_anova(data, names=None, levels=None) -> dict:
  """Factorial ANOVA with seeds as an additive block factor: one value per
  seed and cell, every factor interaction, no block interactions (they are
  the residual). data: see to_array (seed first); `levels` names an
  array's seeds and factor levels (default: indices). Returns the levels and
  "terms", one row per source (each factor, each interaction "A x B", then
  "blocks", "residual", "total") with ss, df, ms, F and p (F and p for the
  treatment terms and blocks, when the residual has df > 0 and ms > 0).

  Sums of squares, with r seeds and cell means over seeds m: a term's
  effect is the inclusion-exclusion of the marginal means of its factors
  (A: m_i.. - m...; A x B: m_ij. - m_i.. - m_.j. + m...), SS = r * the sum
  of its squares over all cells; blocks: (cells) * sum (seed mean - grand
  mean)^2; residual: total - everything else.
  """
  y, found = to_array(data)
  levels = levels or found
  k = y.ndim - 1
  names = list(names) if names else [chr(ord("A") + i) for i in range(k)]
  if len(names) != k:
    raise ValueError(f"blocked_anova: {k} factors but names {names}")
  r, cells = y.shape[0], int(np.prod(y.shape[1:]))
  grand = y.mean()
  m = y.mean(axis=0)
  terms = []
  for size in range(1, k + 1):
    for subset in itertools.combinations(range(k), size):
      effect = np.zeros_like(m)
      for t in range(len(subset) + 1):
        for keep in itertools.combinations(subset, t):
          drop = tuple(i for i in range(k) if i not in keep)
          marg = m.mean(axis=drop, keepdims=True) if drop else m
          effect = effect + (-1) ** (size - t) * marg
      df = int(np.prod([y.shape[i + 1] - 1 for i in subset]))
      terms.append({"source": " x ".join(names[i] for i in subset),
                    "ss": float(r * np.sum(effect ** 2)), "df": df})
  blocks = float(cells * np.sum((y.reshape(r, -1).mean(axis=1) - grand) ** 2))
  terms.append({"source": "blocks", "ss": blocks, "df": r - 1})
  total = float(np.sum((y - grand) ** 2))
  res_df = (r - 1) * (cells - 1)
  res_ss = max(0.0, total - sum(t["ss"] for t in terms))
  res_ms = res_ss / res_df if res_df > 0 else None
  for t in terms:
    t["ms"] = t["ss"] / t["df"] if t["df"] > 0 else None
    ok = res_ms and t["ms"] is not None
    t["F"] = _finite(t["ms"] / res_ms) if ok else None
    t["p"] = (_finite(sps.f.sf(t["F"], t["df"], res_df))
              if t["F"] is not None else None)
  terms.append({"source": "residual", "ss": res_ss, "df": res_df,
                "ms": res_ms, "F": None, "p": None})
  terms.append({"source": "total", "ss": total, "df": r * cells - 1,
                "ms": None, "F": None, "p": None})
  return {"names": names, "seeds": levels[0], "levels": levels[1:],
          "terms": terms}


def contrasts(y: np.ndarray, levels: list[list], names: list[str],
              bootstrap_from: int = 5) -> list[dict]:
  """Each non-reference value of each factor against the factor's first
  (reference) value, on y[seed, level, level, ...]: the main effect (per
  seed, the mean over the other factors' levels, then paired) and, with
  more than one factor, the simple effect at each combination of the other
  factors' levels. With at least `bootstrap_from` seeds a seed-bootstrap
  interval is added. Holm-adjusted p-values ("p_holm") over all of them."""
  out = []
  k = len(names)
  for f in range(k):
    others = [i for i in range(k) if i != f]
    for j in range(1, len(levels[f])):
      ref, val = np.take(y, 0, axis=f + 1), np.take(y, j, axis=f + 1)
      groups = [(None, ref.reshape(len(y), -1).mean(axis=1),
                 val.reshape(len(y), -1).mean(axis=1))]
      if others:
        for at in itertools.product(*[range(len(levels[i])) for i in others]):
          idx = (slice(None),) + at
          groups.append(({names[i]: levels[i][a] for i, a in zip(others, at)},
                         ref[idx], val[idx]))
      for context, a, b in groups:
        test = paired_t(list(a), list(b))
        if len(a) >= bootstrap_from:
          test["bootstrap_ci"] = bootstrap_ci(test["diffs"])
        out.append({"field": names[f], "reference": levels[f][0],
                    "value": levels[f][j], "context": context,
                    "averaged_over": ({names[i]: levels[i] for i in others}
                                      if context is None else {}), **test})
  for c, p in zip(out, holm([c["p"] for c in out])):
    c["p_holm"] = p
  return out
