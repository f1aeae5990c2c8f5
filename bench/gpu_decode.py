"""The GPU decode benchmark's numbers: the sweeps' tokens/s side by side, the card's copy
bandwidth and the bound it puts on decoding, and a profile of where a decode step's time goes.

    python3 bench/gpu_decode.py WORKSPACE

Reads `out/decode-bench/*/{prefill,generate}/sweep.json` and `runs.jsonl` (written by
`tr118 make -f bench/gpu-decode.toml`), and `out/export/export.json` for the weight bytes.
Run by bench/gpu-decode.sh.
"""

import json
import statistics
import sys
import time
from pathlib import Path


def bandwidth_gbs():
    """Device-to-device copy of 4 GiB, bytes read plus written per second (median of 10)."""
    import torch

    n = 1 << 30  # float32 elements: 4 GiB
    a = torch.empty(n, dtype=torch.float32, device="cuda")
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    torch.cuda.synchronize()
    times = []
    for _ in range(10):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        b.copy_(a)
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e) / 1e3)
    del a, b
    torch.cuda.empty_cache()
    return 2 * 4 * n / statistics.median(times) / 1e9


def profile_torch_decode(hf_dir, steps=32, prompt=27):
    """torch.profiler over `steps` eager decode steps: CUDA kernels per token and the GPU time
    they account for, against the wall time per token."""
    import torch
    import transformers
    from torch.profiler import ProfilerActivity, profile

    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32, local_files_only=True).to("cuda").eval()
    ids = torch.arange(1, prompt + 1, device="cuda").view(1, prompt)
    with torch.inference_mode():
        for _ in range(2):
            cache = transformers.DynamicCache(config=model.config)
            out = model(input_ids=ids, past_key_values=cache, use_cache=True)
            nxt = out.logits[:, -1:].argmax(-1)
            for _ in range(steps):
                out = model(input_ids=nxt, past_key_values=cache, use_cache=True)
                nxt = out.logits[:, -1:].argmax(-1)
        torch.cuda.synchronize()
        cache = transformers.DynamicCache(config=model.config)
        out = model(input_ids=ids, past_key_values=cache, use_cache=True)
        nxt = out.logits[:, -1:].argmax(-1)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            t0 = time.perf_counter()
            for _ in range(steps):
                out = model(input_ids=nxt, past_key_values=cache, use_cache=True)
                nxt = out.logits[:, -1:].argmax(-1)
            torch.cuda.synchronize()
            wall = (time.perf_counter() - t0) / steps
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    gpu_us = sum(e.device_time for e in kernels) / steps
    top = {}
    for e in kernels:
        top[e.name] = top.get(e.name, 0) + e.device_time
    return {
        "wall_us_per_token": wall * 1e6,
        "kernels_per_token": len(kernels) / steps,
        "gpu_kernel_us_per_token": gpu_us,
        "gpu_busy_share": gpu_us / (wall * 1e6),
        "top_kernels_us_per_token": sorted(((v / steps, k[:70]) for k, v in top.items()), reverse=True)[:5],
    }


def median(xs):
    return statistics.median(xs) if xs else None


def main():
    ws = Path(sys.argv[1])
    export = json.loads((ws / "out/export/export.json").read_text())
    weight_bytes = next(v["initializer_bytes"] for v in export["variants"] if v.get("variant", v.get("name")) == "decoder") if isinstance(export.get("variants"), list) else None
    rows = []
    for node in sorted((ws / "out/decode-bench").glob("*/generate/runs.jsonl")):
        backend = node.parent.parent.name
        recs = [json.loads(l) for l in node.read_text().splitlines()]
        ok = [r for r in recs if r["status"] == "ok"]
        pre = ws / "out/decode-bench" / backend / "prefill/runs.jsonl"
        pre_ok = [json.loads(l) for l in pre.read_text().splitlines()] if pre.exists() else []
        pre_ok = [r for r in pre_ok if r["status"] == "ok"]
        tpot = median([r["tpot_ms"] for r in ok])
        rows.append({
            "backend": backend,
            "ok": f"{len(ok)}/{len(recs)}",
            "reason": None if ok else (recs[0].get("reason") if recs else None),
            "prefill_ms": median([r["latency_ms"] for r in pre_ok]),
            "ttft_ms": median([r["ttft_ms"] for r in ok]),
            "tpot_ms": tpot,
            "decode_tok_s": 1e3 / tpot if tpot else None,
        })
    graph = ws / "out/graph-bench/onnxruntime-gpu-graph/runs.jsonl"
    if graph.exists():
        g = [json.loads(l) for l in graph.read_text().splitlines()]
        g_ok = [r["latency_ms"] for r in g if r["status"] == "ok"]
        plain = next((r["prefill_ms"] for r in rows if r["backend"] == "onnxruntime-gpu"), None)
        print(f"onnxruntime-gpu prefill (1 x 27): {plain} ms plain, {median(g_ok)} ms with a CUDA graph" + ("" if g_ok else f" (degraded: {g[0].get('reason')})"))
    bw = bandwidth_gbs()
    bound = bw * 1e9 / weight_bytes if weight_bytes else None
    eager = next((r["decode_tok_s"] for r in rows if r["backend"] == "torch-eager"), None)
    print(f"copy bandwidth (read + write): {bw:.0f} GB/s; fp32 weights {weight_bytes / 1e6:.1f} MB per token -> bound {bound:.0f} tokens/s" if bound else f"copy bandwidth {bw:.0f} GB/s")
    print(f"{'backend':24} {'ok':>7} {'prefill ms':>10} {'TTFT ms':>8} {'TPOT ms':>8} {'tok/s':>8} {'vs eager':>8} {'of bound':>8}")
    for r in rows:
        f = lambda v, p=3: "—" if v is None else f"{v:.{p}f}"
        ratio = r["decode_tok_s"] / eager if r["decode_tok_s"] and eager else None
        share = r["decode_tok_s"] / bound if r["decode_tok_s"] and bound else None
        print(f"{r['backend']:24} {r['ok']:>7} {f(r['prefill_ms'])} {f(r['ttft_ms'])} {f(r['tpot_ms'])} {f(r['decode_tok_s'], 1)} {f(ratio, 2)}x {f(share * 100 if share else None, 1)}%")
        if r["reason"]:
            print(f"    degraded: {r['reason'][:200]}")
    prof = profile_torch_decode(str(ws / "out/export/hf"))
    print("torch eager decode profile (torch.profiler, 32 steps):", json.dumps(prof, indent=1))
    json.dump({"bandwidth_gbs": bw, "weight_bytes": weight_bytes, "bound_tok_s": bound, "rows": rows, "torch_eager_profile": prof}, open(ws / "out/decode-bench/summary.json", "w"), indent=1)


if __name__ == "__main__":
    main()
