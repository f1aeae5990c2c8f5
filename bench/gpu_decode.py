"""The GPU decode benchmark's numbers: tr118's backends beside two peers measured in the same run,
against the bound that the card's memory bandwidth puts on decoding.

    python3 bench/gpu_decode.py WORKSPACE

Batch 1, greedy, the sweep's scenario (a 27-token prompt, 128 new tokens in bench/gpu-decode.toml).

tr118's backends: every `out/decode-bench/<backend>/generate/` node (written by
`tr118 make -f bench/gpu-decode.toml`): the median TTFT and TPOT of its `runs.jsonl` records,
its precision and generated ids from `sweep.json`, its prefill from `prefill/runs.jsonl`.

The peers, each in a child process (a crash or a hang is that peer's reason, not the run's end):

- `hf-generate-compile`: transformers' own `model.generate()` on the export's Hugging Face
  directory (`out/export/hf`, float32, TF32 off), with a static cache and
  `CompileConfig(mode="reduce-overhead", fullgraph=True)`, greedy, min_new_tokens =
  max_new_tokens so it never stops early, and no end-of-sequence id, so that nothing is
  suppressed either: the same argmax loop as tr118's. Warm-up calls first (they compile), then
  the timed ones. TTFT is the median time of a 1-token generate(), TPOT is (median time of the
  full generate() − TTFT) / (new tokens − 1).
- `onnxruntime-genai`: ONNX Runtime GenAI's model builder (`-p fp16 -e cuda`; its fp32 CUDA
  model fails to load, "Graph output (present.0.key) does not exist") on a copy of the same
  directory, CUDA graphs on (`enable_cuda_graph` in genai_config.json), then a Python loop of
  `generate_next_token()`: TTFT is the time to the first token (the prompt appended and its
  token picked), TPOT the mean of the rest; medians over the repetitions. The end-of-sequence
  id is taken out of genai_config.json, so it never stops early and suppresses nothing.

Both are fed the sweep's own prompt: the sweep does not write its prompt, so it is rebuilt here
as the sweep builds it (src/stage/sweep.rs, `prompt_tokens`): the corpus with `<doc` lines
removed, cut to a prefix, tokenized by `out/export/tokenizer.json` without special tokens, the
first `prompt_tokens` ids. Each peer's generated ids are compared with the reference backend's
(`sweep.json`'s `output_ids`).

The bound: weight bytes per token over the device-to-device copy bandwidth measured in the run.
The bandwidth counts bytes read plus bytes written (a copy of N bytes moves 2N through the
memory), i.e. what the memory sustains; a decode step only reads its weights, at up to that
rate, so bound_ms = weight bytes / bandwidth is the least time a token can take. fp32 bytes are
the decoder's initializers in `out/export/export.json`; fp16 those of `out/export-fp16/export.json`
when the workspace has it, else half the fp32 bytes.

The peers' inputs and builds (unpacked wheels, the GenAI model, rebuilt only when the export
changes) are kept in out/gpu-decode-peers/.

The last line of stdout is one JSON object: {"gpu", "bound_ms": {"fp32", "fp16"},
"bandwidth_gbs", "backends": {name: {"precision", "tpot_ms", "ttft_ms", "tok_s", "of_bound",
"ids_match_reference", "ids_agreement", "reason"}}, ...}; it is also written to out/decode-bench/summary.json.
A backend or peer that could not run has null timings and its reason, never a made-up number.

Environment:
  BENCH_DEVICE        cuda (default) or cpu (a smoke test: CPU torch, the CPU GenAI package, fp32)
  BENCH_REPS          timed repetitions of each peer (default: the sweep's reps, else 10)
  BENCH_WARMUP        untimed warm-up calls of each peer (default: the sweep's warm-up, else 3)
  BENCH_REFERENCE     the tr118 backend whose ids the others are compared with (default:
                      onnxruntime-gpu if it has ids, else the first fp32 backend that has)
  BENCH_PROFILE=1     also profile 32 eager torch decode steps with torch.profiler
  BENCH_SKIP          comma-separated peers not to run (hf-generate-compile, onnxruntime-genai)
  GENAI_WHEEL         the onnxruntime-genai(-cuda) 0.18.0 wheel (or a folder it is unpacked in);
                      without it, an importable onnxruntime_genai is used, else the peer is degraded
  GENAI_DEPS          wheels (files or folders of them, separated by ':') the model builder
                      needs and the Python lacks, e.g. onnx_ir, onnx, ml_dtypes
  ORT_GPU_DIR         the GPU build of ONNX Runtime: a folder with onnxruntime/capi/libonnxruntime.so.*
                      (and the CUDA provider beside it), or with the libraries themselves; default
                      out/ort-gpu, where the pipeline fetched them. GenAI loads the ONNX Runtime of
                      the first importable `onnxruntime` package, so a package made of these
                      libraries and an empty __init__.py goes first on its path
  BENCH_HF_TIMEOUT, BENCH_GENAI_BUILD_TIMEOUT, BENCH_GENAI_TIMEOUT   seconds (1800, 1200, 900)
"""

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
import zipfile
from pathlib import Path

