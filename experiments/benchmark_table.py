"""Runs the benchmark rows of experiments/results/benchmark.md.

  python experiments/benchmark_table.py --out=experiments/results/cpu.jsonl
  python experiments/benchmark_table.py --table_only --out=...  # reprint

One `python -m alexnet_jax.benchmark ... --compare-torch --torch_lrn=both
--json` process per row (paper and CIFAR models, train and eval, batch 16,
64, 128), one after another; each JSON result is appended to --out as it
arrives, and the Markdown table of all rows in --out is printed at the end.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from absl import app
from absl import flags

FLAGS = flags.FLAGS
flags.DEFINE_string("out", "experiments/results/cpu.jsonl",
                    "JSON lines file to append results to.")
flags.DEFINE_bool("table_only", False, "Only print the table of --out.")
flags.DEFINE_list("models", ["paper", "cifar_w1", "cifar_w0.5"],
                  "Which models.")
flags.DEFINE_list("what", ["train", "eval"], "Which steps.")
flags.DEFINE_list("batches", ["16", "64", "128"], "Batch sizes.")

MODELS = {
    "paper": [],
    "cifar_w1": ["--config=configs/cifar10.py", "--config.model.width=1.0"],
    "cifar_w0.5": ["--config=configs/cifar10.py"],
}
NAMES = {"paper": "paper 227", "cifar_w1": "CIFAR w1", "cifar_w0.5":
         "CIFAR w0.5"}


def run_row(model: str, what: str, batch: int) -> dict | None:
  cmd = [sys.executable, "-m", "alexnet_jax.benchmark", f"--what={what}",
         f"--batch={batch}", "--compare-torch", "--torch_lrn=both", "--json",
         *MODELS[model]]
  print(" ".join(cmd[1:]), file=sys.stderr, flush=True)
  proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
  if proc.returncode:
    print(proc.stderr[-2000:], file=sys.stderr)
    return None
  result = json.loads(proc.stdout)
  result["row"] = {"model": model, "what": what, "batch": batch}
  return result


def table(results: list[dict]) -> str:
  lines = [
      "| model | step | batch | JAX img/s | torch img/s (slices LRN) | "
      "torch img/s (nn LRN) | JAX/torch | JAX/torch (nn LRN) | JAX % peak "
      "| peak GFLOP/s | load |",
      "|---|---|---|---|---|---|---|---|---|---|---|"]
  for r in results:
    rows, row = r["rows"], r["row"]
    lines.append(
        f"| {NAMES[row['model']]} | {row['what']} | {row['batch']} | "
        f"{rows['jax']['images_per_s']:.1f} | "
        f"{rows['torch']['images_per_s']:.1f} | "
        f"{rows['torch_module']['images_per_s']:.1f} | "
        f"**{r['ratio_jax_over_torch']:.2f}x** | "
        f"{r['ratio_jax_over_torch_module']:.2f}x | "
        f"{rows['jax']['pct_peak']:.0f}% | {r['matmul_peak_gflops']:.0f} | "
        f"{r['machine']['load_avg'][0]:.1f} |")
  return "\n".join(lines)


def main(argv):
  del argv
  if not FLAGS.table_only:
    os.makedirs(os.path.dirname(FLAGS.out) or ".", exist_ok=True)
    for model in FLAGS.models:
      for what in FLAGS.what:
        for batch in FLAGS.batches:
          result = run_row(model, what, int(batch))
          if result is not None:
            with open(FLAGS.out, "a") as f:
              f.write(json.dumps(result) + "\n")
  with open(FLAGS.out) as f:
    print(table([json.loads(line) for line in f if line.strip()]))


if __name__ == "__main__":
  app.run(main)
