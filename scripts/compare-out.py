#!/usr/bin/env python3
"""Compares two builds of a study, `out/` against `out/`, timings aside.

    scripts/compare-out.py BEFORE/out AFTER/out

For a refactor that must change no result: build the study with the old and the new code
(each in a fresh clone), then run this. Every file must be present in both and
byte-identical, except where the bytes depend on the clock:

- measurements (`runs.jsonl`, `sweep.json`, `stats.json`, the `*.csv` beside them) and the
  report (`report.md`, `report.html`, `context.json`, `plots/*.svg`) are compared with every
  number replaced by `#`: same structure, same words, same names, other numbers;
- any other JSON file is compared with the values of timing fields (`*_ms`, `*_s`, `*_us`,
  `started_at`, `duration*`, `elapsed*`, …) masked.

Prints one line per file that differs beyond that, then a summary; exits 1 when any does.
"""

import json
import re
import sys
from pathlib import Path

NUMBER = re.compile(r"-?\d+(?:[.,]\d+)*(?:[eE][-+]?\d+)?")
TIMING_KEY = re.compile(r"(_ms|_s|_us|_ns|_sec|_secs|_seconds)$|^(started_at|duration|elapsed|wall|cpu_time|build_s|time)")
CLOCKED = re.compile(r"(^|/)(runs\.jsonl|sweep\.json|stats\.json|[^/]*\.csv|report\.(md|html)|context\.json|[^/]*\.svg)$")


def masked_numbers(data: bytes) -> str:
    return NUMBER.sub("#", data.decode("utf-8", "replace"))


def masked_timing(value):
    if isinstance(value, dict):
        return {k: ("<timing>" if TIMING_KEY.search(k) else masked_timing(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [masked_timing(v) for v in value]
    return value


def files(root: Path) -> set:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    before, after = Path(sys.argv[1]), Path(sys.argv[2])
    a, b = files(before), files(after)
    bad = []
    for rel in sorted(a ^ b):
        bad.append(f"only in {'before' if rel in a else 'after'}: {rel}")
    same = timing_only = 0
    for rel in sorted(a & b):
        x, y = (before / rel).read_bytes(), (after / rel).read_bytes()
        if x == y:
            same += 1
            continue
        if CLOCKED.search(rel):
            if masked_numbers(x) == masked_numbers(y):
                timing_only += 1
                continue
            bad.append(f"differs beyond its numbers: {rel}")
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
    print(f"{same} files byte-identical, {timing_only} differ only in timings, {len(bad)} differ otherwise")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
