#!/usr/bin/env python3
"""tr118's PyTorch worker: runs a Hugging Face causal LM for tr118's `torch` backends.

tr118 starts it as `python3 tr118_worker.py` and speaks to it over stdin/stdout, one JSON
object per line each way; everything else the worker or its libraries print goes to stderr,
which tr118 copies into the node's log. The protocol is documented in docs/torch-worker.md.

Requests carry an `id` and an `op`; every response echoes the `id` and has `ok`:

  hello      -> versions of Python, torch, transformers; CUDA devices
  load       -> loads a Hugging Face directory onto a device, eager or torch.compile
  load_plan  -> loads a TensorRT for RTX plan instead (through tr118_trt.py, beside this file);
                prefill and generate then run it, torch tensors as its buffers
  prefill    -> one forward pass, timed here with CUDA synchronisation; optionally writes
                the logits (float32, little-endian, row-major) to a file tr118 names
  generate   -> greedy decoding, with (cache=true) or without a key/value cache
  shutdown   -> answers, then exits

A backend that cannot run here (torch or transformers not importable, no CUDA device) is
answered with `ok: false` and `unavailable: <reason>`; tr118 records a degraded result with
that reason. Any other failure is `ok: false` with `error`.
"""

import json
import os
import platform
import sys
import time
import traceback

PROTOCOL = 1
# Static caches are allocated for this many positions, rounded up, so that torch.compile sees
# one decode shape per batch size across scenarios instead of one per prompt length.
CACHE_BUCKET = 256


class Unavailable(Exception):
    """This backend cannot run on this machine; the message says why."""


def _version(name):
    try:
        from importlib import metadata

        return metadata.version(name)
    except Exception:
        return None


