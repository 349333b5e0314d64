#!/usr/bin/env bash
# The issue's target rows with the stronger PyTorch peers, one after another.
set -u
cd "$(dirname "$0")/../.."
OUT=experiments/results/cpu_peers.jsonl
lscpu > experiments/results/cpu_peers_lscpu.txt
date -u +"start %FT%TZ" > /tmp/cpu_peers_bench.times; uptime >> /tmp/cpu_peers_bench.times
.venv/bin/python experiments/benchmark_table.py --out=$OUT --models=paper --what=train --batches=16,64
.venv/bin/python experiments/benchmark_table.py --out=$OUT --models=cifar_w1,cifar_w0.5 --what=train --batches=16
.venv/bin/python experiments/benchmark_table.py --out=$OUT --models=paper --what=eval --batches=64
date -u +"end %FT%TZ" >> /tmp/cpu_peers_bench.times; uptime >> /tmp/cpu_peers_bench.times
echo BENCH_DONE >> /tmp/cpu_peers_bench.times
