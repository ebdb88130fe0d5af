#!/usr/bin/env bash
# (Re)create .whl/: the pure-Python packages p2p_dist's GPU path needs that the lent GPU machine's image lacks,
# as wheels for its Python (CPython 3.12, x86-64 Linux), at the versions installed in .venv here.
#
#   bash benchmarks/gpu_wheels.sh            # = make gpu-wheels; then carry [".whl"] to the device
#   bash benchmarks/gpu_wheels.sh --verify   # only check the .whl/ that is there (tags, versions; a Python 3.12
#                                            # --target install and imports, where this machine has 3.12)
#
# The image (/work/.library/device/KINDS.md) has torch, torchvision, torchmetrics, numpy, pyyaml, tqdm, pillow,
# matplotlib, tensorboard, einops, msgpack, ninja, packaging, psutil, py-cpuinfo, pytest... but not DeepSpeed
# (and its hjson, pydantic), webdataset (braceexpand), cityscapesscripts (p2p_dist.data.labels) nor DALI. DALI's
# wheel is far too large to travel (~476 MB installed; 64 MiB is all that travels): its tests skip there, and the
# training runs use data.loader=webdataset. DALI's one-file `wds2idx` module (stdlib only, Apache-2.0), which
# p2p_dist.data.shards uses to index the shards it packs, travels as .whl/wds2idx.py.
#
# DeepSpeed is an sdist on PyPI: its wheel is built here with DS_BUILD_OPS=0 (no compiled ops: p2p_dist gives
# the engines a client torch.optim.Adam, so nothing is JIT-built on CUDA either). It is py3-none-any and asks
# for torch>=2.0.0, which the image's torch satisfies; --no-deps on the device keeps that torch untouched.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
OUT_DIR=.whl
# The device's Python and platform (pip matches manylinux_2_N exactly, so several are offered).
TARGET=(--python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64
        --platform any)
# What the GPU path imports that the image lacks, and their own missing dependencies.
# typing-extensions is on the image, but pydantic-core needs a recent one: the carried copy (a superset of
# older ones) takes precedence there.
PACKAGES=(hjson pydantic pydantic-core annotated-types typing-inspection typing-extensions
          webdataset braceexpand cityscapesscripts)

verify() {
    "$PY" - "$OUT_DIR" <<'EOF'
"""Each wheel installs on CPython 3.12 x86-64 Linux, one version per project, DeepSpeed pins no torch."""
import re
import sys
import zipfile
from pathlib import Path

folder = Path(sys.argv[1])
wheels = sorted(folder.glob("*.whl"))
problems, names, total = [], {}, 0
for wheel in wheels:
    total += wheel.stat().st_size
    # name-version(-build)?-python-abi-platform.whl
    name, version, *_, python, abi, platform = wheel.stem.split("-")
    project = re.sub(r"[-_.]+", "-", name).lower()
    names.setdefault(project, []).append(version)
    pythons, abis, platforms = set(python.split(".")), set(abi.split(".")), set(platform.split("."))
    if not pythons & {"py3", "cp312", "py312"}:
        problems.append(f"{wheel.name}: python tag {python} is not for CPython 3.12")
    if not abis & {"none", "abi3", "cp312"}:
        problems.append(f"{wheel.name}: ABI tag {abi} does not load in CPython 3.12")
    if not (platforms == {"any"} or any(p.startswith("manylinux") and p.endswith("x86_64") for p in platforms)):
        problems.append(f"{wheel.name}: platform {platform} is not x86-64 Linux")
    with zipfile.ZipFile(wheel) as z:
        metadata = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    requires = [line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    if project == "deepspeed":
        torch_pins = [r for r in requires if re.match(r"torch\b", r) and "extra ==" not in r]
        if any("==" in r or "<" in r for r in torch_pins):
            problems.append(f"{wheel.name}: pins torch ({torch_pins}); the device's torch must stay")
        if platform != "any":
            problems.append(f"{wheel.name}: DeepSpeed wheel is not pure Python ({platform})")
    print(f"  {wheel.stat().st_size / 2**20:6.2f} MiB  {wheel.name}")
for project, versions in names.items():
    if len(versions) > 1:
        problems.append(f"{project}: {len(versions)} versions ({', '.join(versions)}): pip stops on two")
for wanted in ("deepspeed", "hjson", "pydantic", "pydantic-core", "webdataset", "braceexpand", "cityscapesscripts"):
    if wanted not in names:
        problems.append(f"{wanted}: no wheel in {folder}")
if not (folder / "wds2idx.py").is_file():
    problems.append(f"wds2idx.py: missing from {folder}")
else:
    total += (folder / "wds2idx.py").stat().st_size
print(f"  {total / 2**20:6.2f} MiB  in all ({len(wheels)} wheels + wds2idx.py)")
if total > 32 * 2**20:
    problems.append(f"{total / 2**20:.1f} MiB: over half of the 64 MiB that may travel")
if problems:
    sys.exit("gpu-wheels: " + "\n  ".join(["problems:"] + problems))
print("gpu-wheels: every wheel is for CPython 3.12 on x86-64 Linux, one version each")
EOF
}

# Install the wheels as the device does (pip --target, no index, no deps) with a CPython 3.12 when this machine
# has one (PY312, else python3.12 on PATH or under pyenv), and import what needs no torch.
install_with_python312() {
    local py="" candidate
    for candidate in ${PY312:-} python3.12 "$HOME"/.pyenv/versions/3.12*/bin/python3.12; do
        if "$candidate" -c "import sys; assert sys.version_info[:2] == (3, 12)" 2>/dev/null; then
            py=$candidate
            break
        fi
    done
    if [[ -z "$py" ]]; then
        echo "gpu-wheels: no CPython 3.12 here: the --target install was not rehearsed"
        return
    fi
    local site
    site=$(mktemp -d)
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "$OUT_DIR"/*.whl
    cp "$OUT_DIR"/*.py "$site"/
    PYTHONPATH="$site" "$py" -c "
import braceexpand, hjson, pydantic, wds2idx
from cityscapesscripts.helpers.labels import labels
class Check(pydantic.BaseModel):
    x: int
assert Check(x='3').x == 3 and len(labels) == 35
print('gpu-wheels: installed with', '$py', 'into a --target folder; pydantic', pydantic.VERSION, 'validates')"
    rm -rf "$site"
}

if [[ "${1:-}" == "--verify" ]]; then
    verify
    install_with_python312
    exit
fi

test -x "$PY" || { echo "gpu-wheels: $PY not found (run make install first)" >&2; exit 1; }
version() { "$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1"; }

rm -rf "$OUT_DIR"
mkdir -p "$OUT_DIR"
pins=()
for package in "${PACKAGES[@]}"; do
    pins+=("$package==$(version "$package")")
done
echo "gpu-wheels: downloading ${pins[*]}"
"$PY" -m pip download -q --no-deps --only-binary=:all: "${TARGET[@]}" -d "$OUT_DIR" "${pins[@]}"

deepspeed="deepspeed==$(version deepspeed)"
echo "gpu-wheels: building $deepspeed (DS_BUILD_OPS=0: no compiled ops)"
DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$OUT_DIR" "$deepspeed"

wds2idx=$("$PY" -c "import wds2idx; print(wds2idx.__file__)")
cp "$wds2idx" "$OUT_DIR/wds2idx.py"

verify
install_with_python312