class Worker:
    def __init__(self):
        self.torch = None
        self.model = None
        self.forward = None
        self.device = None
        self.compiled = False
        self.static_cache = False
        self.engine = "torch"
        self.caches = {}
        self.import_error = None
        try:
            import torch  # noqa: F401

            self.torch = torch
        except Exception as e:  # an ImportError, or a broken CUDA install raising on import
            self.import_error = f"torch is not importable by {sys.executable}: {type(e).__name__}: {e}"

    # --- ops -----------------------------------------------------------------------------

    def hello(self, req):
        info = {
            "protocol": PROTOCOL,
            "python": platform.python_version(),
            "executable": sys.executable,
            "torch": None,
            "transformers": _version("transformers"),
            "cuda": None,
            "devices": [],
        }
        if self.torch is not None:
            t = self.torch
            info["torch"] = t.__version__
            info["cuda"] = t.version.cuda
            if t.cuda.is_available():
                for i in range(t.cuda.device_count()):
                    p = t.cuda.get_device_properties(i)
                    info["devices"].append({"index": i, "name": p.name, "capability": f"{p.major}.{p.minor}", "memory_mib": p.total_memory // (1 << 20)})
        return info

    def load(self, req):
        if self.torch is None:
            raise Unavailable(self.import_error)
        t = self.torch
        try:
            import transformers
        except Exception as e:
            raise Unavailable(f"transformers is not importable by {sys.executable}: {type(e).__name__}: {e}")
        device = req.get("device", "cpu")
        if device.startswith("cuda"):
            if not t.cuda.is_available():
                raise Unavailable(f"torch {t.__version__} sees no CUDA device ({_cuda_reason(t)})")
            index = int(device.split(":", 1)[1]) if ":" in device else 0
            if index >= t.cuda.device_count():
                raise Unavailable(f"CUDA device {index} is not there: torch sees {t.cuda.device_count()}")
        dtype = {"fp32": t.float32, "fp16": t.float16, "bf16": t.bfloat16}.get(req.get("precision", "fp32"))
        if dtype is None:
            raise Unavailable(f"precision `{req.get('precision')}` is not one the torch backend runs (fp32, fp16, bf16)")
        # fp32 means fp32: no TF32 tensor-core rounding in matrix products or convolutions.
        t.backends.cuda.matmul.allow_tf32 = False
        t.backends.cudnn.allow_tf32 = False
        t.manual_seed(0)
        start = time.perf_counter()
        model = transformers.AutoModelForCausalLM.from_pretrained(req["model"], dtype=dtype, local_files_only=True)
        model.to(device)
        model.eval()
        self._sync_device(device)
        load_s = time.perf_counter() - start
        self.model, self.device = model, t.device(device)
        self.engine = "torch"
        self.forward = model.forward
        self.compiled, self.static_cache, self.caches = False, False, {}
        compile_cfg = req.get("compile")
        if compile_cfg:
            import torch._dynamo

            # Every prompt length is a shape of its own with dynamic=False; the default limit
            # of 8 would silently fall back to eager after the eighth.
            for name in ("cache_size_limit", "recompile_limit"):
                if hasattr(torch._dynamo.config, name):
                    setattr(torch._dynamo.config, name, 256)
            self.forward = t.compile(model.forward, backend=compile_cfg.get("backend", "inductor"), mode=compile_cfg.get("mode") or None, dynamic=False)
            self.compiled = True
            self.mode = compile_cfg.get("mode") or "default"
            # A compiled decode needs fixed shapes: a static cache instead of a growing one.
            self.static_cache = True
        params = list(model.parameters())
        devices = sorted({str(p.device) for p in params})
        return {
            "load_s": load_s,
            "parameters": sum(p.numel() for p in params),
            "parameter_bytes": sum(p.numel() * p.element_size() for p in params),
            "parameter_devices": devices,
            "dtype": str(dtype).replace("torch.", ""),
            "attention": getattr(model.config, "_attn_implementation", None),
            "architecture": type(model).__name__,
            "device_name": t.cuda.get_device_name(self.device) if self.device.type == "cuda" else platform.processor() or platform.machine(),
            "compiled": self.compiled,
            "static_cache": self.static_cache,
            "tf32": False,
        }

    def load_plan(self, req):
        """A TensorRT for RTX plan (`tr118_trt.py` beside this file loads the library), run
        with torch's CUDA tensors as its buffers, on torch's current stream."""
        import tr118_trt

        try:
            trt = tr118_trt.load_trt(req["library"], req["bindings"])
            log = tr118_trt.make_logger(trt)
            with open(req["plan"], "rb") as f:
                blob = f.read()
            # The library's own judgement first: it needs neither torch nor a usable GPU.
            tr118_trt.judge(trt, log, blob, req["plan"])
        except tr118_trt.Unavailable as e:
            raise Unavailable(f"TensorRT for RTX cannot run `{req['plan']}` here: {e}")
        except tr118_trt.BadInput as e:
            raise ValueError(json.loads(str(e))["error"])
        if self.torch is None:
            raise Unavailable(self.import_error)
        t = self.torch
        device = req.get("device", "cuda:0")
        if not t.cuda.is_available():
            raise Unavailable(f"torch {t.__version__} sees no CUDA device ({_cuda_reason(t)})")
        t.cuda.set_device(t.device(device))
        runtime = trt.Runtime(log)
        start = time.perf_counter()
        engine = runtime.deserialize_cuda_engine(blob)
        if engine is None:
            raise Unavailable("; ".join(log.errors()) or "the library did not load the plan")
        self._sync_device(device)
        load_s = time.perf_counter() - start
        self.model = Plan(t, trt, engine, t.device(device))
        self.device = t.device(device)
        self.engine = "tensorrt-rtx"
        return {
            "load_s": load_s,
            "plan_bytes": len(blob),
            "version": tr118_trt.VERSION,
            "io": {n: [self.model.dtypes[n].__repr__().replace("torch.", ""), list(engine.get_tensor_shape(n))] for n in self.model.names},
            "decoder": self.model.is_decoder,
            "device_name": t.cuda.get_device_name(self.device),
            "parameter_devices": [str(self.device)],
        }

    def prefill(self, req):
        self._need_model()
        t = self.torch
        if self.engine == "tensorrt-rtx":
            return self._plan_prefill(req)
        b, s = req["batch"], req["seq"]
        ids = t.tensor(req["ids"], dtype=t.long, device=self.device).view(b, s)
        mask = req.get("mask")
        mask = t.tensor(mask, dtype=t.long, device=self.device).view(b, s) if mask is not None else None
        with t.inference_mode():
            self._sync()
            start = time.perf_counter()
            self._step_begin()
            logits = self.forward(input_ids=ids, attention_mask=mask, use_cache=False).logits
            self._sync()
            latency = time.perf_counter() - start
            out = {"latency_s": latency, "shape": list(logits.shape), "argmax": logits[:, -1, :].argmax(-1).tolist()}
            path = req.get("logits")
            if path:
                logits.float().cpu().contiguous().numpy().astype("<f4", copy=False).tofile(path)
        return out

    def generate(self, req):
        self._need_model()
        t = self.torch
        b, s, n = req["batch"], req["seq"], req["new_tokens"]
        if n < 1:
            raise ValueError("`new_tokens` must be at least 1")
        ids = t.tensor(req["ids"], dtype=t.long, device=self.device).view(b, s)
        if self.engine == "tensorrt-rtx":
            return self._plan_generate(ids, b, s, n, req.get("cache", True))
        with t.inference_mode():
            if req.get("cache", True):
                return self._generate_cached(ids, b, s, n)
            return self._generate_uncached(ids, b, s, n)

    def _generate_cached(self, ids, b, s, n):
        t = self.torch
        cache, positions = None, None
        if self.static_cache:
            cache = self._static_cache(b, -(-(s + n) // CACHE_BUCKET) * CACHE_BUCKET)
            positions = [t.arange(s, device=self.device)] + [t.tensor([s + i], device=self.device) for i in range(n - 1)]
        else:
            from transformers import DynamicCache

            cache = DynamicCache(config=self.model.config)
        tokens = []
        self._sync()
        start = time.perf_counter()
        self._step_begin()
        kw = {"cache_position": positions[0]} if positions else {}
        out = self.forward(input_ids=ids, past_key_values=cache, use_cache=True, **kw)
        # The next token never leaves the device: no host round trip per step.
        nxt = out.logits[:, -1, :].argmax(-1, keepdim=True)
        tokens.append(nxt)
        self._sync()
        ttft = time.perf_counter() - start
        for i in range(1, n):
            self._step_begin()
            kw = {"cache_position": positions[i]} if positions else {}
            # A compiled step's outputs live in buffers the next replay reuses: clone the token.
            out = self.forward(input_ids=nxt, past_key_values=cache, use_cache=True, **kw)
            nxt = out.logits[:, -1, :].argmax(-1, keepdim=True).clone()
            tokens.append(nxt)
        return self._generated(start, ttft, tokens)

    def _generate_uncached(self, ids, b, s, n):
        def next_of(seqs):
            self._step_begin()
            logits = self.forward(input_ids=seqs, use_cache=False).logits
            return logits[:, -1, :].argmax(-1, keepdim=True).clone()

        return self._greedy_uncached(ids, n, next_of)

    def _greedy_uncached(self, ids, n, next_of):
        """Greedy generation without a cache: `next_of(seqs)` is each row's next token, [b, 1],
        from a full forward pass over everything so far; TTFT is the first token's."""
        t = self.torch
        seqs = ids
        tokens = []
        self._sync()
        start = time.perf_counter()
        ttft = None
        for i in range(n):
            nxt = next_of(seqs)
            tokens.append(nxt)
            if i == 0:
                self._sync()
                ttft = time.perf_counter() - start
            seqs = t.cat([seqs, nxt], dim=1)
        return self._generated(start, ttft, tokens)

    def _generated(self, start, ttft, tokens):
        """The answer of a timed generation that started at `start`, once the device is done."""
        self._sync()
        total = time.perf_counter() - start
        return {"ttft_s": ttft, "total_s": total, "ids": self.torch.cat(tokens, dim=1).flatten().tolist()}

    # --- TensorRT for RTX plans --------------------------------------------------------

    def _plan_prefill(self, req):
        t, plan = self.torch, self.model
        b, s = req["batch"], req["seq"]
        ids = t.tensor(req["ids"], dtype=t.long, device=self.device).view(b, s)
        mask = req.get("mask")
        mask = t.tensor(mask, dtype=t.long, device=self.device).view(b, s) if mask is not None else t.ones_like(ids)
        feeds = {"input_ids": ids, "attention_mask": mask}
        if plan.is_decoder:
            feeds.update(plan.empty_past(b))
        self._sync()
        start = time.perf_counter()
        logits = plan.run(feeds)["logits"]
        self._sync()
        latency = time.perf_counter() - start
        out = {"latency_s": latency, "shape": list(logits.shape), "argmax": logits[:, -1, :].argmax(-1).tolist()}
        path = req.get("logits")
        if path:
            logits.float().cpu().contiguous().numpy().astype("<f4", copy=False).tofile(path)
        return out

    def _plan_generate(self, ids, b, s, n, cached):
        t, plan = self.torch, self.model
        if not cached:

            def next_of(seqs):
                feeds = {"input_ids": seqs, "attention_mask": t.ones_like(seqs)}
                if plan.is_decoder:
                    feeds.update(plan.empty_past(b))
                return plan.run(feeds)["logits"][:, -1, :].argmax(-1, keepdim=True)

            return self._greedy_uncached(ids, n, next_of)
        if not plan.is_decoder:
            raise ValueError("a prefill plan has no key/value cache: generate with a decoder plan, or cache=false")
        tokens = []
        self._sync()
        start = time.perf_counter()
        ttft = None
        past = plan.empty_past(b)
        step, length = ids, 0
        for i in range(n):
            length += step.shape[1]
            feeds = {"input_ids": step, "attention_mask": t.ones((b, length), dtype=t.long, device=self.device), **past}
            out = plan.run(feeds)
            step = out["logits"][:, -1, :].argmax(-1, keepdim=True)
            tokens.append(step)
            past = {k.replace("present.", "past_key_values."): v for k, v in out.items() if k.startswith("present.")}
            if i == 0:
                self._sync()
                ttft = time.perf_counter() - start
        return self._generated(start, ttft, tokens)

    # --- helpers -------------------------------------------------------------------------

    def _static_cache(self, batch, length):
        """One static cache per (batch, length), emptied before each generation. Its buffers
        are allocated here, outside any compiled region, so that they are marked as static
        addresses: a cache first filled inside the compiled prefill is allocated inside the
        graph instead, CUDA graphs are skipped for its in-place updates, and the worker was
        seen to crash on the first compiled step (torch 2.11, transformers 5.17, H200)."""
        cache = self.caches.get((batch, length))
        if cache is None:
            from transformers import StaticCache

            cfg = self.model.config
            heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
            head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
            cache = StaticCache(config=cfg, max_cache_len=length)
            cache.early_initialization(batch, heads, head_dim, next(self.model.parameters()).dtype, self.device)
            self.caches[(batch, length)] = cache
        cache.reset()
        return cache

    def _need_model(self):
        if self.model is None:
            raise RuntimeError("no model is loaded: send `load` first")

    def _sync(self):
        if self.device is not None and self.device.type == "cuda":
            self.torch.cuda.synchronize(self.device)

    def _sync_device(self, device):
        if device.startswith("cuda"):
            self.torch.cuda.synchronize(device)

    def _step_begin(self):
        # CUDA-graph trees (mode="reduce-overhead") need to know where one step ends.
        if self.compiled and self.device.type == "cuda" and hasattr(self.torch, "compiler"):
            mark = getattr(self.torch.compiler, "cudagraph_mark_step_begin", None)
            if mark is not None:
                mark()


class Plan:
    """One deserialised plan and its execution context; every input and output a torch tensor
    on the plan's device, of the type the plan declares."""

    def __init__(self, t, trt, engine, device):
        self.t, self.trt, self.engine, self.device = t, trt, engine, device
        self.context = engine.create_execution_context()
        self.names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.inputs = [n for n in self.names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in self.names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        kinds = {trt.DataType.FLOAT: t.float32, trt.DataType.HALF: t.float16, trt.DataType.INT64: t.int64, trt.DataType.INT32: t.int32, trt.DataType.BOOL: t.bool}
        self.dtypes = {n: kinds[engine.get_tensor_dtype(n)] for n in self.names}
        self.past = [n for n in self.inputs if n.startswith("past_key_values.")]
        self.is_decoder = bool(self.past)
        # TensorRT wants an address even for an empty tensor (an empty past).
        self.spare = t.empty(1, dtype=t.float32, device=device)

    def empty_past(self, batch):
        out = {}
        for n in self.past:
            shape = list(self.engine.get_tensor_shape(n))
            shape[0], shape[2] = batch, 0
            out[n] = self.t.empty(shape, dtype=self.dtypes[n], device=self.device)
        return out

    def run(self, feeds):
        ctx = self.context
        held = []
        for n in self.inputs:
            x = feeds[n].to(self.dtypes[n]).contiguous()
            held.append(x)
            if not ctx.set_input_shape(n, tuple(x.shape)):
                raise ValueError(f"input `{n}` of shape {tuple(x.shape)} is outside the plan's profiles")
            ctx.set_tensor_address(n, x.data_ptr() if x.numel() else self.spare.data_ptr())
        outs = {}
        for n in self.outputs:
            y = self.t.empty(tuple(ctx.get_tensor_shape(n)), dtype=self.dtypes[n], device=self.device)
            outs[n] = y
            ctx.set_tensor_address(n, y.data_ptr() if y.numel() else self.spare.data_ptr())
        if not ctx.execute_async_v3(self.t.cuda.current_stream(self.device).cuda_stream):
            raise RuntimeError("TensorRT for RTX failed to enqueue the plan")
        return outs


def _cuda_reason(t):
    try:
        t.cuda.init()
    except Exception as e:
        return f"{type(e).__name__}: {e}"
    return "torch.cuda.is_available() is false"


def serve(inp, out):
    worker = Worker()
    ops = {"hello": worker.hello, "load": worker.load, "load_plan": worker.load_plan, "prefill": worker.prefill, "generate": worker.generate}
    for line in inp:
        line = line.strip()
        if not line:
            continue
        rid = None
        try:
            req = json.loads(line)
            rid = req.get("id")
            op = req.get("op")
            if op == "shutdown":
                out.write(json.dumps({"id": rid, "ok": True}) + "\n")
                out.flush()
                return
            handler = ops.get(op)
            if handler is None:
                raise ValueError(f"unknown op `{op}`; ops are {', '.join(sorted(ops))}, shutdown")
            resp = {"id": rid, "ok": True}
            resp.update(handler(req))
        except Unavailable as e:
            resp = {"id": rid, "ok": False, "unavailable": str(e)}
        except Exception as e:
            traceback.print_exc(file=sys.stderr)
            resp = {"id": rid, "ok": False, "error": f"{type(e).__name__}: {e}"}
        out.write(json.dumps(resp) + "\n")
        out.flush()


def main():
    # The protocol owns the real stdout; anything else printed (library banners, warnings)
    # goes to stderr so that it cannot corrupt a response.
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    serve(sys.stdin, proto)


if __name__ == "__main__":
    main()
