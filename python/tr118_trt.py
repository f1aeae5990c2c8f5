#!/usr/bin/env python3
"""tr118's TensorRT for RTX helper: builds a plan from an ONNX model; judges a plan for the worker.

TensorRT for RTX has C++ and Python APIs and no C API, so tr118 reaches it through this
program, which it ships in its binary and runs under $TR118_PYTHON or python3:

  python3 tr118_trt.py build REQUEST.json     parse, build, write the plan and its layers

and the torch worker imports it to load the library and to ask it whether a plan can run
here (`judge`) before loading the plan.

The request names the library's directory (`libtensorrt_rtx.so.1` and
`libtensorrt_onnxparser_rtx.so.1`, as the `tensorrt-rtx-cu13-libs` wheel ships them) and the
Python bindings (`tensorrt_rtx.cpython-3XX-….so` from `tensorrt-rtx-cu13-bindings`, one per
Python version; the one this interpreter can import is used). The answer is one JSON object
written to the request's `result` path:

  {"status": "ok", ...}                      built
  {"status": "unavailable", "reason": ...}   this machine cannot do it (no bindings for this
                                              Python)
  {"status": "error", "error": ..., ...}     the input is wrong (the parser rejects the model,
                                              a profile the network refuses)

Everything the library logs goes to stderr, which tr118 keeps in the node's log, except the
verbose messages, which are megabytes; of those only the builder's layer report is kept: it is
the layer information of the plan, which `layers` receives as JSON in the shape of the engine
inspector's (`{"Layers": [{"Name", "LayerType", "Inputs": [{"Name", "Dimensions",
"Format/Datatype"}], "Outputs": [...], "Metadata"}]}`). The inspector itself needs a
deserialised engine, which needs a GPU the plan supports; the build report needs none, and
lists the kernels inside the compiler's fused regions, which the inspector shows as one
opaque layer.
"""

import ctypes
import importlib.machinery
import importlib.util
import json
import os
import re
import resource
import sys
import time


# The loaded library's version, `major.minor.patch.build`, as it reports it.
VERSION = None


class Unavailable(Exception):
    """This machine cannot do what was asked; the message says why."""


class BadInput(Exception):
    """The request's model, profiles or plan are wrong; the message says how."""


def load_trt(library, bindings):
    """The bindings module, with the library loaded first so that they bind to it."""
    global VERSION
    for name in ("libtensorrt_rtx.so.1", "libtensorrt_onnxparser_rtx.so.1"):
        path = os.path.join(library, name)
        if not os.path.isfile(path):
            raise Unavailable(f"`{name}` is not in `{library}`")
        try:
            lib = ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
        except OSError as e:
            raise Unavailable(f"cannot load `{path}`: {e}")
        if VERSION is None:
            parts = ("Major", "Minor", "Patch", "Build")
            VERSION = ".".join(str(getattr(lib, f"getInferLib{p}Version")()) for p in parts)
    suffixes = importlib.machinery.EXTENSION_SUFFIXES
    usable = [b for b in bindings if any(b.endswith(s) for s in suffixes[:1])]
    if not usable:
        have = ", ".join(os.path.basename(b) for b in bindings) or "none"
        version = ".".join(map(str, sys.version_info[:2]))
        raise Unavailable(
            f"no TensorRT for RTX bindings for Python {version} ({sys.executable}, extension suffix "
            f"`{suffixes[0]}`); bindings given: {have}"
        )
    path = usable[0]
    loader = importlib.machinery.ExtensionFileLoader("tensorrt_rtx", path)
    spec = importlib.util.spec_from_file_location("tensorrt_rtx", path, loader=loader)
    module = importlib.util.module_from_spec(spec)
    try:
        loader.exec_module(module)
    except ImportError as e:
        raise Unavailable(f"cannot import the bindings `{path}`: {e}")
    return module


