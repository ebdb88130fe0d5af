#!/usr/bin/env bash
# make gpu-check: the gpu-marked tests and the benchmark's GPU sections in one bounded shot (benchmarks/gpu_check.py).
#
#   bash benchmarks/gpu_check.sh            # on a GPU machine; carry .whl (make gpu-wheels) to a lent one
#   bash benchmarks/gpu_check.sh --quick    # a dry run of the plan on any machine (tiny sizes; no wheels installed)
#
# Without CUDA (and without --quick) it says so and exits 0. With CUDA it first installs the carried wheels in .whl/
# (DeepSpeed, webdataset, ... that the lent machine's image lacks) into /tmp/site with that machine's own python3
# (never the project's .venv, never `make install`), then runs the parts under a hard time limit. Output is teed to
# $OUT/gpu-check.log ($OUT: the lent machine's folder that comes back), else benchmarks/results/gpu-check.log.
#
# Environment: PYTHON (default python3), GPU_CHECK_WHEELS (default .whl), GPU_CHECK_SITE (default /tmp/site),
# GPU_CHECK_BUDGET_S (default 440: the parts' total), GPU_CHECK_TOTAL_S (default 500: the whole script, install
# included, is hard-bounded by it; the parts' budget shrinks if the install took long).
set -uo pipefail
cd "$(dirname "$0")/.."
started_at=$SECONDS

PYTHON=${PYTHON:-python3}
WHEELS=${GPU_CHECK_WHEELS:-.whl}
SITE=${GPU_CHECK_SITE:-/tmp/site}
BUDGET=${GPU_CHECK_BUDGET_S:-440}
TOTAL=${GPU_CHECK_TOTAL_S:-500}
quick=0
install=auto
args=()
for arg in "$@"; do
    case "$arg" in
        --quick) quick=1; args+=(--quick) ;;
        --install) install=1 ;;        # install the carried wheels even without CUDA (a local rehearsal)
        --no-install) install=0 ;;
        *) args+=("$arg") ;;
    esac
done

if cuda=$(timeout 60 "$PYTHON" -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null); then
    why="torch.cuda.is_available() is False"
else
    cuda=0
    why="$PYTHON cannot import torch"
fi
if [[ "$cuda" != 1 && "$quick" == 0 ]]; then
    echo "gpu-check: no CUDA device on this machine ($why): nothing to check here, exiting 0."
    echo "gpu-check: run it on a GPU machine (bash benchmarks/gpu_check.sh), or dry-run the plan here: bash benchmarks/gpu_check.sh --quick"
    exit 0
fi

log_dir=${OUT:-benchmarks/results}
mkdir -p "$log_dir"
log="$log_dir/gpu-check.log"
: >"$log"
say() { echo "gpu-check: $*" | tee -a "$log"; }

if [[ "$install" == 1 || ( "$install" == auto && "$cuda" == 1 ) ]]; then
    if compgen -G "$WHEELS/*.whl" >/dev/null; then
        say "installing $(ls "$WHEELS"/*.whl | wc -l) carried wheels from $WHEELS into $SITE with $PYTHON"
        started=$SECONDS
        if ! timeout 90 "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
                --target "$SITE" "$WHEELS"/*.whl 2>&1 | tee -a "$log"; then
            say "FAILED to install the carried wheels: nothing else can run"
            exit 1
        fi
        cp "$WHEELS"/*.py "$SITE"/ 2>/dev/null || true  # one-file modules (DALI's wds2idx)
        export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
        say "installed in $((SECONDS - started)) s"
    else
        say "no wheels in $WHEELS (make gpu-wheels, then carry .whl): using what $PYTHON has"
    fi
fi
# p2p_dist is not installed there: import it from this checkout. Nothing is JIT-built on CUDA (client torch
# optimizers), but a writable extensions folder keeps a surprise build from failing on a missing .venv.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
if [[ "$cuda" == 1 ]]; then
    export TORCH_EXTENSIONS_DIR=/tmp/p2p-torch-extensions
fi

# What is left of TOTAL: 15 s for a kill to land, 30 s between the parts' budget and the hard limit.
left=$((TOTAL - (SECONDS - started_at) - 15))
hard=$(( left < BUDGET + 30 ? left : BUDGET + 30 ))
budget=$((hard - 30))
if ((budget < 60)); then
    say "only $left s of the ${TOTAL} s left after setup: not starting"
    exit 1
fi
timeout --kill-after=15 "$hard" "$PYTHON" benchmarks/gpu_check.py --budget-s "$budget" "${args[@]}" 2>&1 \
    | tee -a "$log"
rc=${PIPESTATUS[0]}
if [[ "$rc" == 124 || "$rc" == 137 ]]; then
    say "hard time limit ($hard s) hit: the results files may be missing; the log above has what ran"
fi
say "exit $rc; log: $log"
exit "$rc"
