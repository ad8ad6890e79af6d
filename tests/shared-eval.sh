#!/usr/bin/env bash
# The detector against the labelled traces of ../shared/eval (our build machines and CI have
# them; a clone of the project alone does not, and this step then says so and passes).
# usage: tests/shared-eval.sh PATH_TO_blockwatch-collector
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$1
eval_dir=../shared/eval
if [ ! -x "$eval_dir/check-detector" ]; then
  echo "shared eval: skipped: no $eval_dir/check-detector beside this clone (only our build machines and CI have the labelled traces)"
  exit 0
fi
echo "shared eval: replaying $eval_dir/samples through $bin"
"$eval_dir/check-detector" "$bin" --json > "${TMPDIR:-/tmp}/blockwatch-shared-eval.json"
python3 - "${TMPDIR:-/tmp}/blockwatch-shared-eval.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))["summary"]
goals = [
    ("precision", ">=", 0.98), ("recall", ">=", 0.98),
    ("delay_median", "<=", 2.0), ("delay_p95", "<=", 6.0),
    ("onset_err_median", "<=", 0.5),
    ("end_recall", ">=", 0.95), ("end_false", "<=", 0),
]
failed = []
for key, op, goal in goals:
    v = s.get(key)
    ok = v is not None and (v >= goal if op == ">=" else v <= goal)
    print(f"shared eval: {key:<18} {v!s:<22} goal {op} {goal}  {'ok' if ok else 'FAILED'}")
    if not ok:
        failed.append(key)
if failed:
    sys.exit(f"shared eval: goals missed: {', '.join(failed)}")
PY
for set in "$eval_dir"/samples-*/; do
  [ -d "$set" ] || continue
  echo "shared eval: $(basename "$set") (reported, not asserted):"
  SAMPLES=$set "$eval_dir/check-detector" "$bin" | sed 's/^/  /'
done
