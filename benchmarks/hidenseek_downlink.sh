#!/usr/bin/env bash
# HideNseek's coded downlink (issue 20), one change at a time against today's default, in process (no Ray;
# bytes measured on Flower's serialized messages as in a simulation). FMNIST, FL CNN, Dirichlet 0.5, 100 clients,
# 10 per round, 30 rounds, 1 local epoch, density ${DENSITY:-0.1}, seed ${SEED:-0}, personal evaluation every
# 5 rounds (its messages counted). Each line: last-5 accuracy, uplink and downlink bytes per client-round.
# Usage: benchmarks/hidenseek_downlink.sh [LABEL ...]   (default: all rows below)
set -euo pipefail
PY=${PY:-.venv/bin/python}
D=${DENSITY:-0.1}
S=${SEED:-0}
declare -A ROWS=(
  [default]="score_step=0 mask_transfer=send"  # the float32 exchange, HideNseek's default before ecb1a3d
  [recompute]="mask_transfer=recompute score_step=0"
  [step0.5]="mask_transfer=recompute score_step=0.5 score_grid=uniform"
  [step1]="mask_transfer=recompute score_step=1.0 score_grid=uniform"
  [step2]="mask_transfer=recompute score_step=2.0 score_grid=uniform"
  [step1.5]="mask_transfer=recompute score_step=1.5 score_grid=uniform"
  [step1-b16]="mask_transfer=recompute score_step=1.0 score_grid=uniform batch_size=16"
  [step1-b8]="mask_transfer=recompute score_step=1.0 score_grid=uniform batch_size=8"
  [step1-slr1.5]="mask_transfer=recompute score_step=1.0 score_grid=uniform server_lr=1.5"
  [step1-slr2]="mask_transfer=recompute score_step=1.0 score_grid=uniform server_lr=2.0"
  [sqrt0.125]="mask_transfer=recompute score_step=0.125 score_grid=sqrt"
  [sqrt0.25]="mask_transfer=recompute score_step=0.25 score_grid=sqrt"
  [sqrt0.5]="mask_transfer=recompute score_step=0.5 score_grid=sqrt"
  [fedavg-la]="strategy=fedavg local_loss=logit-adjusted"
  [fedavg-la-b16]="strategy=fedavg local_loss=logit-adjusted batch_size=16"
  [fedavg-la-b8]="strategy=fedavg local_loss=logit-adjusted batch_size=8"
)
for label in "${@:-default recompute step0.5 step1 step2}"; do
  for row in $label; do
    echo "== $row (density $D, seed $S)"
    # shellcheck disable=SC2086
    density="density=$D"
    [[ ${ROWS[$row]} == strategy=fedavg* ]] && density=""  # dense rows: no density (their dirs say 0.1)
    $PY benchmarks/hidenseek_inprocess.py ternary-delta 30 0.03 $density seed=$S personal_eval_every=5 \
      ${ROWS[$row]} out=runs/hns-downlink/$row-$D-$S | tail -1
  done
done
