#!/usr/bin/env bash
# TensorRT for RTX plan builds for SmolLM2-135M, per precision and variant: build time, plan
# size, the builder's peak memory and the layer census, on whatever machine runs it (no GPU
# needed). Run from the repo root:
#
#   bash bench/trt-rtx.sh
#
# The default pipeline's assets, exports, calibration and static INT8 model are made first (not
# timed); then `tr118 make trt_build trt_build-decoder -j 1` builds the six plans one at a
# time, so that each build has the machine to itself and its peak memory is its own. Each
# plan's figures come from its `build.json`. The peer in the same run is the fp32 export of the
# same model (`export.json`'s prefill `export_ms`), the other compile step of the study; the
# original study's trtexec builds of GPT-2 124M on an RTX 4080 Laptop (74.8 / 162.7 / 93.6 s for
# fp32 / fp16 / int8) are printed beside, for scale only: another model, builder and machine.
# The last line is one JSON object.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
# TR118_BIN=path uses that binary instead of building target/release/tr118.
if [ -z "${TR118_BIN:-}" ]; then cargo build --release --quiet --manifest-path "$root/Cargo.toml"; fi
bin="${TR118_BIN:-$root/target/release/tr118}"
work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT
mkdir -p "$work/pipelines" && cp "$root/pipelines/tr118.toml" "$work/pipelines/" && cp -r "$root/templates" "$work/"
cd "$work"
"$bin" make export export-fp16 quantize-static tensorrt-rtx tensorrt-rtx-py311 tensorrt-rtx-py312 >/dev/null 2>&1
"$bin" make -j 1 trt_build trt_build-decoder >/dev/null 2>&1
python3 - "$(nproc)" <<'PY'
import json, sys
study = {"fp32": 74.8, "fp16": 162.7, "int8": 93.6}
export = {v["variant"]: v for v in json.load(open("out/export/export.json"))["variants"]}
export_s = export["prefill"]["export_ms"] / 1000
rows = []
print(f"TensorRT for RTX plans of SmolLM2-135M on {sys.argv[1]} CPUs, no GPU; the fp32 export of the prefill took {export_s:.2f} s\n")
print("| plan | build s | builder s | plan MB | peak MiB | layers | FP16 | INT8 | build / export | original study (trtexec, GPT-2, RTX 4080 Laptop) |")
print("|---|---|---|---|---|---|---|---|---|---|")
for stage in ("trt_build", "trt_build-decoder"):
    for p in ("fp32", "fp16", "int8"):
        b = json.load(open(f"out/{stage}/{p}/build.json"))
        lp = b["layers_by_precision"] or {}
        row = {"plan": f"{stage}/{p}", "status": b["status"], "version": b["trt_version"], "build_s": round(b["build_s"], 2),
               "engine_build_s": b["engine_build_s"], "plan_mb": round(b["plan_bytes"] / 1e6, 1), "peak_build_mib": round(b["peak_build_mib"]),
               "layers": b["n_layers"], "fp16_layers": lp.get("fp16"), "int8_layers": lp.get("int8"), "build_over_export": round(b["build_s"] / export_s, 1)}
        rows.append(row)
        ref = f"{study[p]} s" if stage == "trt_build" else ""
        print(f"| {row['plan']} | {row['build_s']} | {row['engine_build_s']} | {row['plan_mb']} | {row['peak_build_mib']} | {row['layers']} | {row['fp16_layers']} | {row['int8_layers']} | {row['build_over_export']}× | {ref} |")
print("\nreproduce: bash bench/trt-rtx.sh")
print(json.dumps({"export_s": export_s, "plans": rows}))
PY
