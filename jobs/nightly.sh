#!/usr/bin/env bash
# Nightly: one grid-search job per model on the cluster, then the trend across nights per model.
# Exits 3 when any model's newest run fell below the previous night by more than THRESHOLD points
# on some (task, language, metric), so cron (or whatever runs this) can alert.
#   HEAD=http://head:8265 OUTPUT=s3://my-bucket/xtp-runs jobs/nightly.sh
set -uo pipefail
cd "$(dirname "$0")/.."
HEAD=${HEAD:-http://127.0.0.1:8265}
OUTPUT=${OUTPUT:-s3://my-bucket/xtp-runs}
THRESHOLD=${THRESHOLD:-2}
MODELS=${MODELS:-"meta-llama/Llama-2-7b-chat-hf mistralai/Mistral-7B-Instruct-v0.3 Qwen/Qwen2-7B-Instruct"}
status=0
for model in $MODELS; do
    name=$(basename "$model")
    ray job submit --address "$HEAD" --working-dir . \
        --runtime-env-json '{"excludes": [".venv", ".git", "xtp-out"]}' \
        -- python jobs/grid_search.py --config jobs/paper.yaml --model "$model" \
        --output "$OUTPUT/$name" --run-id "$name-$(date +%F)" || status=1
    xtp history --output "$OUTPUT/$name" --threshold "$THRESHOLD"
    rc=$?
    [ $rc -eq 3 ] && status=3
    [ $rc -ne 0 ] && [ $rc -ne 3 ] && [ $status -eq 0 ] && status=$rc
done
exit $status