HF_PEER = "hf-generate-compile"
GENAI_PEER = "onnxruntime-genai"


def env_int(name, default):
    v = os.environ.get(name)
    return int(v) if v else default


def device():
    return os.environ.get("BENCH_DEVICE", "cuda")


def median(xs):
    return statistics.median(xs) if xs else None


# ---------------------------------------------------------------------------------------------
# The bound


def bandwidth_gbs(dev="cuda"):
    """Device-to-device copy of 4 GiB, bytes read plus written per second (median of 10)."""
    import torch

    n = (1 << 30) if dev == "cuda" else (1 << 26)  # float32 elements: 4 GiB (256 MiB on a CPU)
    a = torch.empty(n, dtype=torch.float32, device=dev)
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    sync()
    times = []
    for _ in range(10):
        if dev == "cuda":
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            b.copy_(a)
            e.record()
            torch.cuda.synchronize()
            times.append(s.elapsed_time(e) / 1e3)
        else:
            t0 = time.perf_counter()
            b.copy_(a)
            times.append(time.perf_counter() - t0)
    del a, b
    if dev == "cuda":
        torch.cuda.empty_cache()
    return 2 * 4 * n / statistics.median(times) / 1e9


def device_name(dev):
    import torch

    if dev == "cuda":
        return torch.cuda.get_device_name()
    import platform

    return f"cpu ({platform.processor() or platform.machine()})"


def decoder_bytes(export_json):
    """The decoder's initializer bytes in an export.json, or None."""
    if not export_json.exists():
        return None
    variants = json.loads(export_json.read_text()).get("variants")
    if not isinstance(variants, list):
        return None
    by = {v.get("variant", v.get("name")): v.get("initializer_bytes") for v in variants if isinstance(v, dict)}
    return next((by[k] for k in ("decoder", "decoder_fixed", "prefill") if by.get(k)), None)


def weight_bytes(ws):
    fp32 = decoder_bytes(ws / "out/export/export.json")
    fp16 = decoder_bytes(ws / "out/export-fp16/export.json")
    src16 = "out/export-fp16/export.json"
    if fp16 is None and fp32 is not None:
        fp16, src16 = fp32 / 2, "half the fp32 bytes"
    return {"fp32": fp32, "fp16": fp16}, src16


# ---------------------------------------------------------------------------------------------
# tr118's sweeps


def read_jsonl(p):
    return [json.loads(l) for l in p.read_text().splitlines() if l.strip()] if p.exists() else []


def tr118_backends(ws):
    """One row per `out/decode-bench/<backend>/generate` node."""
    rows = {}
    root = ws / "out/decode-bench"
    for gen in sorted(root.glob("*/generate")):
        backend = gen.parent.name
        recs = read_jsonl(gen / "runs.jsonl")
        summary = json.loads((gen / "sweep.json").read_text()) if (gen / "sweep.json").exists() else {}
        if not recs and not summary:
            continue
        ok = [r for r in recs if r.get("status") == "ok"]
        pre = [r for r in read_jsonl(gen.parent / "prefill/runs.jsonl") if r.get("status") == "ok"]
        scenario = (summary.get("scenarios") or [{}])[0]
        ids = scenario.get("output_ids")
        tpot = median([r["tpot_ms"] for r in ok if r.get("tpot_ms") is not None])
        reason = None
        if tpot is None:
            reason = next((r.get("reason") for r in recs if r.get("reason")), None) or summary.get("reason") or "no ok repetition"
        rows[backend] = {
            "kind": "tr118",
            "precision": summary.get("precision") or (recs[0].get("precision") if recs else None),
            "provider": summary.get("provider") or (recs[0].get("provider") if recs else None),
            "ok": f"{len(ok)}/{len(recs)}",
            "prefill_ms": median([r["latency_ms"] for r in pre if r.get("latency_ms") is not None]),
            "ttft_ms": median([r["ttft_ms"] for r in ok if r.get("ttft_ms") is not None]),
            "tpot_ms": tpot,
            "ids": ids[0] if ids else None,
            "outputs_consistent": scenario.get("outputs_consistent"),
            "reason": reason,
            "scenario": {k: scenario.get(k) for k in ("name", "batch", "prompt_tokens", "new_tokens")},
            "reps": summary.get("reps"),
            "warmup": summary.get("warmup"),
        }
    return rows