def make_logger(trt):
    class Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.messages = []
            self.layer_report = None

        def log(self, severity, msg):
            if severity == trt.ILogger.Severity.VERBOSE:
                if msg.startswith("Layers:\n"):
                    self.layer_report = msg
                return
            self.messages.append((severity.name, msg))
            print(f"[{severity.name}] {msg}", file=sys.stderr, flush=True)

        def errors(self):
            bad = (trt.ILogger.Severity.ERROR.name, trt.ILogger.Severity.INTERNAL_ERROR.name)
            return [m for s, m in self.messages if s in bad]

    return Logger()


# --- the layer report ------------------------------------------------------------------

def split_top(text, sep=","):
    """Splits at `sep` outside brackets and braces."""
    parts, depth, start = [], 0, 0
    for i, c in enumerate(text):
        if c in "[{(":
            depth += 1
        elif c in "]})":
            depth -= 1
        elif c == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


FIELD = re.compile(r"^([A-Za-z]+): ?(.*)$", re.S)


def fields_of(text):
    out = {}
    for part in split_top(text):
        m = FIELD.match(part)
        if m:
            out[m.group(1)] = m.group(2).strip()
    return out


def tensors_of(text):
    text = text.strip()
    if not (text.startswith("[") and text.endswith("]")):
        return []
    tensors = []
    for item in split_top(text[1:-1]):
        item = item.strip()
        if item.startswith("{") and item.endswith("}"):
            f = fields_of(item[1:-1])
            dims = [int(d) for d in re.findall(r"-?\d+", f.get("Dimensions", ""))]
            tensors.append(
                {
                    "Name": f.get("Name", ""),
                    "Dimensions": dims,
                    "Format/Datatype": f"{f.get('Format', '')} {f.get('Datatype', '')}".strip(),
                }
            )
    return tensors


def parse_layer_report(report):
    """The builder's `Layers:` report, one layer per line, as inspector-shaped JSON."""
    layers = []
    for line in report.splitlines()[1:]:
        if not line.startswith("Name: "):
            continue
        # The name may hold commas; it ends where `, LayerType: ` begins.
        name, sep, rest = line[len("Name: ") :].partition(", LayerType: ")
        if not sep:
            continue
        f = fields_of("LayerType: " + rest)
        layers.append(
            {
                "Name": name,
                "LayerType": f.get("LayerType", ""),
                "Inputs": tensors_of(f.get("Inputs", "[]")),
                "Constants": tensors_of(f.get("Constants", "[]")),
                "Outputs": tensors_of(f.get("Outputs", "[]")),
                "TacticName": f.get("TacticName", ""),
                "Metadata": f.get("Metadata", ""),
            }
        )
    return {"Layers": layers}


# --- build -----------------------------------------------------------------------------

def parser_errors(parser):
    out = []
    for i in range(parser.num_errors):
        e = parser.get_error(i)
        out.append(
            {
                "node": e.node(),
                "node_name": e.node_name(),
                "operator": e.node_operator(),
                "code": str(e.code()).split(".")[-1],
                "description": e.desc(),
            }
        )
    return out


