#!/usr/bin/env bash
# The default run with the code of an earlier commit and with the working tree, one after the
# other on this machine, then compared: prediction files, results.json (but output_dir and
# peak memory), the scores log and the final checkpoint's tensors must be identical. Prints
# each run's wall time. A refactor that should change nothing is checked with it:
#   bench/compare_default_run.sh 8840024 [extra contmm fit arguments...]
set -euo pipefail
old_commit="$1"; shift
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
git -C "$repo" worktree add --quiet --detach "$work/code" "$old_commit"
trap 'git -C "$repo" worktree remove --force "$work/code"' EXIT

run() {  # run NAME TREE [ARGS...]: contmm fit with TREE's code into $work/NAME, timed
    local name="$1" tree="$2" start=$SECONDS
    shift 2
    if ! (cd "$tree" && PYTHONPATH="$tree" python -c "from contmm.cli import main; main()" fit \
        --config experiments/seq_vqa.yaml --output_dir "$work/$name" "$@" >"$work/$name.log" 2>&1); then
        tail -5 "$work/$name.log"
        exit 1
    fi
    echo "$name ($tree): $((SECONDS - start)) s"
}
run old "$work/code" "$@"
run new "$repo" "$@"

diff -r "$work/old/predictions" "$work/new/predictions" && echo "prediction files: identical"
diff "$work/old/logs/csv/scores/metrics.csv" "$work/new/logs/csv/scores/metrics.csv" && echo "scores log: identical"
python - "$work" <<'PY'
import json, sys, torch
work = sys.argv[1]
old, new = (json.load(open(f"{work}/{name}/results.json")) for name in ("old", "new"))
differ = sorted(k for k in old.keys() | new.keys() if k not in ("env", "peak_memory_mib") and old.get(k) != new.get(k))
config = sorted(k for k in old["config"] if old["config"][k] != new["config"].get(k))
assert differ in ([], ["config"]) and config == ["output_dir"], (differ, config)
print("results.json: identical but output_dir and peak memory; metrics", new["metrics"])
final = max(int(p.split("_")[-1]) for p in __import__("os").listdir(f"{work}/new/checkpoints"))
a, b = (torch.load(f"{work}/{n}/checkpoints/stage_{final}/model.pt", weights_only=True) for n in ("old", "new"))
assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
print(f"checkpoint of stage {final}: identical tensors")
PY
