#!/usr/bin/env bash
# Perplexity throughput of SmolLM2-135M fp32 on this CPU: tr118's `perplexity` stage, and the
# same windows driven from Python `onnxruntime` in the same run (same model file, tokenizer,
# corpus, ONNX Runtime version and thread count), reported as a ratio. Run from the repo root:
#
#   bash bench/perplexity.sh [MAX_TOKENS] [CONTEXT]      # defaults 4096 512
#
# Python's onnxruntime, tokenizers and numpy are installed into bench/.venv when missing.
# The last line is one JSON object.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
max_tokens=${1:-4096}
context=${2:-512}
threads=2
cargo build --release --quiet --manifest-path "$root/Cargo.toml"
bin="$root/target/release/tr118"
py=python3
if ! $py -c "import onnxruntime, tokenizers, numpy" 2>/dev/null; then
    [ -x "$root/bench/.venv/bin/python" ] || python3 -m venv "$root/bench/.venv"
    "$root/bench/.venv/bin/python" -m pip install --quiet onnxruntime==1.31.1 tokenizers numpy
    py="$root/bench/.venv/bin/python"
fi
work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT
mkdir -p "$work/pipelines" && cp -r "$root/templates" "$work/"   # the study's report stage reads them
sed -e "s/^max_tokens = .*/max_tokens = $max_tokens/" -e "s/^context = .*/context = $context/" "$root/pipelines/tr118.toml" > "$work/pipelines/tr118.toml"
cd "$work"
"$bin" make export >/dev/null 2>&1
"$bin" make perplexity/onnxruntime-cpu >/dev/null 2>&1
ours=$(python3 -c "import json; d=json.load(open('out/perplexity/onnxruntime-cpu/perplexity.json')); print(json.dumps({k: d[k] for k in ('tokens_scored','ppl','elapsed_s','tokens_per_s')}))")
peer=$($py "$root/bench/perplexity_ort.py" out/export/prefill/model.onnx out/export/tokenizer.json out/corpus/wiki.utf8 "$context" $((context / 2)) "$max_tokens" "$threads")
python3 - "$ours" "$peer" "$context" "$max_tokens" <<'PY'
import json, sys
ours, peer = json.loads(sys.argv[1]), json.loads(sys.argv[2])
res = {"context": int(sys.argv[3]), "max_tokens": int(sys.argv[4]), "tr118_tokens_per_s": round(ours["tokens_per_s"], 1),
       "python_ort_tokens_per_s": round(peer["tokens_per_s"], 1), "ratio": round(ours["tokens_per_s"] / peer["tokens_per_s"], 3),
       "tr118_ppl": ours["ppl"], "python_ort_ppl": peer["ppl"], "tokens_scored": ours["tokens_scored"]}
print(f"perplexity throughput at context {res['context']}: tr118 {res['tr118_tokens_per_s']} tokens/s, Python onnxruntime "
      f"{res['python_ort_tokens_per_s']} tokens/s (ratio {res['ratio']}); PPL {ours['ppl']:.4f} vs {peer['ppl']:.4f}")
print("reproduce: bash bench/perplexity.sh", res["max_tokens"], res["context"])
print(json.dumps(res))
PY
