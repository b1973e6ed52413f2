#!/usr/bin/env bash
# Does the package work when installed from its wheel, not from this checkout?
#
# Builds the wheel from a copy of the tracked files (the checkout gets no build/ or egg-info), installs it
# into a fresh virtualenv outside the checkout, and runs the console scripts from an empty folder, so
# only what the wheel ships (configs, schemas, the threat-model spec) can be found.
#
#   scripts/wheel_smoke.sh          # exit status 0 only if every step passed; temp dirs are removed
#
# Environment: PYTHON (interpreter for the new venv, default python3.11), BUILD_PYTHON (one with
# `build` installed, default .venv/bin/python), KEEP=1 keeps the temp dir for inspection.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3.11}"
BUILD_PYTHON="${BUILD_PYTHON:-$REPO/.venv/bin/python}"
# Always pinned: a bare `torch` requirement pulls a multi-GB CUDA build.
TORCH="torch==2.13.0"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/wattack-wheel.XXXXXX")"
cleanup() { if [[ "${KEEP:-0}" == 1 ]]; then echo "kept $WORK"; else rm -rf "$WORK"; fi; }
trap cleanup EXIT
step() { printf '\n== %s\n' "$*"; }
start=$SECONDS

step "copy the tracked and new (not ignored) files of $REPO"
mkdir -p "$WORK/src"
git -C "$REPO" ls-files -z --cached --others --exclude-standard \
    | (cd "$REPO" && while IFS= read -r -d '' f; do [[ -f "$f" ]] && printf '%s\0' "$f"; done) \
    | tar -C "$REPO" --null -T - -cf - | tar -C "$WORK/src" -xf -

step "build the wheel"
"$BUILD_PYTHON" -m build --wheel --outdir "$WORK/dist" "$WORK/src" >"$WORK/build.log" 2>&1 \
    || { tail -30 "$WORK/build.log"; exit 1; }
wheel=("$WORK"/dist/wasserstein_attacks-*.whl)
echo "${wheel[0]##*/}"

step "install $TORCH and the wheel into a fresh venv"
"$PYTHON" -m venv "$WORK/venv"
VENV="$WORK/venv/bin"
for what in "$TORCH" "${wheel[0]}"; do
    "$VENV/python" -m pip install -q "$what" >"$WORK/pip.log" 2>&1 || { tail -30 "$WORK/pip.log"; exit 1; }
done

# Nothing from the checkout may leak in: no PYTHONPATH, an empty working folder, no commit override.
unset PYTHONPATH WATTACK_GIT_COMMIT
export WANDB_MODE=disabled
mkdir "$WORK/empty"
cd "$WORK/empty"

step "wattack-bench experiment=debug"
"$VENV/wattack-bench" experiment=debug progress=false
"$VENV/python" - <<'EOF'
from pathlib import Path

import wasserstein_attacks
from wasserstein_attacks.bench import load_results

package = Path(wasserstein_attacks.__file__).parent
assert "site-packages" in package.parts, package
for pattern in ("conf/*/*.yaml", "bench/*.json", "leaderboard/*.json", "threat/*.md"):
    assert list(package.glob(pattern)), f"the wheel lacks {pattern}"
results = load_results("runs/debug/default")  # schema-checked
assert results["git_commit"] is None, results["git_commit"]  # an installed wheel is no checkout
print(f"results.json: {results['n_examples']} examples, robust accuracy {results['robust_accuracy']}")
EOF

step "wattack-leaderboard validate --root $REPO/leaderboard"
"$VENV/wattack-leaderboard" validate --root "$REPO/leaderboard"

step "wattack-leaderboard compare (two committed entries, paired test per radius)"
"$VENV/wattack-leaderboard" compare WattackAdvFWB WattackStandard --root "$REPO/leaderboard"

step "load_suite('standard-v5')"
"$VENV/python" -c "from wasserstein_attacks.attacks.suite import load_suite; print(load_suite('standard-v5'))"

step "wheel smoke test passed in $((SECONDS - start)) s"
