#!/usr/bin/env bash
# The fine-tuning experiment of configs/finetune_cifar10.py, as run for this
# folder: the source network on the six animal classes, then four runs on
# the four vehicle classes for the same steps (from scratch; fine-tuned at
# the recipe's rate; fine-tuned with the pretrained layers at 0.1x; conv1-
# conv5 frozen), one after the other, then the report. W: where the
# workdirs go. Each run resumes if interrupted (rerun this script).
set -euo pipefail
cd "$(dirname "$0")/../../.."
W=${W:-workdirs/cifar10_finetune}
PY=${PY:-.venv/bin/python}
main() { "$PY" -m alexnet_jax.main "$@"; }
FT=configs/finetune_cifar10.py
main --config=$FT:pretrain --workdir=$W/source
main --config=$FT:scratch --workdir=$W/scratch
main --config=$FT --workdir=$W/finetune --config.finetune.init_from=$W/source
low=()
for l in conv1 conv2 conv3 conv4 conv5 fc6 fc7; do
  low+=("--config.finetune.lr_scale.$l=0.1")
done
main --config=$FT --workdir=$W/finetune_lr0.1 \
    --config.finetune.init_from=$W/source "${low[@]}"
main --config=$FT --workdir=$W/finetune_frozen \
    --config.finetune.init_from=$W/source \
    --config.finetune.freeze='("conv1","conv2","conv3","conv4","conv5")'
"$PY" -m experiments.finetune_report \
    --runs="scratch=$W/scratch,finetune=$W/finetune,finetune_lr0.1=$W/finetune_lr0.1,finetune_frozen=$W/finetune_frozen" \
    --out=experiments/results/cifar10_finetune
