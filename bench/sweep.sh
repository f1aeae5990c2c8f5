#!/usr/bin/env bash
# The `sweep` stage on SmolLM2-135M fp32 on this CPU, three figures in one run:
#
#   1. generate with the KV cache vs `generate_uncached` at N new tokens (target ≥ 10× tokens/s);
#   2. cached decode tokens/s as a fraction of the memory-bandwidth bound: weight bytes read
#      per token (the export's initializer bytes) over the copy bandwidth `examples/membw.rs`
#      measures;
#   3. the harness's cost: per-iteration time outside the clock (`sweep.json` → harness), and
#      the measured prefill latency next to a bare Python onnxruntime `run` loop over the same
#      model, inputs, threads and library version.
#
#   bash bench/sweep.sh [NEW_TOKENS] [REPS] [PROMPT_TOKENS]     # defaults 64 5 27
#
# The KV cache's advantage grows with the prompt: without a cache each new token costs a
# forward pass over the prompt and everything generated so far.
#
# It copies the default pipeline into a temp dir (assets are fetched from the registries) and
# adds one stage. The last line is one JSON object.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
new_tokens=${1:-64}
reps=${2:-5}
prompt=${3:-27}
threads=2
cargo build --release --quiet --manifest-path "$root/Cargo.toml" --bin tr118 --example membw
bin="$root/target/release/tr118"
py=python3
if ! $py -c "import onnxruntime, numpy" 2>/dev/null; then
    [ -x "$root/bench/.venv/bin/python" ] || python3 -m venv "$root/bench/.venv"
    "$root/bench/.venv/bin/python" -m pip install --quiet onnxruntime==1.31.1 tokenizers numpy
    py="$root/bench/.venv/bin/python"
fi
work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT
mkdir -p "$work/pipelines"
cp "$root/pipelines/tr118.toml" "$work/pipelines/tr118.toml" && cp -r "$root/templates" "$work/"   # the study's report stage reads them
cat >> "$work/pipelines/tr118.toml" <<TOML

[stages.bench]
kind = "sweep"
matrix = { backend = "backend", mode = ["prefill", "generate", "generate_uncached"] }
mode = "{matrix.mode}"
deps = { prefill = "out/export/prefill", decoder = "out/export/decoder", tokenizer = "out/export/tokenizer.json", corpus = "out/corpus/wiki.utf8", runtime = "out/ort/libonnxruntime.so.1.31.1" }
warmup = 1
reps = $reps
scenarios = [{ name = "decode", batch = 1, prompt_tokens = $prompt, new_tokens = $new_tokens }, { name = "single_micro", batch = 1, prompt_tokens = 8, new_tokens = 8 }]
TOML
cd "$work"
"$bin" make export >/dev/null 2>&1
for mode in prefill generate generate_uncached; do "$bin" make "bench/onnxruntime-cpu/$mode" >/dev/null 2>&1; done
bw=$("$root/target/release/examples/membw" 512 "$threads" | tail -1)
peer=$($py "$root/bench/sweep_ort.py" out/export/prefill/model.onnx out/bench/onnxruntime-cpu/prefill/runs.jsonl "$threads" 200)
python3 - "$bw" "$peer" "$new_tokens" "$reps" "$prompt" <<'PY'
import json, sys, statistics as st
bw, peer, new_tokens, reps, prompt = json.loads(sys.argv[1]), json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
def runs(mode): return [json.loads(l) for l in open(f"out/bench/onnxruntime-cpu/{mode}/runs.jsonl")]
def of(mode, scenario, field): return [r[field] for r in runs(mode) if r["scenario"] == scenario and r["status"] == "ok"]
cached, uncached = st.mean(of("generate", "decode", "throughput")), st.mean(of("generate_uncached", "decode", "throughput"))
tpot = st.mean(of("generate", "decode", "tpot_ms"))
weights = next(v["initializer_bytes"] for v in json.load(open("out/export/export.json"))["variants"] if v["variant"] == "decoder")
bound = bw["copy_gb_s"] * 1e9 / weights
decode_tps = 1e3 / tpot
harness = json.load(open("out/bench/onnxruntime-cpu/prefill/sweep.json"))["harness"]
ours_prefill = st.mean(of("prefill", "single_micro", "latency_ms"))
res = {"prompt_tokens": prompt, "new_tokens": new_tokens, "reps": reps,
       "generate_tokens_per_s": round(cached, 2), "generate_uncached_tokens_per_s": round(uncached, 2), "kv_speedup": round(cached / uncached, 2),
       "decode_tpot_ms": round(tpot, 2), "decode_tokens_per_s": round(decode_tps, 2), "weight_bytes_per_token": weights,
       "copy_gb_s": bw["copy_gb_s"], "bandwidth_bound_tokens_per_s": round(bound, 2), "fraction_of_bound": round(decode_tps / bound, 3),
       "harness_overhead_per_iteration_us": round(harness["overhead_per_iteration_us"], 1),
       "tr118_prefill_single_micro_ms": round(ours_prefill, 3), "bare_ort_prefill_single_micro_ms": round(peer["mean_ms"], 3),
       "prefill_ratio_tr118_over_bare": round(ours_prefill / peer["mean_ms"], 3)}
print(f"generate at {new_tokens} new tokens after {prompt} prompt tokens: KV cache {res['generate_tokens_per_s']} tokens/s vs uncached {res['generate_uncached_tokens_per_s']} tokens/s ({res['kv_speedup']}x)")
print(f"decode: {res['decode_tokens_per_s']} tokens/s = {res['fraction_of_bound']:.0%} of the bound {res['bandwidth_bound_tokens_per_s']} tokens/s "
      f"({weights / 1e6:.0f} MB of weights per token over {bw['copy_gb_s']} GB/s copy bandwidth)")
print(f"harness: {res['harness_overhead_per_iteration_us']} us per iteration outside the clock; single_micro prefill "
      f"{res['tr118_prefill_single_micro_ms']} ms vs bare onnxruntime loop {res['bare_ort_prefill_single_micro_ms']} ms (ratio {res['prefill_ratio_tr118_over_bare']})")
print("reproduce: bash bench/sweep.sh", new_tokens, reps, prompt)
print(json.dumps(res))
PY
