#!/usr/bin/env bash
# Build TRAK's fast_jl CUDA extension for the local GPU, to time it beside linop's Triton kernel
# (python -m benchmarks.projection --device cuda). Needs nvcc and torch with CUDA.
#
#   bash benchmarks/build_fast_jl.sh [path/to/fast_jl-0.1.3.tar.gz]
#
# Without an argument the source package is fetched from the package index (pip download); on a
# machine with no network, pass a copy of the .tar.gz. Its setup.py pins TORCH_CUDA_ARCH_LIST to
# "7.0+PTX", which CUDA 13 no longer builds; the local GPU's architecture is used instead.
set -euo pipefail
work="$(mktemp -d)"
sdist="${1:-}"
if [ -z "$sdist" ]; then
    python -m pip download --no-deps --no-binary :all: --no-build-isolation -d "$work" fast_jl==0.1.3 ||
        { echo "could not download fast_jl; pass the .tar.gz" >&2; exit 1; }
    sdist="$(ls "$work"/fast_jl-*.tar.gz)"
fi
tar -xzf "$sdist" -C "$work"
src="$(ls -d "$work"/fast_jl-*/)"
arch="$(python -c 'import torch; print("{}.{}".format(*torch.cuda.get_device_capability()))')"
sed -i "s/environ\['TORCH_CUDA_ARCH_LIST'\]=.*/environ['TORCH_CUDA_ARCH_LIST']='${arch}'/" "$src/setup.py"
grep -q "TORCH_CUDA_ARCH_LIST'\]='${arch}'" "$src/setup.py" || { echo "setup.py changed; check its arch line" >&2; exit 1; }
python -m pip install --no-deps --no-build-isolation "$src"
python -c "import fast_jl; print('fast_jl built for sm_${arch/./}')"