def build(req):
    trt = load_trt(req["library"], req["bindings"])
    log = make_logger(trt)
    builder = trt.Builder(log)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, log)
    t0 = time.perf_counter()
    parsed = parser.parse_from_file(req["onnx"])
    parse_s = time.perf_counter() - t0
    if not parsed:
        errors = parser_errors(parser)
        first = errors[0] if errors else {"description": "; ".join(log.errors()) or "no reason given"}
        where = f"node {first.get('node_name') or first.get('node')} ({first.get('operator')}): " if errors else ""
        raise BadInput(json.dumps({"error": f"the ONNX parser rejects the model: {where}{first['description']}", "parser_errors": errors}))

    io = {"inputs": [], "outputs": []}
    for i in range(network.num_inputs):
        t = network.get_input(i)
        io["inputs"].append({"name": t.name, "shape": list(t.shape), "dtype": t.dtype.name.lower()})
    for i in range(network.num_outputs):
        t = network.get_output(i)
        io["outputs"].append({"name": t.name, "shape": list(t.shape), "dtype": t.dtype.name.lower()})

    config = builder.create_builder_config()
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    if req.get("workspace_mib"):
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(req["workspace_mib"]) << 20)
    for n, shapes in enumerate(req["profiles"]):
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in shapes.items():
            profile.set_shape(name, lo, opt, hi)
        if not profile:
            raise BadInput(json.dumps({"error": f"profile {n} is not valid for the network: {'; '.join(log.errors()) or 'no reason given'}"}))
        if config.add_optimization_profile(profile) < 0:
            raise BadInput(json.dumps({"error": f"profile {n} is refused by the builder: {'; '.join(log.errors()) or 'no reason given'}"}))

    t0 = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    build_s = time.perf_counter() - t0
    if plan is None:
        raise BadInput(json.dumps({"error": "the builder made no plan: " + ("; ".join(log.errors()) or "no reason given")}))
    # A profile whose corners the network's shape arithmetic cannot satisfy builds, with a
    # warning, into a plan that fails at those shapes: refused here instead.
    inconsistent = [m for s, m in log.messages if "not self-consistent" in m]
    if inconsistent:
        reason = inconsistent[0].split(" In operator()")[0]
        raise BadInput(json.dumps({"error": f"a profile does not fit the model: {reason}"}))
    tmp = req["plan"] + ".partial"
    with open(tmp, "wb") as f:
        f.write(plan)
    os.replace(tmp, req["plan"])

    layers = parse_layer_report(log.layer_report) if log.layer_report else {"Layers": []}
    with open(req["layers"], "w") as f:
        json.dump(layers, f, indent=1)

    engine_s = None
    for _, m in log.messages:
        g = re.match(r"Engine generation completed in ([0-9.]+) seconds", m)
        if g:
            engine_s = float(g.group(1))
    return {
        "status": "ok",
        "version": VERSION,
        "parse_s": parse_s,
        "build_s": build_s,
        "engine_build_s": engine_s,
        "plan_bytes": plan.nbytes,
        "peak_rss_mib": peak_rss_mib(),
        "layer_report": log.layer_report is not None,
        **io,
    }


def peak_rss_mib():
    """This process's peak resident memory, parsing and building included: `VmHWM`, the high
    water mark of its own address space. Not `ru_maxrss`, which Linux carries across `execve`
    from the process that spawned this one (tr118, whose peak may be larger)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# --- judging a plan --------------------------------------------------------------------

def judge(trt, log, blob, name):
    """Whether this machine can run the plan `blob` (read from `name`), as the library judges
    it before loading: returns when it can; raises BadInput for a plan of another version or
    no plan at all, Unavailable with the library's reason when this GPU (or none) cannot."""
    runtime = trt.Runtime(log)
    validity, diagnostics = runtime.get_engine_validity(blob)
    said = [m for _, m in log.messages]
    mismatch = [m for m in said if "has been created with TensorRT-RTX version" in m]
    if mismatch:
        raise BadInput(json.dumps({"error": f"`{name}` was built by another TensorRT for RTX: {mismatch[0]}"}))
    if validity.name in ("VALID", "SUBOPTIMAL"):
        return
    reasons = log.errors() or said
    reason = reasons[-1] if reasons else f"the plan is {validity.name.lower()} here"
    if diagnostics & int(trt.EngineInvalidityDiagnostics.MALFORMED_ENGINE):
        raise BadInput(json.dumps({"error": f"`{name}` is not a TensorRT for RTX plan: {reason}"}))
    raise Unavailable(reason)


def main():
    if len(sys.argv) != 3 or sys.argv[1] != "build":
        print("usage: tr118_trt.py build REQUEST.json", file=sys.stderr)
        return 2
    with open(sys.argv[2]) as f:
        req = json.load(f)
    try:
        answer = build(req)
    except Unavailable as e:
        answer = {"status": "unavailable", "reason": str(e)}
    except BadInput as e:
        answer = {"status": "error", **json.loads(str(e))}
    tmp = req["result"] + ".partial"
    with open(tmp, "w") as f:
        json.dump(answer, f, indent=1)
    os.replace(tmp, req["result"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
