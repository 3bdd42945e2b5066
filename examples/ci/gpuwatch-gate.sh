#!/usr/bin/env bash
# gpuwatch efficiency gate for any CI system (Jenkins, GitLab, Buildkite, a cron job...).
#
#   examples/ci/gpuwatch-gate.sh BASELINE.json [OUT_DIR]
#
# Trains the reference trainer for a few steps on CPU under gpuwatch, then:
#   - no BASELINE.json yet (first run, or on the main branch): writes it from this run and exits 0;
#     keep it as the artifact that later runs compare against;
#   - BASELINE.json exists: `gpuwatch compare BASELINE.json RUN` -> OUT_DIR/compare.md (the verdict, also
#     on stdout), OUT_DIR/compare.xml (JUnit: point your CI's test report at it), OUT_DIR/compare.json;
#     exits with compare's code: 0 pass, 1 regression, 2 runs that cannot be compared.
#
# Environment (all optional):
#   GATE_STEPS=10        training steps (the first is left out as warm-up; compare needs 5 more)
#   GATE_NPROC=2         ranks (torchrun, gloo)
#   GATE_TRAIN_ARGS=""   more reference_trainer arguments, e.g. "--data-dir /cache/data"
#   GATE_COMPARE_ARGS="" more compare arguments, e.g. "--max-increase data_loading=3"
#   PYTHON=python3       the interpreter that has gpuwatch installed
# Replace the training command with your own job's, run under `gpuwatch.watch` or `gpuwatch run`.
set -euo pipefail

baseline="${1:?usage: gpuwatch-gate.sh BASELINE.json [OUT_DIR]}"
out="${2:-gpuwatch-gate}"
py="${PYTHON:-python3}"
mkdir -p "$out"
run="$out/run"
rm -rf "$run"

# shellcheck disable=SC2086  # GATE_TRAIN_ARGS is a list of words on purpose
"$py" -m reference_trainer --preset fixed --nproc "${GATE_NPROC:-2}" --steps "${GATE_STEPS:-10}" \
  --checkpoint-every 2 --run-dir "$run" ${GATE_TRAIN_ARGS:-} >"$out/train.log" 2>&1 \
  || { echo "gpuwatch-gate: training failed; see $out/train.log" >&2; tail -20 "$out/train.log" >&2; exit 2; }

if [ ! -s "$baseline" ]; then
  "$py" -m gpuwatch summary --json "$run" >"$baseline"
  echo "gpuwatch-gate: no baseline yet; recorded $baseline from this run (keep it as an artifact)"
  exit 0
fi

status=0
# shellcheck disable=SC2086
"$py" -m gpuwatch compare "$baseline" "$run" --junit "$out/compare.xml" ${GATE_COMPARE_ARGS:-} \
  >"$out/compare.md" || status=$?
# shellcheck disable=SC2086
"$py" -m gpuwatch compare "$baseline" "$run" --json ${GATE_COMPARE_ARGS:-} >"$out/compare.json" 2>/dev/null || true
cat "$out/compare.md"
exit "$status"
