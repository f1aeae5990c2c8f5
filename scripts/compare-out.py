#!/usr/bin/env python3
"""Compares two builds of a study, `out/` against `out/`, timings aside.

    scripts/compare-out.py [--show] BEFORE/out AFTER/out

For a refactor that must change no result: build the study with the old and the new code
(each in a fresh clone), then run this. Every file must be present in both and
byte-identical, except where the bytes depend on the clock:

- measurements (`runs.jsonl`, `sweep.json`, `stats.json`, the `*.csv` beside them) and the
  report (`report.md`, `report.html`, `context.json`, `plots/*.svg`) are compared with every
  number and every hex digest replaced by `#`: same structure, same words, same names, other
  numbers (a digest of a file holding timings is another number);
- any other JSON file is compared with the values of timing and resource fields (`*_ms`,
  `*_s`, `*_us`, `started_at`, `duration*`, `peak_*`, …) masked;
- TensorRT plans (`*.plan`) are listed apart: the builder does not promise the same bytes
  for the same network, so they are said to differ, not counted as a change of the code.

Words that depend on timings can still differ in the report (which backend is fastest, how
many comparisons are significant): those lines are printed with `--show` to read.

Prints one line per file that differs beyond that, then a summary; exits 1 when any does.
"""

import json
import re
import sys
from pathlib import Path

NUMBER = re.compile(r"\b[0-9a-f]{16,64}\b|-?\d+(?:[.,]\d+)*(?:[eE][-+]?\d+)?")
TIMING_KEY = re.compile(r"(_ms|_s|_us|_ns|_sec|_secs|_seconds|_mib)$|^(started_at|duration|elapsed|wall|cpu_time|time|peak_)")
CLOCKED = re.compile(r"(^|/)(runs\.jsonl|sweep\.json|stats\.json|[^/]*\.csv|report\.(md|html)|context\.json|[^/]*\.svg)$")


def masked_numbers(data: bytes, csv: bool = False) -> str:
    text = data.decode("utf-8", "replace")
    if csv:
        # Cell by cell: a comma is a separator here, never a thousands mark.
        return "\n".join(",".join("#" if NUMBER.fullmatch(c) else c for c in line.split(",")) for line in text.splitlines())
    return NUMBER.sub("#", text)


def masked_timing(value):
    if isinstance(value, dict):
        return {k: ("<timing>" if TIMING_KEY.search(k) else masked_timing(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [masked_timing(v) for v in value]
    return value


def files(root: Path) -> set:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def main() -> int:
    paths = [a for a in sys.argv[1:] if not a.startswith("--")]
    if len(paths) != 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    before, after = Path(paths[0]), Path(paths[1])
    a, b = files(before), files(after)
    bad = []
    for rel in sorted(a ^ b):
        bad.append(f"only in {'before' if rel in a else 'after'}: {rel}")
    show = "--show" in sys.argv
    same = timing_only = 0
    plans = []
    for rel in sorted(a & b):
        x, y = (before / rel).read_bytes(), (after / rel).read_bytes()
        if x == y:
            same += 1
            continue
        if rel.endswith(".plan"):
            plans.append(rel)
            continue
        if CLOCKED.search(rel):
            csv = rel.endswith(".csv")
            mx, my = masked_numbers(x, csv), masked_numbers(y, csv)
            if mx == my:
                timing_only += 1
                continue
            bad.append(f"differs beyond its numbers: {rel}")
            if show:
                lines = [f"    - {l[:200]}\n    + {r[:200]}" for l, r in zip(mx.splitlines(), my.splitlines()) if l != r]
                bad.extend(lines[:6])
            continue
        if rel.endswith(".json"):
            try:
                if masked_timing(json.loads(x)) == masked_timing(json.loads(y)):
                    timing_only += 1
                    continue
            except ValueError:
                pass
        bad.append(f"differs: {rel}")
    for line in bad:
        print(line)
    for rel in plans:
        print(f"TensorRT plan, not byte-reproducible by its builder: {rel}")
    changed = sum(1 for line in bad if not line.startswith("    "))
    print(f"{same} files byte-identical, {timing_only} differ only in timings, {len(plans)} TensorRT plans differ, {changed} differ otherwise")
    return 1 if changed else 0


if __name__ == "__main__":
    sys.exit(main())
