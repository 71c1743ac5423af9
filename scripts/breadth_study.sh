#!/usr/bin/env bash
# The breadth study (docs/datasets-models.md): one cell per scenarios/breadth_*.toml, run one
# after another in the background; re-running resumes each cell (finished jobs are kept).
#   scripts/breadth_study.sh                      # every cell at its scenario's 6 seeds
#   SEEDS='[0,1,2,3,4,5,6,7,8,9,10,11]' CELLS='dataset model_mlp' scripts/breadth_study.sh
#                                                 # extend cells to 12 seeds (the 6 finished ones are kept)
# Each cell's results go to $OUT/breadth_<cell>; its wall time is printed and kept in environment.json.
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
OUT=${OUT:-results}
CELLS=${CELLS:-claim dataset model_mlp aggregator_fedmedian aggregator_fedtrimmedavg aggregator_multikrum model_resnet}
extra=()
[ -n "${SEEDS:-}" ] && extra=(--set "seeds=$SEEDS")
for cell in $CELLS; do
    t0=$SECONDS
    "$BIN/fedattr" run "scenarios/breadth_$cell.toml" --out "$OUT/breadth_$cell" --no-report "${extra[@]}"
    echo "breadth: $cell: exit $?, $((SECONDS - t0)) s wall"
done
