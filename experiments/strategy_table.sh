#!/usr/bin/env bash
# The strategy table of docs/studies/strategies.md: every strategy on the default stream, 3 seeds each, then
# `contmm report` (one row per strategy, mean ± std over the seeds).
#   experiments/strategy_table.sh [strategy ...]     # default: all of them, in this order
# Runs go to runs/table/<strategy>_s<seed>; an interrupted run resumes where it stopped.
# One torch thread per run (OMP_NUM_THREADS=1), so a run can share a 2-core machine.
set -euo pipefail
cd "$(dirname "$0")/.."
strategies=("$@")
if [ ${#strategies[@]} -eq 0 ]; then
  strategies=(naive replay ewc replay_ewc lora_per_task projector_expansion joint lora lwf olora routed_lora moelora)
fi
for strategy in "${strategies[@]}"; do
  overlay=()
  [ "$strategy" != naive ] && overlay=(--config "experiments/$strategy.yaml")
  for seed in 0 1 2; do
    out="runs/table/${strategy}_s${seed}"
    /usr/bin/time -f "$out %e s" env OMP_NUM_THREADS=1 contmm fit --config experiments/seq_vqa.yaml \
      "${overlay[@]}" --seed "$seed" --output_dir "$out" --trainer.enable_progress_bar false
  done
done
contmm report runs/table/*
