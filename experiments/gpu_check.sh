#!/usr/bin/env bash
# The GPU check: one command, a few minutes on one GPU (budgeted under 8,
# plus the paper-init run's 3,000 steps), that writes raw output under OUT
# and prints one table (experiments/gpu_table.py):
#   - the smoke config end to end (wall time, exit code);
#   - the half precision this GPU gets (OUT/precision.txt: bfloat16, or
#     float16 with loss scaling where it lacks bfloat16, alexnet_jax/precision.py);
#   - train and eval images/s of the paper model at batch 128 and 256, in
#     float32 and that half precision, with MFU against a matmul in the same
#     dtype measured in the same run;
#   - the input pipeline's images/s on real JPEGs (the shared CIFAR-10
#     archive, upscaled to 224 as the default config does) next to the train
#     step's: which one limits;
#   - the same images prepared once as 256x256 shards (alexnet_jax.prepare):
#     the input pipeline on them with tf.data, and with NVIDIA DALI decoding
#     on the GPU where DALI is installed (OUT/input_prepared.txt,
#     OUT/input_dali.txt), and with uint8 batches finished on the GPU
#     (data.normalize_on_device: OUT/input_prepared_uint8.txt, and a
#     100-step training run through the real steps, train_uint8);
#   - with 2+ GPUs: the two-tower split (mesh.model=2) against data
#     parallelism (mesh.data=2), and --mode=comm on the model=2 mesh;
#   - whether the paper's init leaves chance: configs/default.py:cifar10
#     (full width, N(0, 0.01^2) with bias 1, the authors' bias recipe) in
#     half precision on CIFAR-10 upscaled to 256, 3,000 steps of batch 128
#     (GPU_CHECK_PAPER_STEPS; a few minutes more), and the first step at
#     which its 100-step mean training loss is 10% below ln 10.
#
#   bash experiments/gpu_check.sh                # OUT=experiments/results/gpu
#   GPU_CHECK_TINY=1 bash experiments/gpu_check.sh   # plumbing only, any CPU
#
# Run from anywhere; it runs from the repository root. PYTHON picks the
# interpreter (default: python).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-experiments/results/gpu}
PY=${PYTHON:-python}
mkdir -p "$OUT"
SCRATCH=$(mktemp -d)
trap 'rm -rf "$SCRATCH"' EXIT

if [[ -n "${GPU_CHECK_TINY:-}" ]]; then
  # The smoke model at batch 8: checks the script, not the GPU.
  MODEL=(--config=configs/smoke.py)
  BATCHES=(8)
  BENCH=(--windows=1 --warmup=1 --steps=1 --peak_size=256)
  # A handful of steps of a 1/16-width paper model, on a few images.
  PAPER=(--config.model.width=0.0625 --config.log_every_steps=2)
  PAPER_BATCH=8
  PAPER_STEPS=${GPU_CHECK_PAPER_STEPS:-6}
  UINT8_STEPS=2
else
  MODEL=()
  BATCHES=(128 256)
  BENCH=(--windows=5)
  PAPER=()
  PAPER_BATCH=128
  PAPER_STEPS=${GPU_CHECK_PAPER_STEPS:-3000}
  UINT8_STEPS=100
fi

{ date -u; uname -a; nvidia-smi 2>&1 || echo "nvidia-smi: not found"; } \
  > "$OUT/machine.txt"
"$PY" -c 'import jax; print(jax.default_backend(), len(jax.devices()),
jax.devices()[0].device_kind)' > "$OUT/devices.txt" 2>"$SCRATCH/err" || {
  echo "error: jax does not start: $(tail -1 "$SCRATCH/err")" >&2; exit 1; }
read -r BACKEND NDEV KIND < "$OUT/devices.txt"
echo "backend $BACKEND, $NDEV device(s), $KIND"
if [[ "$BACKEND" != "gpu" && -z "${GPU_CHECK_TINY:-}" ]]; then
  echo "error: no GPU (jax backend: $BACKEND); GPU_CHECK_TINY=1 checks the" \
       "script on a CPU" >&2
  exit 1
fi

step() {  # step NAME COMMAND...: runs it, output to OUT/NAME.txt.
  local name=$1; shift
  local t0=$SECONDS
  "$@" > "$OUT/$name.txt" 2>"$OUT/$name.err"
  local code=$?
  echo "{\"name\": \"$name\", \"exit\": $code, \"seconds\": $((SECONDS - t0))}" \
    >> "$OUT/steps.jsonl"
  printf '%-32s exit %d, %d s\n' "$name" "$code" "$((SECONDS - t0))"
}
: > "$OUT/steps.jsonl"

step smoke "$PY" -m alexnet_jax.main --config=configs/smoke.py \
  --workdir="$SCRATCH/smoke"
step precision "$PY" -m alexnet_jax.precision
for what in train eval; do
  for batch in "${BATCHES[@]}"; do
    for half in False True; do
      step "bench_${what}_${batch}_half${half}" "$PY" -m alexnet_jax.benchmark \
        "${MODEL[@]}" --what=$what --batch=$batch \
        --config.half_precision=$half "${BENCH[@]}" --json
    done
  done
done

