#!/usr/bin/env bash
# Pilot versions (demo size: 6 clients, 4 rounds, 4 seeds) of the defence and breadth studies,
# run one after another; re-running resumes each (finished jobs are kept). The full studies are
# scenarios/defenses_{new,holder}.toml and scenarios/breadth_*.toml as they stand (12 and 6 seeds).
# Writes docs/results/{defenses_pilot,breadth_*_pilot}.md and prints the defence tables.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
SMALL=(--set num_clients=6 --set rounds=4 --set 'seeds=[0,1,2,3]')
OUT=${OUT:-results}

run() {  # scenario, results dir, extra args...
    local scenario=$1 out=$2; shift 2
    local t0=$SECONDS
    "$BIN/fedattr" run "$scenario" --out "$out" --no-report "${SMALL[@]}" "$@" || true
    echo "pilot: $scenario -> $out: $((SECONDS - t0)) s wall"
}

run scenarios/defenses_new.toml "$OUT/defenses_pilot" --set attack.generator_seed=0
run scenarios/defenses_holder.toml "$OUT/defenses_holder_pilot"
TABLES=(-m benchmarks.defenses --results "$OUT/defenses_pilot" --holder "$OUT/defenses_holder_pilot")
{
    echo "# Defences pilot: mitigations, the adaptive attacker and the genuine holder"
    echo
    echo "- generated $(date -u +%Y-%m-%dT%H:%M:%SZ) by \`python ${TABLES[*]}\` (scripts/pilot_studies.sh)"
    echo "- commit $(git rev-parse --short=12 HEAD); machine: $(nproc) CPUs"
    echo "- scenarios/defenses_new.toml and defenses_holder.toml at demo size: ${SMALL[*]}"
    echo
    "$BIN/python" "${TABLES[@]}"
} > docs/results/defenses_pilot_tables.md
cat docs/results/defenses_pilot_tables.md
"$BIN/fedattr" report "$OUT/defenses_pilot" --to docs/results/defenses_pilot.md > /dev/null
for cell in dataset model_mlp model_resnet aggregator_fedmedian aggregator_fedtrimmedavg aggregator_multikrum; do
    extra=()  # Multi-Krum selects 7 of the full cell's 8 clients: 5 of the pilot's 6
    [ "$cell" = aggregator_multikrum ] && extra=(--set aggregation.params.num_nodes_to_select=5)
    run "scenarios/breadth_$cell.toml" "$OUT/breadth_${cell}_pilot" --set attack.generator_seed=0 "${extra[@]}"
    "$BIN/fedattr" report "$OUT/breadth_${cell}_pilot" --to "docs/results/breadth_${cell}_pilot.md" > /dev/null
done
