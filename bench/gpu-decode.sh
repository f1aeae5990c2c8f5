#!/usr/bin/env bash
# Decoding on the GPU, side by side in one run: tr118's backends (bench/gpu-decode.toml: ONNX
# Runtime's CUDA provider with the KV cache on the device, torch eager and torch.compile) and two
# peers run by bench/gpu_decode.py on the same weights and the same prompt ids: transformers'
# generate() with a static cache and torch.compile (reduce-overhead, fullgraph), and ONNX Runtime
# GenAI (its model builder's fp16 CUDA model, CUDA graphs on). Batch 1, a 27-token prompt, 128 new
# tokens, greedy, 10 repetitions. Then the card's copy bandwidth and the bound it puts on decoding
# (weight bytes per token over that bandwidth, fp32 and fp16), a table of TTFT, TPOT, tokens/s,
# speed against transformers' generate() and share of the bound, and, as the last line of stdout,
# the same as one JSON object (also in out/decode-bench/summary.json).
#
#   GENAI_WHEEL=/path/onnxruntime_genai_cuda-0.18.0-cp312-cp312-manylinux_2_28_x86_64.whl \
#   GENAI_DEPS=/path/wheels bash bench/gpu-decode.sh
#
# Run it in a workspace where `tr118 make report -p ort=out/ort-gpu/libonnxruntime.so.1.31.1`
# ran (the study's export and the GPU build of ONNX Runtime are reused from the cache), on a
# machine with a CUDA GPU, torch and transformers (TR118_PYTHON or python3), and the CUDA 13
# libraries on LD_LIBRARY_PATH. TR118 names the binary (default target/release/tr118).
# GENAI_WHEEL is the onnxruntime-genai-cuda wheel (no network needed: the script unpacks it);
# GENAI_DEPS, wheels its model builder needs that the Python lacks (onnx_ir, onnx, ml_dtypes);
# ORT_GPU_DIR, the GPU build of ONNX Runtime GenAI loads (default out/ort-gpu). Without them,
# or without torch, a peer is reported degraded with the reason. BENCH_PROFILE=1 adds a
# torch.profiler profile of eager decode steps; the other settings are in gpu_decode.py's header.
set -euo pipefail
tr118=${TR118:-target/release/tr118}
python=${TR118_PYTHON:-python3}
here=$(cd "$(dirname "$0")" && pwd)
"$tr118" -f "$here/gpu-decode.toml" make decode-bench
"$python" "$here/gpu_decode.py" .