def reference_of(rows):
    """The backend whose ids the others are compared with."""
    named = os.environ.get("BENCH_REFERENCE")
    if named:
        return named if named in rows and rows[named]["ids"] else None
    if rows.get("onnxruntime-gpu", {}).get("ids"):
        return "onnxruntime-gpu"
    return next((b for b, r in rows.items() if r["precision"] == "fp32" and r["ids"]), None)


# ---------------------------------------------------------------------------------------------
# The prompt, as the sweep builds it (src/stage/sweep.rs `prompt_tokens`)


def strip_doc_markers(text):
    return "".join(l for l in text.splitlines(keepends=True) if not (l.startswith("<doc") or l.startswith("</doc")))


def sweep_prompt(tokenizer_json, corpus, n):
    """The first `n` ids of the corpus, cut and tokenized as tr118's sweep does."""
    from tokenizers import Tokenizer

    text = strip_doc_markers(corpus.read_text(encoding="utf-8")).encode("utf-8")
    tok = Tokenizer.from_file(str(tokenizer_json))
    tok.no_truncation()
    take = max(n * 8, 256)
    while True:
        if take >= len(text):
            end = len(text)
        else:
            end = take
            while end > 0 and (text[end] & 0xC0) == 0x80:  # back to a character boundary
                end -= 1
        ids = tok.encode(text[:end].decode("utf-8"), add_special_tokens=False).ids
        # The last token of a cut text may be half a word: keep a margin of one.
        if len(ids) > n or end == len(text):
            if len(ids) < n:
                raise ValueError(f"the corpus {corpus} has {len(ids)} tokens, the scenario needs {n}")
            return ids[:n]
        take *= 2


# ---------------------------------------------------------------------------------------------
# Peer: transformers generate() with a static cache and torch.compile