ARCHIVE=../shared/data/cifar10-jpg.tar.gz
if [[ -f "$ARCHIVE" ]]; then
  tar xzf "$ARCHIVE" -C "$SCRATCH"
  # The default config's input: JPEGs resized to 256, 224 crops, batch 128.
  step input_jpeg "$PY" -m alexnet_jax.benchmark --what=input \
    "${MODEL[@]}" --config.data.source=folder \
    --config.data.path="$SCRATCH/cifar10" --config.data.eval_split=test \
    --config.model.num_classes=10 --batch="${BATCHES[0]}" --json
else
  echo "input_jpeg: skipped ($ARCHIVE not found)"
fi

if [[ -d "$SCRATCH/cifar10" ]]; then
  DATA=$SCRATCH/cifar10
  if [[ -n "${GPU_CHECK_TINY:-}" ]]; then  # 3 images a class, each split.
    DATA=$SCRATCH/cifar10_few
    for dir in "$SCRATCH"/cifar10/{train,test}/*/; do
      sub=${dir#"$SCRATCH/cifar10/"}
      mkdir -p "$DATA/$sub"
      find "$dir" -type f | sort | head -3 | xargs cp -t "$DATA/$sub"
    done
  fi
  rm -f "$OUT/paper_init.jsonl"
  echo "configs/default.py:cifar10, half precision, $PAPER_STEPS steps of batch" \
    "$PAPER_BATCH" > "$OUT/paper_init_run.txt"
  step paper_init "$PY" -m alexnet_jax.main \
    --config=configs/default.py:cifar10 --workdir="$SCRATCH/paper_init" \
    --config.data.path="$DATA" --config.half_precision=True \
    --config.batch_size="$PAPER_BATCH" --config.num_train_steps="$PAPER_STEPS" \
    --config.eval_every_steps=1000 \
    --config.checkpoint_every_steps=100000 "${PAPER[@]}"
  cp "$SCRATCH/paper_init/metrics.jsonl" "$OUT/paper_init.jsonl" 2>/dev/null
  # uint8 batches finished on the GPU (data.normalize_on_device) through the
  # real train and eval steps: a short run that must end with exit 0.
  step train_uint8 "$PY" -m alexnet_jax.main \
    --config=configs/default.py:cifar10 --workdir="$SCRATCH/uint8" \
    --config.data.path="$DATA" --config.data.normalize_on_device=True \
    --config.batch_size="$PAPER_BATCH" --config.num_train_steps="$UINT8_STEPS" \
    --config.eval_every_steps="$UINT8_STEPS" "${PAPER[@]}"
else
  echo "paper_init, train_uint8: skipped ($ARCHIVE not found)"
fi

if [[ -d "${DATA:-}" ]]; then
  # The prepared path (alexnet_jax/prepare.py): the training images written
  # once as 256x256 JPEGs in TFRecord shards, then the input pipeline's
  # images/s on them, decoded by tf.data on the CPU and, where NVIDIA DALI is
  # installed (pip install -e '.[dali]'), by DALI on the GPU.
  PREPARED=(--config=configs/default.py:cifar10
            --config.data.source=prepared --config.data.path="$SCRATCH/prepared")
  step prepare "$PY" -m alexnet_jax.prepare --config=configs/default.py:cifar10 \
    --config.data.path="$DATA" --splits=train --out="$SCRATCH/prepared"
  step input_prepared "$PY" -m alexnet_jax.input_benchmark "${PREPARED[@]}" \
    --configured_only --batch_size="${BATCHES[0]}" --rounds=1 --json
  # The same with uint8 crops, lighting and mean done on the GPU.
  step input_prepared_uint8 "$PY" -m alexnet_jax.input_benchmark \
    "${PREPARED[@]}" --config.data.normalize_on_device=True \
    --configured_only --batch_size="${BATCHES[0]}" --rounds=1 --json
  if "$PY" -c 'import nvidia.dali.plugin.jax' 2>/dev/null; then
    step input_dali "$PY" -m alexnet_jax.input_benchmark "${PREPARED[@]}" \
      --config.data.decoder=dali --configured_only \
      --batch_size="${BATCHES[0]}" --rounds=1 --json
  else
    echo "input_dali: skipped (NVIDIA DALI not installed: pip install -e" \
      "'.[dali]')"
  fi
else
  echo "prepare, input_prepared(_uint8), input_dali: skipped ($ARCHIVE not found)"
fi

if (( NDEV >= 2 )); then
  # Two devices each: the paper's split, then the same two as data parallel.
  for mesh in "model=2 data=1" "model=1 data=2"; do
    read -r m d <<< "$mesh"
    step "bench_train_${BATCHES[0]}_mesh_${m/=/}_${d/=/}" "$PY" -m \
      alexnet_jax.benchmark "${MODEL[@]}" --what=train \
      --batch="${BATCHES[0]}" --config.mesh.$m --config.mesh.$d \
      "${BENCH[@]}" --json
  done
  step comm_model2 "$PY" -m alexnet_jax.main "${MODEL[@]}" --mode=comm \
    --config.mesh.model=2 --workdir="$SCRATCH/comm"
fi

"$PY" experiments/gpu_table.py "$OUT" | tee "$OUT/table.md"
