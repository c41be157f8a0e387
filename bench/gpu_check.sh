#!/usr/bin/env bash
# The GPU check, in one go (< 8 minutes on a bare GPU machine): sfp_core's CUDA tests, then windows/s
# and images/s of SFP in fp32, fp16 and bf16 against the fused-forward floor, with the card's name.
#
#   bench/gpu_check.sh                      on a GPU machine (PyTorch, pyarrow, fsspec, Pillow installed)
#   bench/gpu_check.sh --device cpu --quick the same script checked on CPU (CI, laptops)
#
# The machine needs no network: the other packages sfp_core imports come as wheels from
# $SFP_WHEELS (default bench/wheels), made beforehand with
#   pip download -d bench/wheels open_clip_torch pydantic pyyaml safetensors ftfy regex huggingface_hub timm
# Ray's wheel is too large to bring, so the Ray pipeline is not timed here (bench/pipeline_throughput.py).
set -euo pipefail
cd "$(dirname "$0")/.."

device=cuda
quick=0
while [ $# -gt 0 ]; do
  case "$1" in
    --device) device="$2"; shift 2 ;;
    --quick) quick=1; shift ;;
    *) echo "usage: bench/gpu_check.sh [--device cuda|cpu] [--quick]" >&2; exit 2 ;;
  esac
done

python=${PYTHON:-python3}
if ! "$python" -c "import open_clip, pydantic, yaml, safetensors" 2>/dev/null; then
  wheels=${SFP_WHEELS:-bench/wheels}
  if [ ! -d "$wheels" ]; then
    echo "gpu_check: open_clip / pydantic missing and no wheels in $wheels (see the header of this script)" >&2
    exit 2
  fi
  "$python" -m pip install -q --no-index --find-links "$wheels" open_clip_torch pydantic pyyaml safetensors
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

"$python" - "$device" <<'PY'
import sys, torch
device = sys.argv[1]
if device == "cuda" and not torch.cuda.is_available():
    sys.exit("gpu_check: --device cuda but torch sees no CUDA device")
name = torch.cuda.get_device_name(0) if device == "cuda" else "CPU"
print(f"device: {name}; torch {torch.__version__}")
PY

echo "== sfp_core CUDA tests (skipped without CUDA)"
"$python" -m pytest -q --noconftest -p no:cacheprovider tests/sfp_core/test_cuda.py

if [ "$quick" = 1 ]; then
  sizes=(--arch SFP-Tiny-16 --images 2 --batch 2 --repeats 1 --height 240 --width 320)
else
  sizes=(--arch ViT-B-16 --images 16 --batch 8 --repeats 3)
fi
mkdir -p bench/results
for precision in fp32 fp16 bf16; do
  if [ "$device" = cpu ] && [ "$precision" != fp32 ]; then
    continue  # fp16 / bf16 autocast are CUDA settings (tests/sfp_core/test_precision.py covers bf16 on CPU)
  fi
  echo "== SFP $precision on $device"
  "$python" bench/sfp_throughput.py --device "$device" --precision "$precision" "${sizes[@]}" \
    --out "bench/results/gpu_check_${device}_${precision}.json"
done