def hf_worker(job):
    """Runs in a child process: times transformers' generate() and prints one JSON line."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, CompileConfig

    dev, prompt, n = job["device"], job["prompt"], job["new_tokens"]
    if dev == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("torch sees no CUDA device")
    # fp32 means fp32: no TF32, as in tr118's torch backends.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    model = AutoModelForCausalLM.from_pretrained(job["hf_dir"], dtype=torch.float32, local_files_only=True).to(dev).eval()
    gc = model.generation_config
    cc = CompileConfig(mode="reduce-overhead", fullgraph=True)
    if dev != "cuda":
        cc._compile_all_devices = True  # transformers compiles only on accelerators unless told
    gc.cache_implementation = "static"
    gc.compile_config = cc
    gc.max_cache_len = len(prompt) + n  # one cache (and one compiled graph) for every call
    gc.do_sample = False
    gc.num_beams = 1
    gc.temperature = gc.top_p = gc.top_k = None
    # No end-of-sequence id: nothing stops the loop early and nothing is suppressed (with one,
    # min_new_tokens would mask it out of the argmax, unlike tr118's loop).
    gc.eos_token_id = None
    gc.pad_token_id = 0
    ids = torch.tensor([prompt], dtype=torch.long, device=dev)
    mask = torch.ones_like(ids)
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)

    def run(k):
        sync()
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=k, min_new_tokens=k, do_sample=False)
        sync()
        return time.perf_counter() - t0, out[0, len(prompt):].tolist()

    t0 = time.perf_counter()
    for _ in range(max(job["warmup"], 2)):  # the first calls compile and record the CUDA graphs
        run(n)
        run(1)
    warm_s = time.perf_counter() - t0
    ttfts, totals, gen = [], [], None
    for _ in range(job["reps"]):  # interleaved, so that both see the same state of the caches
        ttfts.append(run(1)[0] * 1e3)
        dt, got = run(n)
        totals.append(dt * 1e3)
        gen = gen or got
    compiled = getattr(model, "_compiled_call", None) is not None
    ttft = statistics.median(ttfts)
    tpot = (statistics.median(totals) - ttft) / (n - 1)
    result = {
        "ttft_ms": ttft,
        "tpot_ms": tpot,
        "total_ms": statistics.median(totals),
        "ids": gen,
        "tokens": len(gen),
        "compiled": compiled,
        "warmup_s": warm_s,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }
    if not compiled:
        result["reason"] = (
            f"generate() did not compile the forward pass (transformers {transformers.__version__} judged the criteria unmet), "
            f"so this is not {HF_PEER}; it measured TTFT {ttft:.3f} ms, TPOT {tpot:.3f} ms uncompiled"
        )
    if len(gen) != n:
        result["reason"] = f"generate() returned {len(gen)} new tokens, expected {n}"
    return result


# ---------------------------------------------------------------------------------------------
# Peer: ONNX Runtime GenAI


def unpack_wheel(wheel, dest):
    """Unpacks a wheel into `dest` once (a folder is taken as already unpacked); returns the folder."""
    wheel = Path(wheel)
    if wheel.is_dir():
        return wheel
    dest = dest / wheel.name
    stamp = dest / ".unpacked"
    if not stamp.exists():
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        with zipfile.ZipFile(wheel) as z:
            for info in z.infolist():
                z.extract(info, dest)
                mode = (info.external_attr >> 16) & 0o777
                if mode:
                    os.chmod(dest / info.filename, mode)
        stamp.write_text("")
    return dest


def genai_paths(ws, work):
    """The sys.path entries a GenAI process needs, first first: the ORT package, GenAI, the
    builder's extra dependencies. Raises with the reason when something is missing."""
    paths = []
    ort_gpu = os.environ.get("ORT_GPU_DIR")
    if not ort_gpu and device() == "cuda" and any((ws / "out/ort-gpu").glob("libonnxruntime.so*")):
        ort_gpu = str(ws / "out/ort-gpu")  # the pipeline's own copy of the GPU build
    if ort_gpu:
        capi = Path(ort_gpu) / "onnxruntime/capi"
        if not any(capi.glob("libonnxruntime.so*")):
            capi = Path(ort_gpu)  # the libraries themselves, as out/ort-gpu holds them
        if not any(capi.glob("libonnxruntime.so*")):
            raise FileNotFoundError(f"ORT_GPU_DIR={ort_gpu}: no libonnxruntime.so* there nor in onnxruntime/capi/")
        if (Path(ort_gpu) / "onnxruntime/__init__.py").exists():
            paths.append(str(Path(ort_gpu).resolve()))
        else:
            # GenAI loads capi/libonnxruntime.so* of the first importable `onnxruntime` package;
            # a folder without __init__.py is a namespace package, which loses to any installed
            # onnxruntime. A regular package made of an empty __init__.py and that capi/ wins.
            shim = work / "ort-shim"
            pkg = shim / "onnxruntime"
            pkg.mkdir(parents=True, exist_ok=True)
            (pkg / "__init__.py").write_text("")
            link = pkg / "capi"
            if link.is_symlink() or link.exists():
                if link.resolve() != capi.resolve():
                    link.unlink()
            if not link.exists():
                link.symlink_to(capi.resolve(), target_is_directory=True)
            paths.append(str(shim))
    wheel = os.environ.get("GENAI_WHEEL")
    if wheel:
        if not Path(wheel).exists():
            raise FileNotFoundError(f"GENAI_WHEEL={wheel} does not exist")
        paths.append(str(unpack_wheel(wheel, work / "wheels")))
    for entry in filter(None, os.environ.get("GENAI_DEPS", "").split(":")):
        p = Path(entry)
        wheels = sorted(p.glob("*.whl")) if p.is_dir() else [p]
        if p.is_dir() and not wheels:
            paths.append(str(p))  # an unpacked site folder
        for w in wheels:
            if not w.exists():
                raise FileNotFoundError(f"GENAI_DEPS: {w} does not exist")
            paths.append(str(unpack_wheel(w, work / "wheels")))
    return paths


