#!/usr/bin/env bash
# tr118's exporter beside torch.onnx.export on one machine, for a model of SmolLM2-135M's shape
# (random weights). Needs python3 with torch and transformers; run from the repo root:
#   cargo build --release && bash bench/export-vs-torch.sh
set -euo pipefail
BIN="$(readlink -f "${TR118_BIN:-target/release/tr118}")"
W="$(mktemp -d)"; cd "$W"
python3 - <<'PY'
import json, time, torch, transformers
from transformers import LlamaConfig, LlamaForCausalLM
cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                  num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                  rms_norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=True)
torch.manual_seed(0)
m = LlamaForCausalLM(cfg).eval()
m.save_pretrained("smol", safe_serialization=True)
class Logits(torch.nn.Module):
    # The HF model returns a cache object by default; an export wants logits only.
    def __init__(self, m):
        super().__init__(); self.m = m
    def forward(self, input_ids):
        return self.m(input_ids=input_ids, use_cache=False).logits
w = Logits(m).eval()
ids = torch.ones(1, 16, dtype=torch.long)
res = {"torch": torch.__version__, "transformers": transformers.__version__}
for dynamo in (False, True):
    t = time.time()
    try:
        torch.onnx.export(w, (ids,), f"torch_{'dynamo' if dynamo else 'legacy'}.onnx", input_names=["input_ids"],
                          output_names=["logits"], dynamic_axes={"input_ids": {0: "batch", 1: "sequence"}},
                          opset_version=18 if dynamo else 17, dynamo=dynamo)
        if dynamo:
            import os; res["torch_dynamo_files"] = sorted(os.listdir("."))
        res[f"torch_onnx_export_{'dynamo' if dynamo else 'legacy'}_s"] = round(time.time() - t, 3)
    except Exception as e:
        res[f"torch_onnx_export_{'dynamo' if dynamo else 'legacy'}_error"] = str(e)[:300]
print("TORCH", json.dumps(res))
PY
cat > tr118.toml <<'T'
[stages.export]
kind = "export"
deps = { checkpoint = "smol" }
variants = ["prefill"]
tokenizer = false
T
/usr/bin/time -f "tr118 make: %e s wall, max RSS %M KB" "$BIN" make
python3 -c "import json; v=json.load(open('out/export/export.json'))['variants'][0]; print('TR118', json.dumps({k: v[k] for k in ('export_ms','file_bytes','node_count')}))"
nproc; nvidia-smi --query-gpu=name --format=csv,noheader
