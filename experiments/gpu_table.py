"""The table of experiments/gpu_check.sh, from the files it wrote.

  python experiments/gpu_table.py experiments/results/gpu

One markdown table per part: each step's exit code and seconds; the
benchmark rows (images/s, ms/step, MFU against the matmul peak in the
step's dtype); the input pipeline next to the train step at the same
batch (which one limits); the meshes; whether the paper's init left
chance (paper_init.jsonl: the first step at which the 100-step mean
training loss is 10% below ln(num_classes)). A step that failed is listed
with its last error line, never left out.

  python experiments/gpu_table.py --chance METRICS.jsonl [--classes=10]

prints that step for any run's metrics.jsonl.
"""

import json
import math
import pathlib
import sys

# The paper-init run of gpu_check.sh: CIFAR-10, 100-step means.
CHANCE_CLASSES, CHANCE_WINDOW, CHANCE_FRACTION = 10, 100, 0.9


def _json(path: pathlib.Path):
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError):
    return None


def _last_error(out: pathlib.Path, name: str) -> str:
  err = out / f"{name}.err"
  lines = [l for l in (err.read_text().splitlines() if err.exists() else [])
           if l.strip()]
  return lines[-1][:160] if lines else ""


def train_losses(path) -> list[tuple[int, float]]:
  """(step, train_loss) rows of a metrics.jsonl, by step (a step logged
  twice, as after a resume, keeps its last row)."""
  rows = {}
  for line in pathlib.Path(path).read_text().splitlines():
    row = json.loads(line) if line.strip() else {}
    if "train_loss" in row:
      rows[int(row["step"])] = float(row["train_loss"])
  return sorted(rows.items())


def window_means(rows, window: int) -> list[tuple[int, float]]:
  """(step, mean training loss over the `window` steps up to it) at each
  logged step with a full window behind it. A row is the mean over the
  steps since the previous row, so each counts for the steps of its own
  interval that fall in the window."""
  out = []
  for i, (step, _) in enumerate(rows):
    if step < window:
      continue
    total = weight = 0.0
    for j in range(i, -1, -1):
      end, start = rows[j][0], rows[j - 1][0] if j else 0
      overlap = min(end, step) - max(start, step - window)
      if overlap <= 0:
        break
      total += overlap * rows[j][1]
      weight += overlap
    out.append((step, total / weight))
  return out


def first_below_chance(path, num_classes: int = CHANCE_CLASSES,
                       window: int = CHANCE_WINDOW,
                       fraction: float = CHANCE_FRACTION) -> dict:
  """The first step whose `window`-step mean training loss is below
  fraction x ln(num_classes) (None: never), with the threshold, the last
  step and the last window mean."""
  rows = train_losses(path)
  means = window_means(rows, window)
  threshold = fraction * math.log(num_classes)
  step = next((s for s, m in means if m < threshold), None)
  return {"step": step, "threshold": threshold, "window": window,
          "under": f"{1 - fraction:.0%} under ln {num_classes}",
          "last_step": rows[-1][0] if rows else 0,
          "last_mean": means[-1][1] if means else None}


def chance_line(path, **kwargs) -> str:
  """first_below_chance as one sentence."""
  r = first_below_chance(path, **kwargs)
  below = f"below {r['threshold']:.3f} ({r['under']})"
  if r["step"] is not None:
    return (f"the {r['window']}-step mean training loss first fell {below} "
            f"at step {r['step']}")
  last = ("no full window" if r["last_mean"] is None else
          f"last {r['window']}-step mean {r['last_mean']:.3f}")
  return (f"the {r['window']}-step mean training loss did not fall {below} "
          f"within {r['last_step']} steps ({last})")


def table(out) -> str:
  out = pathlib.Path(out)
  steps = [json.loads(l) for l in (out / "steps.jsonl").read_text()
           .splitlines() if l.strip()]
  devices = (out / "devices.txt").read_text().strip() if (
      out / "devices.txt").exists() else "?"
  lines = [f"# GPU check ({devices})", "", "| step | exit | s | note |",
           "|---|---|---|---|"]
  for s in steps:
    note = "" if s["exit"] == 0 else _last_error(out, s["name"])
    lines.append(f"| {s['name']} | {s['exit']} | {s['seconds']} | {note} |")

  bench = {s["name"]: _json(out / f"{s['name']}.txt") for s in steps
           if s["name"].startswith("bench_") and s["exit"] == 0}
  lines += ["", "| step | batch | dtype | mesh | images/s | ms/step | "
            "TFLOP/s | MFU | peak TFLOP/s |", "|---|---|---|---|---|---|---|"
            "---|---|"]
  train_rate = {}
  for name, r in bench.items():
    if not r:
      continue
    row = r["rows"]["jax"]
    # The dtype precision.py chose (older results: bfloat16 when half).
    dtype = r.get("dtype") or ("bfloat16" if r["half_precision"] else
                               "float32")
    mesh = name.split("_mesh_")[1] if "_mesh_" in name else "1 device"
    if r["what"] == "train" and "_mesh_" not in name:
      train_rate[r["batch"]] = max(train_rate.get(r["batch"], 0),
                                   row["images_per_s"])
    lines.append(
        f"| {r['what']} | {r['batch']} | {dtype} | {mesh} | "
        f"{row['images_per_s']:.0f} | {row['ms_per_step']:.2f} | "
        f"{row['gflops'] / 1e3:.2f} | {row['pct_peak']:.0f}% | "
        f"{r['matmul_peak_gflops'] / 1e3:.1f} |")

  # The JPEG folder, then the prepared shards on tf.data (float or uint8
  # batches) and with DALI.
  rows = [(name, r) for name in ("input_jpeg", "input_prepared",
                                  "input_prepared_uint8", "input_dali")
          for r in (_json(out / f"{name}.txt") or [])]
  if rows:
    lines += ["", "| input | batch | pipeline images/s | train step images/s "
              "(best dtype) | limit |", "|---|---|---|---|---|"]
    for name, r in rows:
      step = train_rate.get(r["batch_size"])
      limit = ("?" if not step else "input pipeline"
               if r["pipeline_images_per_sec"] < step else "train step")
      lines.append(f"| {name}: {r['data']} | {r['batch_size']} | "
                   f"{r['pipeline_images_per_sec']:.0f} | "
                   f"{f'{step:.0f}' if step else '-'} | {limit} |")
  paper = out / "paper_init.jsonl"
  if paper.exists():
    evals = [json.loads(l) for l in paper.read_text().splitlines()
             if "eval_top1_error" in l]
    last = (f"; test top-1 error {evals[-1]['eval_top1_error']:.3f} at step "
            f"{evals[-1]['step']}" if evals else "")
    lines += ["", f"Paper init ({_text(out / 'paper_init_run.txt')}): "
              f"{chance_line(paper)}{last}."]
  comm = out / "comm_model2.txt"
  if comm.exists() and comm.read_text().strip():
    lines += ["", "--mode=comm on the model=2 mesh:", "", "```",
              comm.read_text().rstrip(), "```"]
  return "\n".join(lines)


def _text(path: pathlib.Path) -> str:
  """The first line of a small note the check wrote ('' if none)."""
  lines = path.read_text().splitlines() if path.exists() else []
  return lines[0].strip() if lines else ""


if __name__ == "__main__":
  args = sys.argv[1:]
  if args and args[0] == "--chance":
    classes = [a.split("=", 1)[1] for a in args[2:]
               if a.startswith("--classes=")]
    print(chance_line(args[1], num_classes=int(classes[0]) if classes
                      else CHANCE_CLASSES))
  else:
    print(table(args[0] if args else "experiments/results/gpu"))