def child_env(paths):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(paths + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


# The builder imports onnxruntime.quantization at the top of builders/base.py, but only int4/int8
# use it; the ORT package GenAI must load (the GPU build's capi/ alone) has no Python API. Stubs
# stand in for it when the real one cannot be imported; an fp16 build never touches them.
BUILDER_MAIN = r"""
import runpy, sys, types
try:
    import onnxruntime.quantization.matmul_nbits_quantizer  # noqa: F401
except Exception:
    class _Missing:
        def __init__(self, *a, **k):
            raise RuntimeError("onnxruntime.quantization is not importable here (only fp16/fp32 builds work)")
    q = types.ModuleType("onnxruntime.quantization")
    m = types.ModuleType("onnxruntime.quantization.matmul_nbits_quantizer")
    for name in ("KQuantWeightOnlyQuantConfig", "MatMulNBitsQuantizer", "RTNWeightOnlyQuantConfig", "DefaultWeightOnlyQuantConfig", "GPTQWeightOnlyQuantConfig"):
        setattr(m, name, _Missing)
    m.QuantFormat = types.SimpleNamespace(QDQ="QDQ", QOperator="QOperator")
    q.matmul_nbits_quantizer = m
    sys.modules["onnxruntime.quantization"] = q
    sys.modules["onnxruntime.quantization.matmul_nbits_quantizer"] = m
sys.argv = ["builder"] + sys.argv[1:]
runpy.run_module("onnxruntime_genai.models.builder", run_name="__main__", alter_sys=True)
"""


def architecture(config):
    mt = config.get("model_type", "")
    return {"llama": "LlamaForCausalLM", "gpt2": "GPT2LMHeadModel", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}.get(mt, "LlamaForCausalLM")


def tail(text, n=1200):
    """What a failed child said: its last exception line first, then the end of its output."""
    text = (text or "").strip()
    lines = [l.strip() for l in text.splitlines() if l.strip()]
    head = next((l for l in reversed(lines) if re.match(r"^[\w.]+(Error|Exception|Exit|Interrupt)\b", l)), lines[-1] if lines else "no output")
    end = text if len(text) <= n else "…" + text[-n:]
    return head if end == head else f"{head} — output: {end}"


def build_genai(hf_dir, work, paths, precision, ep):
    """The GenAI model of `hf_dir` (built once per source, wheel, precision and provider);
    returns its folder."""
    config = json.loads((hf_dir / "config.json").read_text())
    src_stamp = {f.name: [f.stat().st_size, f.stat().st_mtime_ns] for f in sorted(hf_dir.iterdir()) if f.is_file()}
    src_stamp.update({"config": config, "paths": paths, "precision": precision, "ep": ep})
    out = work / f"genai-{precision}-{ep}"
    stamp = out / ".built"
    if stamp.exists() and json.loads(stamp.read_text()) == src_stamp and (out / "genai_config.json").exists():
        return out, None
    # A copy of the directory (the weights linked, not copied), with `architectures` if the
    # export left it out: the builder picks its model class from it.
    src = work / "hf-input"
    shutil.rmtree(src, ignore_errors=True)
    src.mkdir(parents=True)
    for f in hf_dir.iterdir():
        if f.is_file() and f.name != "config.json":
            (src / f.name).symlink_to(f.resolve())
    if not config.get("architectures"):
        config["architectures"] = [architecture(config)]
    (src / "config.json").write_text(json.dumps(config, indent=1))
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-c", BUILDER_MAIN, "-i", str(src), "-o", str(out), "-p", precision, "-e", ep, "-c", str(work / "builder-cache")]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=child_env(paths), capture_output=True, text=True, timeout=env_int("BENCH_GENAI_BUILD_TIMEOUT", 1200), cwd=work)
    build_s = time.perf_counter() - t0
    if p.returncode != 0 or not (out / "genai_config.json").exists():
        raise RuntimeError(f"the GenAI model builder failed (exit {p.returncode}): {tail(p.stderr or p.stdout)}")
    stamp.write_text(json.dumps(src_stamp))
    return out, build_s


def configure_genai(out, ep, avoid):
    """CUDA graphs on, and an end-of-sequence id that changes nothing; returns that id.

    GenAI 0.18 stops a sequence at its end-of-sequence id and pads every step after it; with no
    id (an empty list) it takes the pad id as one, and it refuses ids outside the vocabulary.
    tr118's loop is a plain argmax for new_tokens steps, so both become the highest id that is
    neither in the prompt nor in the reference's ids: the loop matches tr118's unless the
    model picks that id, which then shows as a mismatch with the reference."""
    cfg_path = out / "genai_config.json"
    cfg = json.loads(cfg_path.read_text())
    model = cfg["model"]
    if ep == "cuda":
        session = model["decoder"].setdefault("session_options", {})
        opts = session.setdefault("provider_options", [])
        cuda = next((o["cuda"] for o in opts if "cuda" in o), None)
        if cuda is None:
            cuda = {}
            opts.append({"cuda": cuda})
        cuda["enable_cuda_graph"] = "1"
    avoid = set(avoid)
    eos = next(i for i in range(int(model["vocab_size"]) - 1, -1, -1) if i not in avoid)
    model["eos_token_id"] = eos
    model["pad_token_id"] = eos
    cfg_path.write_text(json.dumps(cfg, indent=4))
    return eos


def genai_worker(job):
    """Runs in a child process: times GenAI's token loop and prints one JSON line."""
    import onnxruntime_genai as og

    prompt, n = job["prompt"], job["new_tokens"]
    model = og.Model(job["model_dir"])

    def run():
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(prompt) + n, min_length=0, do_sample=False, num_beams=1)
        gen = og.Generator(model, params)
        ids = []
        t0 = time.perf_counter()
        gen.append_tokens(prompt)
        gen.generate_next_token()
        ids.append(int(gen.get_next_tokens()[0]))
        ttft = time.perf_counter() - t0
        for _ in range(n - 1):
            gen.generate_next_token()
            ids.append(int(gen.get_next_tokens()[0]))
        total = time.perf_counter() - t0
        del gen
        return ttft, total, ids

    for _ in range(job["warmup"]):
        run()
    ttfts, tpots, first = [], [], None
    for _ in range(job["reps"]):
        ttft, total, ids = run()
        ttfts.append(ttft * 1e3)
        tpots.append((total - ttft) * 1e3 / (n - 1))
        first = first or ids
    cfg = json.loads((Path(job["model_dir"]) / "genai_config.json").read_text())
    opts = cfg["model"]["decoder"].get("session_options", {}).get("provider_options", [])
    eos = cfg["model"].get("eos_token_id")
    result = {}
    if eos in first:
        result["note"] = f"the model picked id {eos}, the end-of-sequence stand-in, at step {first.index(eos)}: GenAI padded after it"
    return result | {
        "ttft_ms": statistics.median(ttfts),
        "tpot_ms": statistics.median(tpots),
        "ids": first,
        "tokens": len(first),
        "provider_options": opts,
        "versions": {"onnxruntime_genai": og.__version__, "onnxruntime_lib": os.environ.get("ORT_LIB_PATH")},
    }


