#!/usr/bin/env bash
# The device check (issue 14): on a machine with one CUDA GPU and no network, install what the
# project's own files install, run the GPU tests (`pytest -m gpu`, tests/test_gpu.py) and
# `benchmarks/gpu.py`, and leave the logs and results in $OUT. Two steps:
#
#   bash benchmarks/device_check.sh --prepare
#       HERE, with network: download (no install) the wheels the device image lacks into
#       .whl/device (gitignored): scvae's dependencies from pyproject.toml that are not in the
#       image (anndata, scanpy, igraph, leidenalg and what they import) and scvi-tools 1.4.2
#       with its missing dependencies, for CPython 3.12 on x86-64, pinned to the versions of
#       CI's environment (.venv, benchmarks/.venv-scvi). About 25 MB. Torch, lightning, numpy,
#       pandas, scipy, scikit-learn, matplotlib, h5py, numba, pytest are the image's own.
#
#   bash benchmarks/device_check.sh
#       ON THE DEVICE (the device tool's `run`, with carry [".whl/device"]): about 9 minutes
#       (install ~15 s, GPU tests ~1-2 min, gpu.py within the rest, at most 450 s). Writes
#       $OUT/{versions.txt,install.log,pytest.log,gpu.log,gpu.json,gpu.md}. Without the
#       wheels, or when scvi-tools does not import, gpu.py measures scvae alone and says so.
#       Environment: DEVICE_LIMIT_S (560: the seconds the whole script may take), GPU_BUDGET_S
#       (gpu.py's budget, default what is left, at most 450), SKIP_TESTS=1, GPU_ARGS (extra
#       gpu.py options, e.g. "--sizes 30000" for a short rerun).
set -uo pipefail
cd "$(dirname "$0")/.."
WHEELS=.whl/device

# scvae's dependencies (pyproject.toml) missing from the device image, and what they import
SCVAE_WHEELS=(
    anndata==0.12.19 scanpy==1.11.5 igraph==1.0.0 leidenalg==0.12.0 texttable==1.7.2
    array-api-compat==1.16.0 legacy-api-wrap==1.5 natsort==8.4.0 scverse-misc==0.0.3
    session-info2==0.4.1 zarr==3.1.6 donfig==0.8.1.post1 numcodecs==0.16.6
    google-crc32c==1.9.0 pynndescent==0.7.0 umap-learn==0.5.12
)
# scvi-tools (benchmarks only; never a dependency of scvae) and its missing dependencies
SCVI_WHEELS=(
    scvi-tools==1.4.2 docrep==0.3.2 ml-collections==1.1.0 mudata==0.3.10 pyro-ppl==1.9.2
    pyro-api==0.1.2 sparse==0.19.3
)

if [[ "${1:-}" == "--prepare" ]]; then
    mkdir -p "$WHEELS"
    platforms=()
    for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 \
        manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
        platforms+=(--platform "$p")
    done
    for spec in "${SCVAE_WHEELS[@]}" "${SCVI_WHEELS[@]}"; do
        # a pure-Python package published as source only (docrep) is built into a wheel here
        python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
            --implementation cp "${platforms[@]}" -d "$WHEELS" "$spec" 2>/dev/null ||
            python3 -m pip wheel --quiet --no-deps -w "$WHEELS" "$spec" 2>/dev/null ||
            { echo "no wheel for $spec" >&2; exit 1; }
    done
    ls -1 "$WHEELS"
    du -sh "$WHEELS"
    exit 0
fi

OUT=${OUT:-benchmarks/results/device}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg PIP_DISABLE_PIP_VERSION_CHECK=1
LIMIT=${DEVICE_LIMIT_S:-560}
PY=$(command -v python3)

# 1. install: the carried wheels into /tmp/site, no index, no dependency resolution (the
#    image's torch stays); scvae itself from this source tree
if compgen -G "$WHEELS/*.whl" >/dev/null; then
    "$PY" -m pip install --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site "$WHEELS"/*.whl >"$OUT/install.log" 2>&1 ||
        echo "wheel install failed (see install.log)" | tee -a "$OUT/install.log"
    export PYTHONPATH=/tmp/site:$PWD
else
    echo "no wheels in $WHEELS: run 'bash benchmarks/device_check.sh --prepare' here and" \
        "carry $WHEELS" | tee "$OUT/install.log"
    export PYTHONPATH=$PWD
fi

{
    nvidia-smi -L 2>&1
    "$PY" - <<'EOF'
import importlib
for name in ("torch", "lightning", "numpy", "pandas", "scipy", "sklearn", "h5py", "numba",
             "anndata", "scanpy", "scvae", "scvi"):
    try:
        module = importlib.import_module(name)
        print(name, getattr(module, "__version__", "?"), module.__file__)
    except Exception as err:  # noqa: BLE001 - report and go on
        print(name, "NOT IMPORTABLE:", type(err).__name__, str(err).splitlines()[0][:200])
import torch
print("cuda", torch.version.cuda, torch.cuda.is_available(),
      torch.cuda.get_device_name() if torch.cuda.is_available() else "-")
EOF
} >"$OUT/versions.txt" 2>&1
cat "$OUT/versions.txt"

# 2. the GPU tests; the dependencies' own deprecation notices on this image are not errors here
if [[ "${SKIP_TESTS:-0}" != 1 ]]; then
    timeout 200 "$PY" -m pytest -m gpu tests/test_gpu.py -q -rs -p no:cacheprovider \
        -W default::DeprecationWarning -W default::PendingDeprecationWarning \
        -W default::FutureWarning 2>&1 | tee "$OUT/pytest.log"
    echo "pytest exit: ${PIPESTATUS[0]}" | tee -a "$OUT/pytest.log"
fi

# 3. the benchmark, in what is left of the limit
left=$((LIMIT - SECONDS - 20))
budget=${GPU_BUDGET_S:-$((left < 450 ? left : 450))}
echo "gpu.py budget ${budget} s (elapsed ${SECONDS} s)"
# shellcheck disable=SC2086
timeout $((budget + 60)) "$PY" benchmarks/gpu.py --scvi-python "$PY" --budget-s "$budget" \
    --threads 4 --out-dir "$OUT" ${GPU_ARGS:-} 2>&1 | tee "$OUT/gpu.log"
echo "gpu.py exit: ${PIPESTATUS[0]}; total ${SECONDS} s" | tee -a "$OUT/gpu.log"
ls -la "$OUT"
