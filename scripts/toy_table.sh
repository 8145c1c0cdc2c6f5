#!/usr/bin/env bash
# The toy world's Table 5: every method of `yollava eval` on the 20-concept toy benchmark, with the
# shipped toy LLaVA and toy CLIP (docs/results/toy/). CPU only; about an hour on two cores.
#
#   bash scripts/toy_table.sh [WORK_DIR] [REPORT_DIR]      # defaults: bench/toy_table, docs/results/toy
#
# 1. the benchmark (`yollava toy generate --out toyworld`, seed 0: 20 concepts, 10 train / 10 test photos each);
# 2. `yollava eval` of the methods that train nothing, on every task (in-context with 1 and 4 reference
#    photos: 4 is the most the toy LLaVA's 512-token context holds with the scene);
# 3. one soft prompt per concept with `yollava train`'s defaults (all 10 training photos, hard + easy
#    negatives mined from the pool with the toy CLIP, recognition + conversation data, 15 epochs),
#    two concepts at a time, then `yollava eval --method soft-prompt` on every task;
# 4. `yollava report` over the three result files.
# Each step is skipped when its output exists, so an interrupted run resumes where it stopped.
set -euo pipefail
WORK=${1:-bench/toy_table}
REPORT=${2:-docs/results/toy}
YOLLAVA=${YOLLAVA:-yollava}
mkdir -p "$WORK"
[ -f toyworld/benchmark.json ] || $YOLLAVA toy generate --out toyworld
CONCEPTS=$(python -c "import json; print(' '.join(json.load(open('toyworld/benchmark.json'))['concepts']))")
ARGS=(--data toyworld --model toy --store "$WORK/concepts" --task all)
for name in $CONCEPTS; do ARGS+=(--concept "$name"); done

evaluate() {  # evaluate OUT_NAME ARGS...: one `yollava eval` run, kept once finished
    local out=$1; shift
    [ -f "$WORK/$out.json" ] && return 0
    $YOLLAVA eval "${ARGS[@]}" "$@" --json "$WORK/$out.json.part" > "$WORK/$out.log" 2>&1
    mv "$WORK/$out.json.part" "$WORK/$out.json"
}
evaluate untrained --method vanilla --method description --method auto-long --method auto-short --method in-context --refs 1
evaluate refs4 --method in-context --refs 4

train() {
    local name=$1
    [ -f "$WORK/concepts/$name/concept.json" ] && return 0
    $YOLLAVA train --concept "$name" --images "toyworld/train/$name" --pool toyworld/pool --embedder toy --model toy \
        --store "$WORK/concepts" "train.runs_dir=$WORK/runs" > "$WORK/train_$name.log" 2>&1
}
i=0
for name in $CONCEPTS; do
    train "$name" &
    i=$((i + 1))
    if [ $((i % 2)) -eq 0 ]; then wait; fi
done
wait
evaluate soft_prompt --method soft-prompt

$YOLLAVA report "$WORK/soft_prompt.json" "$WORK/untrained.json" "$WORK/refs4.json" --out "$REPORT" \
    --title "Toy world, 20 concepts: every method (shipped toy LLaVA)"
