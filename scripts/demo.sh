#!/usr/bin/env bash
# The main job end to end, in about 4 minutes on 2 cores: public review file → Dataset →
#   1. text generators: a small `peter` that WRITES explanations, beside `popular` and `retrieval`,
#      which COPY training sentences (the report counts written / copied texts and item grounding);
#   2. the simulated user (a calibrated choice model) judging a small panel of recommenders, its
#      verdict set beside what real users went on to take (fidelity --protocol recommenders);
#   3. report.html: one self-contained page, plots inline, opened by the command printed at the end.
# Run through `make demo` (which sets up .venv first). DEMO_OUT=DIR writes elsewhere.
set -euo pipefail
OUT="${DEMO_OUT:-runs/demo}"
start=$(date +%s)
step() { echo; echo "== [$(( $(date +%s) - start )) s] $*"; }
mkdir -p "$OUT/models" "$OUT/pred"
DATA="$OUT/data"

raw=$(python -m feedbackgen.data.download musical_instruments)
step "data: $raw"
feedbackgen prepare "$raw" --format amazon2014 --split random --seed 1 --out "$DATA"

# -- 1. generators: two that copy, one that writes ---------------------------------------------
for model in popular retrieval; do
  step "$model (copies training sentences about the item)"
  feedbackgen train "$DATA" --model "$model" --out "$OUT/models/$model"
  feedbackgen generate "$OUT/models/$model" --dataset "$DATA" --split test --out "$OUT/pred/$model.jsonl"
done
# peter, narrowed to width 128 and a 5,000-word vocabulary so that 8 epochs fit in a minute or two
# on 2 cores; the full preset (docs/generators.md) writes better texts in about 5 minutes.
step "peter (writes each explanation; small preset, 8 epochs)"
feedbackgen train "$DATA" --model peter --out "$OUT/models/peter" --set emsize=128 --set nhid=512 \
  --set vocab_size=5000 --set max_epochs=8 --set progress=false
feedbackgen generate "$OUT/models/peter" --dataset "$DATA" --split test --out "$OUT/pred/peter.jsonl"

# -- 2. the simulated user judges a panel of recommenders --------------------------------------
# simulated_user: a stacked ensemble of choice models whose P(engage) is calibrated on the valid
# split to what users really took (docs/simulated-user.md). The recommenders protocol fits a small built-in panel (random, popularity, itemknn, ease,
# als, bpr and weakened variants) on train, lets the simulated user judge each one's lists, and
# compares its verdict with what real users went on to take in the test split.
step "the simulated user judges a panel of recommenders"
feedbackgen train "$DATA" --model simulated_user --out "$OUT/models/user"
feedbackgen fidelity --choice "$OUT/models/user" --dataset "$DATA" --protocol recommenders --out "$OUT/panel"

# -- 3. the report --------------------------------------------------------------------------------
step "report"
feedbackgen evaluate "$OUT"/pred/*.jsonl --dataset "$DATA" --out "$OUT/report" --naturalness-sample 100 \
  --include "$OUT/panel/fidelity.md"
echo
echo "Demo finished in $(( $(date +%s) - start )) s."
echo "Open the report:  python -m webbrowser -t \"file://$(cd "$OUT/report" && pwd)/report.html\""