# ---------------------------------------------------------------------------------------------
# Running a worker in a child process


def run_child(role, job, env=None, timeout=900):
    """Runs this file as `--worker ROLE`, the job on stdin; returns (result, reason)."""
    try:
        p = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--worker", role],
            input=json.dumps(job),
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as e:
        return None, f"{role} ran past {timeout} s: {tail(e.stderr if isinstance(e.stderr, str) else '')}"
    lines = [l for l in p.stdout.splitlines() if l.startswith("{")]
    if p.returncode != 0 or not lines:
        why = f"exit {p.returncode}" if p.returncode >= 0 else f"signal {-p.returncode}"
        return None, f"the {role} process failed ({why}): {tail(p.stderr)}"
    out = json.loads(lines[-1])
    if out.get("error"):
        return None, out["error"]
    return out, out.get("reason")


def worker_main(role):
    job = json.loads(sys.stdin.read())
    try:
        result = {"hf": hf_worker, "genai": genai_worker}[role](job)
    except Exception as e:  # the reason goes back to the parent
        import traceback

        traceback.print_exc()
        result = {"error": f"{type(e).__name__}: {e}"}
    sys.stdout.write("\n" + json.dumps(result) + "\n")
    sys.stdout.flush()


# ---------------------------------------------------------------------------------------------
# Optional: where an eager decode step's time goes


def profile_torch_decode(hf_dir, dev="cuda", steps=32, prompt=27):
    """torch.profiler over `steps` eager decode steps: CUDA kernels per token and the GPU time
    they account for, against the wall time per token."""
    import torch
    import transformers
    from torch.profiler import ProfilerActivity, profile

    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32, local_files_only=True).to(dev).eval()
    ids = torch.arange(1, prompt + 1, device=dev).view(1, prompt)
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    with torch.inference_mode():
        for _ in range(2):
            cache = transformers.DynamicCache(config=model.config)
            out = model(input_ids=ids, past_key_values=cache, use_cache=True)
            nxt = out.logits[:, -1:].argmax(-1)
            for _ in range(steps):
                out = model(input_ids=nxt, past_key_values=cache, use_cache=True)
                nxt = out.logits[:, -1:].argmax(-1)
        sync()
        cache = transformers.DynamicCache(config=model.config)
        out = model(input_ids=ids, past_key_values=cache, use_cache=True)
        nxt = out.logits[:, -1:].argmax(-1)
        sync()
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev == "cuda" else [])
        with profile(activities=acts) as prof:
            t0 = time.perf_counter()
            for _ in range(steps):
                out = model(input_ids=nxt, past_key_values=cache, use_cache=True)
                nxt = out.logits[:, -1:].argmax(-1)
            sync()
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


# ---------------------------------------------------------------------------------------------


def peer_row(precision, result, reason, ref_ids, extra=None):
    row = {"kind": "peer", "precision": precision, "ok": "—", "prefill_ms": None, "ttft_ms": None, "tpot_ms": None, "ids": None, "reason": reason}
    if result and not reason:
        row.update(ttft_ms=result["ttft_ms"], tpot_ms=result["tpot_ms"], ids=result.get("ids"), ok="yes")
    row["details"] = {k: v for k, v in (result or {}).items() if k not in ("ids", "ttft_ms", "tpot_ms", "reason")}
    if extra:
        row["details"].update(extra)
    return row


