"""The table of experiments/gpu_check.sh, from the files it wrote.

  python experiments/gpu_table.py experiments/results/gpu

One markdown table per part: each step's exit code and seconds; the
benchmark rows (images/s, ms/step, MFU against the matmul peak in the
step's dtype); the input pipeline next to the train step at the same
batch (which one limits); the meshes. A step that failed is listed with
its last error line, never left out.
"""

import json
import pathlib
import sys


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
    dtype = "bfloat16" if r["half_precision"] else "float32"
    mesh = name.split("_mesh_")[1] if "_mesh_" in name else "1 device"
    if r["what"] == "train" and "_mesh_" not in name:
      train_rate[r["batch"]] = max(train_rate.get(r["batch"], 0),
                                   row["images_per_s"])
    lines.append(
        f"| {r['what']} | {r['batch']} | {dtype} | {mesh} | "
        f"{row['images_per_s']:.0f} | {row['ms_per_step']:.2f} | "
        f"{row['gflops'] / 1e3:.2f} | {row['pct_peak']:.0f}% | "
        f"{r['matmul_peak_gflops'] / 1e3:.1f} |")

  rows = _json(out / "input_jpeg.txt") or []
  if rows:
    lines += ["", "| input | batch | pipeline images/s | train step images/s "
              "(best dtype) | limit |", "|---|---|---|---|---|"]
    for r in rows:
      step = train_rate.get(r["batch_size"])
      limit = ("?" if not step else "input pipeline"
               if r["pipeline_images_per_sec"] < step else "train step")
      lines.append(f"| {r['data']} | {r['batch_size']} | "
                   f"{r['pipeline_images_per_sec']:.0f} | "
                   f"{f'{step:.0f}' if step else '-'} | {limit} |")
  comm = out / "comm_model2.txt"
  if comm.exists() and comm.read_text().strip():
    lines += ["", "--mode=comm on the model=2 mesh:", "", "```",
              comm.read_text().rstrip(), "```"]
  return "\n".join(lines)


if __name__ == "__main__":
  print(table(sys.argv[1] if len(sys.argv) > 1 else
              "experiments/results/gpu"))
