#!/usr/bin/env bash
# The main job end to end: public review file → Dataset → baseline generators → feedback for the
# test split → choice model, ranking and simulated-user fidelity → report. Run through `make demo` (which sets up .venv first).
set -euo pipefail
OUT="${DEMO_OUT:-runs/demo}"
start=$(date +%s)
mkdir -p "$OUT/models" "$OUT/pred"

raw=$(python -m feedbackgen.data.download musical_instruments)
echo "== data: $raw"
feedbackgen prepare "$raw" --format amazon2014 --split random --seed 1 --out "$OUT/data"

for model in global_mean bias mf popular retrieval; do
  echo "== $model"
  feedbackgen train "$OUT/data" --model "$model" --out "$OUT/models/$model"
  feedbackgen generate "$OUT/models/$model" --dataset "$OUT/data" --split test --out "$OUT/pred/$model.jsonl"
done

# the simulated user: the default choice model decides what a user takes; retrieval writes the feedback
echo "== choice model: ease"
feedbackgen train "$OUT/data" --model ease --out "$OUT/models/ease"
feedbackgen recommend "$OUT/models/ease" --dataset "$OUT/data" --evaluate --out "$OUT/ranking"
feedbackgen fidelity "$OUT/models/retrieval" --choice "$OUT/models/ease" --dataset "$OUT/data" --out "$OUT/fidelity"

feedbackgen evaluate "$OUT"/pred/*.jsonl --dataset "$OUT/data" --out "$OUT/report" --naturalness --naturalness-sample 200 \
  --include "$OUT/ranking/ranking.md" --include "$OUT/fidelity/fidelity.md"
echo
echo "Demo finished in $(( $(date +%s) - start )) s. Report: $OUT/report/report.md (report.json, plots beside it)"