def main():
    if len(sys.argv) >= 3 and sys.argv[1] == "--worker":
        return worker_main(sys.argv[2])
    ws = Path(sys.argv[1] if len(sys.argv) > 1 else ".").resolve()
    dev = device()
    skip = set(filter(None, os.environ.get("BENCH_SKIP", "").split(",")))
    work = ws / "out/gpu-decode-peers"  # the peers' builds and unpacked wheels, not a stage's
    work.mkdir(parents=True, exist_ok=True)

    rows = tr118_backends(ws)
    sc = next((r["scenario"] for r in rows.values() if r["scenario"].get("prompt_tokens")), {})
    n_prompt, n_new = sc.get("prompt_tokens") or 27, sc.get("new_tokens") or 128
    sweep_reps = next((r["reps"] for r in rows.values() if r.get("reps")), None)
    sweep_warmup = next((r["warmup"] for r in rows.values() if r.get("warmup") is not None), None)
    reps = env_int("BENCH_REPS", sweep_reps or 10)
    warmup = env_int("BENCH_WARMUP", sweep_warmup if sweep_warmup is not None else 3)
    ref = reference_of(rows)
    ref_ids = rows[ref]["ids"] if ref else None

    # The prompt every peer is fed: the sweep's, rebuilt.
    prompt, prompt_reason = None, None
    try:
        prompt = sweep_prompt(ws / "out/export/tokenizer.json", ws / "out/corpus/wiki.utf8", n_prompt)
    except Exception as e:
        prompt_reason = f"the sweep's prompt could not be rebuilt: {type(e).__name__}: {e}"
    print(f"prompt: {n_prompt} ids, the corpus's first (as tr118's sweep builds them from out/export/tokenizer.json): {prompt}")
    print(f"new tokens: {n_new}; peers: {warmup} warm-up + {reps} timed calls; reference ids: {ref or 'none'}")

    # The bound.
    gpu, bw, bw_reason = None, None, None
    try:
        gpu = device_name(dev)
        bw = bandwidth_gbs(dev)
    except Exception as e:
        bw_reason = f"{type(e).__name__}: {e}"
    wbytes, src16 = weight_bytes(ws)
    bound_ms = {p: (b / (bw * 1e9) * 1e3 if b and bw else None) for p, b in wbytes.items()}
    if bw:
        parts = [f"{p} {b / 1e6:.1f} MB -> {bound_ms[p]:.4f} ms ({1e3 / bound_ms[p]:.0f} tokens/s)" for p, b in wbytes.items() if b]
        print(f"{gpu}: copy bandwidth {bw:.0f} GB/s (bytes read + written; a decode step only reads its weights, at up to that rate)")
        print(f"bound = weight bytes per token / bandwidth: {'; '.join(parts) or 'no export.json'} (fp16 bytes: {src16})")
    else:
        print(f"copy bandwidth not measured: {bw_reason}")

    hf_dir = ws / "out/export/hf"
    # Peer 1: transformers generate(), compiled.
    if HF_PEER in skip:
        rows[HF_PEER] = peer_row("fp32", None, "skipped (BENCH_SKIP)", ref_ids)
    elif prompt is None:
        rows[HF_PEER] = peer_row("fp32", None, prompt_reason, ref_ids)
    elif not (hf_dir / "config.json").exists():
        rows[HF_PEER] = peer_row("fp32", None, f"no Hugging Face export at {hf_dir}", ref_ids)
    else:
        job = {"device": dev, "hf_dir": str(hf_dir), "prompt": prompt, "new_tokens": n_new, "warmup": warmup, "reps": reps}
        res, why = run_child("hf", job, timeout=env_int("BENCH_HF_TIMEOUT", 1800))
        rows[HF_PEER] = peer_row("fp32", res, why, ref_ids)

    # Peer 2: ONNX Runtime GenAI, fp16 on CUDA (fp32 on the CPU smoke test), CUDA graphs on.
    g_prec, g_ep = ("fp16", "cuda") if dev == "cuda" else ("fp32", "cpu")
    if GENAI_PEER in skip:
        rows[GENAI_PEER] = peer_row(g_prec, None, "skipped (BENCH_SKIP)", ref_ids)
    elif prompt is None:
        rows[GENAI_PEER] = peer_row(g_prec, None, prompt_reason, ref_ids)
    elif not (hf_dir / "config.json").exists():
        rows[GENAI_PEER] = peer_row(g_prec, None, f"no Hugging Face export at {hf_dir}", ref_ids)
    else:
        res, why, extra = None, None, {}
        try:
            paths = genai_paths(ws, work)
            model_dir, build_s = build_genai(hf_dir, work, paths, g_prec, g_ep)
            eos = configure_genai(model_dir, g_ep, list(prompt) + list(ref_ids or []))
            extra = {"model_dir": str(model_dir), "build_s": build_s, "eos_and_pad_id": eos, "sys_path_first": paths}
            job = {"model_dir": str(model_dir), "prompt": prompt, "new_tokens": n_new, "warmup": warmup, "reps": reps}
            res, why = run_child("genai", job, env=child_env(paths), timeout=env_int("BENCH_GENAI_TIMEOUT", 900))
        except subprocess.TimeoutExpired as e:
            why = f"the GenAI model builder ran past {e.timeout} s"
        except Exception as e:
            why = f"{type(e).__name__}: {e}"
        rows[GENAI_PEER] = peer_row(g_prec, res, why, ref_ids, extra)

    profile = None
    if os.environ.get("BENCH_PROFILE") == "1" or "--profile" in sys.argv:
        try:
            profile = profile_torch_decode(str(hf_dir), dev, prompt=n_prompt)
            print("torch eager decode profile (torch.profiler, 32 steps):", json.dumps(profile, indent=1))
        except Exception as e:
            profile = {"error": f"{type(e).__name__}: {e}"}
            print(f"torch eager decode profile failed: {profile['error']}")

    # The table and the JSON line.
    base = rows.get(HF_PEER, {}).get("tpot_ms")
    backends = {}
    for name, r in rows.items():
        tpot = r["tpot_ms"]
        b = bound_ms.get(r["precision"])
        match, agreement = None, None
        if ref_ids is not None and r["ids"] is not None:
            match = list(r["ids"]) == list(ref_ids)
            agreement = sum(a == b for a, b in zip(r["ids"], ref_ids)) / max(len(ref_ids), 1)
        backends[name] = {
            "precision": r["precision"],
            "tpot_ms": tpot,
            "ttft_ms": r["ttft_ms"],
            "tok_s": 1e3 / tpot if tpot else None,
            "of_bound": b / tpot if b and tpot else None,
            "ids_match_reference": match,
            "ids_agreement": agreement,
            "reason": r["reason"] if tpot is None or r["reason"] else None,
        }
    print()
    print(f"decode, batch 1, {n_prompt}-token prompt, {n_new} new tokens, greedy; medians. × is the speed against {HF_PEER};")
    print("% of bound is the bandwidth bound for the row's precision over its TPOT (weight bytes / copy bandwidth, read + written).")
    head = f"{'backend':26} {'precision':>9} {'ok':>7} {'TTFT ms':>9} {'TPOT ms':>9} {'tok/s':>9} {'× hf-gen':>9} {'% bound':>8} {'ids = ref':>9}"
    print(head)
    print("-" * len(head))
    f = lambda v, p=3: "—" if v is None else f"{v:.{p}f}"
    for name, b in backends.items():
        r = rows[name]
        speed = base / b["tpot_ms"] if base and b["tpot_ms"] else None
        share = b["of_bound"] * 100 if b["of_bound"] is not None else None
        same = {True: "yes", False: f"no ({(b['ids_agreement'] or 0) * 100:.0f}%)", None: "—"}[b["ids_match_reference"]] + (" (ref)" if name == ref else "")
        print(
            f"{name:26} {b['precision'] or '?':>9} {r['ok']:>7} {f(b['ttft_ms']):>9} {f(b['tpot_ms']):>9} {f(b['tok_s'], 1):>9} "
            f"{(f(speed, 2) + '×') if speed else '—':>9} {(f(share, 2) + '%') if share is not None else '—':>8} {same:>9}"
        )
        if b["reason"]:
            print(f"    {'degraded' if b['tpot_ms'] is None else 'note'}: {b['reason'][:300]}")
    for name in (HF_PEER, GENAI_PEER):
        d = rows.get(name, {}).get("details")
        if d:
            print(f"{name}: {json.dumps(d)}")

    summary = {"gpu": gpu, "bound_ms": bound_ms, "bandwidth_gbs": bw, "backends": backends}
    summary["weight_bytes"] = wbytes
    summary["reference"] = ref
    summary["prompt_ids"] = prompt
    if profile is not None:
        summary["torch_eager_profile"] = profile
    try:
        (ws / "out/decode-bench/summary.json").write_text(json.dumps(summary, indent=1))
    except OSError:
        pass
    sys.stdout.flush()
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
