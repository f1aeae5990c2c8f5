"""Sliding-window perplexity with Python onnxruntime: the peer tr118's `perplexity` stage is
compared with in bench/perplexity.sh (same model, tokenizer, corpus, windows, threads).

usage: perplexity_ort.py MODEL.onnx TOKENIZER.json CORPUS CONTEXT STRIDE MAX_TOKENS THREADS
"""
import json, math, sys, time

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

model, tok_path, corpus, context, stride, max_tokens, threads = sys.argv[1:8]
context, stride, max_tokens, threads = int(context), int(stride), int(max_tokens), int(threads)
text = "\n".join(l for l in open(corpus, encoding="utf-8").read().split("\n") if not (l.startswith("<doc") or l.startswith("</doc")))
ids = Tokenizer.from_file(tok_path).encode(text, add_special_tokens=False).ids
if max_tokens > 0:
    ids = ids[:max_tokens]
so = ort.SessionOptions()
so.intra_op_num_threads = threads
sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])

t0 = time.perf_counter()
nll, scored, prev_end, begin = 0.0, 0, 0, 0
while True:
    end = min(begin + context, len(ids))
    window = np.array([ids[begin:end]], dtype=np.int64)
    logits = sess.run(["logits"], {"input_ids": window, "attention_mask": np.ones_like(window)})[0][0].astype(np.float64)
    first = max(prev_end, begin + 1)  # targets not scored yet; the window's first token has no prediction
    if end > first:
        rows = logits[first - begin - 1 : end - begin - 1]
        m = rows.max(axis=1)
        lse = m + np.log(np.exp(rows - m[:, None]).sum(axis=1))
        targets = np.array(ids[first:end])
        nll += float((lse - rows[np.arange(len(targets)), targets]).sum())
        scored += end - first
    prev_end = end
    if end == len(ids):
        break
    begin += stride
elapsed = time.perf_counter() - t0
print(json.dumps({"tokens_scored": scored, "ppl": math.exp(nll / scored), "elapsed_s": elapsed, "tokens_per_s": scored / elapsed}))
