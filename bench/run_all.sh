#!/usr/bin/env bash
# The benchmark table (bench/throughput.py): every ratio measured against baselines in the same
# run, printed and written to bench/results/throughput-<device>-<mode>.json. Arguments go to it:
#   bench/run_all.sh                    # full sizes, by hand (~6 min on a 2-core CPU)
#   bench/run_all.sh --short            # CI's short mode (~1 min): records, never fails on timing
#   bench/run_all.sh --device cuda      # the whole table on one GPU (< 5 min)
# --legacy also runs the older single-purpose scripts afterwards (LIME memory, 2 workers vs 1,
# an audit of 2,000 digits).
set -euo pipefail
cd "$(dirname "$0")"
PY="${PYTHON:-../.venv/bin/python}"
[ -x "$PY" ] || PY=python
legacy=0
args=()
for a in "$@"; do
  if [ "$a" = --legacy ]; then legacy=1; else args+=("$a"); fi
done
"$PY" throughput.py "${args[@]}"
if [ "$legacy" = 1 ]; then
  for b in lime_memory.py workers_bench.py audit_2000.py; do
    echo "=== $b ${args[*]}"
    "$PY" "$b" "${args[@]}"
  done
fi
