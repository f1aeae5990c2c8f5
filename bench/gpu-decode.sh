#!/usr/bin/env bash
# Decoding on the GPU, side by side in one run: ONNX Runtime's CUDA provider (KV cache kept on
# the device through I/O binding), torch eager and torch.compile on the same weights, batch 1,
# a 27-token prompt and 128 new tokens, 10 repetitions; then the card's copy bandwidth, the bound it
# puts on fp32 decoding (weight bytes per token over that bandwidth), and a torch.profiler
# profile of an eager decode step.
#
#   bash bench/gpu-decode.sh
#
# Run it in a workspace where `tr118 make report -p ort=out/ort-gpu/libonnxruntime.so.1.31.1`
# ran (the study's export and the GPU build of ONNX Runtime are reused from the cache), on a
# machine with a CUDA GPU, torch and transformers (TR118_PYTHON or python3), and the CUDA 13
# libraries on LD_LIBRARY_PATH. TR118 names the binary (default target/release/tr118).
set -euo pipefail
tr118=${TR118:-target/release/tr118}
python=${TR118_PYTHON:-python3}
here=$(cd "$(dirname "$0")" && pwd)
"$tr118" -f "$here/gpu-decode.toml" make decode-bench graph-bench
"$python" "$here/gpu_decode.py" .
