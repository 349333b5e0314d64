"""Runs the benchmark rows of experiments/results/benchmark.md.

  python experiments/benchmark_table.py --out=experiments/results/cpu.jsonl
  python experiments/benchmark_table.py --table_only --out=...  # reprint

One `python -m alexnet_jax.benchmark ... --compare-torch --json` process
per row (paper and CIFAR models, train and eval, batch 16, 64, 128), one
after another, with the PyTorch peers of --torch_peers (eager,
channels-last, torch.compile by default); each JSON result is appended to
--out as it arrives, and the Markdown table of all rows in --out is printed
at the end. The table's ratio is against the fastest peer of each row;
rows from older runs (slices and nn.LRN eager peers only) print too.
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
flags.DEFINE_list("torch_peers", ["eager", "channels_last", "compile"],
                  "The benchmark's --torch_peers.")

MODELS = {
    "paper": [],
    "cifar_w1": ["--config=configs/cifar10.py", "--config.model.width=1.0"],
    "cifar_w0.5": ["--config=configs/cifar10.py"],
}
NAMES = {"paper": "paper 227", "cifar_w1": "CIFAR w1", "cifar_w0.5":
         "CIFAR w0.5"}


def run_row(model: str, what: str, batch: int) -> dict | None:
  cmd = [sys.executable, "-m", "alexnet_jax.benchmark", f"--what={what}",
         f"--batch={batch}", "--compare-torch",
         f"--torch_peers={','.join(FLAGS.torch_peers)}", "--json",
         *MODELS[model]]
  print(" ".join(cmd[1:]), file=sys.stderr, flush=True)
  proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
  if proc.returncode:
    print(proc.stderr[-2000:], file=sys.stderr)
    return None
  result = json.loads(proc.stdout)
  result["row"] = {"model": model, "what": what, "batch": batch}
  return result


PEER_COLUMNS = (("torch", "eager"), ("torch_channels_last", "channels-last"),
                ("torch_compile", "compile"), ("torch_module", "nn LRN"))


def table(results: list[dict]) -> str:
  lines = [
      "| model | step | batch | JAX img/s | "
      + " | ".join(f"torch {label} img/s" for _, label in PEER_COLUMNS)
      + " | fastest peer | JAX/fastest | JAX % peak | peak GFLOP/s | load |",
      "|---|---|---|---|" + "---|" * len(PEER_COLUMNS) + "---|---|---|---|---|"]
  for r in results:
    rows, row = r["rows"], r["row"]
    peers = [n for n, _ in PEER_COLUMNS if n in rows]
    fastest = max(peers, key=lambda n: rows[n]["images_per_s"])
    label = dict(PEER_COLUMNS)[fastest]
    rates = " | ".join(f"{rows[n]['images_per_s']:.1f}" if n in rows else "-"
                       for n, _ in PEER_COLUMNS)
    ratio = rows["jax"]["images_per_s"] / rows[fastest]["images_per_s"]
    lines.append(
        f"| {NAMES[row['model']]} | {row['what']} | {row['batch']} | "
        f"{rows['jax']['images_per_s']:.1f} | {rates} | {label} | "
        f"**{ratio:.2f}x** | "
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
