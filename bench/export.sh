#!/usr/bin/env bash
# Export time and peak memory for SmolLM2-135M (GGUF → fp32 ONNX, prefill and decoder), with
# the study's own pinned assets. Run from the repo root:
#
#   bash bench/export.sh
#
# The model is fetched first (not timed); then `tr118 make export` is timed as a whole node
# (export, hashing and committing ~1 GB of outputs to the cache) and the export manifest
# gives the exporter's own time per variant. The last line is one JSON object.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cargo build --release --quiet --manifest-path "$root/Cargo.toml"
bin="$root/target/release/tr118"
work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT
mkdir -p "$work/pipelines" && cp "$root/pipelines/tr118.toml" "$work/pipelines/" && cp -r "$root/templates" "$work/"
cd "$work"
"$bin" make model >/dev/null 2>&1
/usr/bin/time -f "%e %M" -o time.txt "$bin" make export >/dev/null 2>&1
read -r wall rss_kb < time.txt
python3 - "$wall" "$rss_kb" <<'PY'
import json, sys
wall, rss_kb = float(sys.argv[1]), int(sys.argv[2])
m = json.load(open("out/export/export.json"))
v = {x["variant"]: x for x in m["variants"]}
fp32 = v["prefill"]["initializer_bytes"]
res = {"model": "SmolLM2-135M-Instruct Q4_1 GGUF", "prefill_export_ms": v["prefill"]["export_ms"], "decoder_export_ms": v["decoder"]["export_ms"],
       "export_ms": round(v["prefill"]["export_ms"] + v["decoder"]["export_ms"], 1), "node_wall_s": wall,
       "peak_rss_mb": round(rss_kb / 1024), "fp32_weights_mb": round(fp32 / 2**20), "rss_over_fp32": round(rss_kb * 1024 / fp32, 2)}
print(f"export: prefill {res['prefill_export_ms']:.0f} ms + decoder {res['decoder_export_ms']:.0f} ms; whole node {wall:.2f} s; "
      f"peak RSS {res['peak_rss_mb']} MB = {res['rss_over_fp32']}x the fp32 weights")
print("reproduce: bash bench/export.sh")
print(json.dumps(res))
PY
