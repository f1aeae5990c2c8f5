"""A bare onnxruntime loop: the peer of tr118's prefill sweep. Runs the same prompt ids as the
sweep's `single_micro` records (read back from runs.jsonl's scenario, rebuilt from the model's
inputs) and prints {"mean_ms": …, "n": …} for `run` alone, timed with perf_counter.

    python bench/sweep_ort.py MODEL RUNS_JSONL THREADS ITERATIONS
"""
import json, sys, time

import numpy as np
import onnxruntime as ort

model, runs, threads, iterations = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
rec = next(json.loads(l) for l in open(runs) if json.loads(l)["scenario"] == "single_micro")
batch, seq = rec["batch"], rec["prompt_tokens"]
opts = ort.SessionOptions()
opts.intra_op_num_threads = threads
sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
# Token ids do not change a dense model's cost; positions and mask are the sweep's.
feeds = {"input_ids": np.arange(1, batch * seq + 1, dtype=np.int64).reshape(batch, seq)}
names = {i.name for i in sess.get_inputs()}
if "attention_mask" in names:
    feeds["attention_mask"] = np.ones((batch, seq), dtype=np.int64)
if "position_ids" in names:
    feeds["position_ids"] = np.tile(np.arange(seq, dtype=np.int64), (batch, 1))
for _ in range(3):
    sess.run(None, feeds)
times = []
for _ in range(iterations):
    t = time.perf_counter()
    sess.run(None, feeds)
    times.append((time.perf_counter() - t) * 1e3)
print(json.dumps({"mean_ms": sum(times) / len(times), "n": len(times)}))
