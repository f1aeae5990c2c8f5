"""Renders the stats table as Markdown."""
import csv, sys

stats, out = sys.argv[1], sys.argv[2]
rows = list(csv.DictReader(open(stats)))
with open(out, "w") as f:
    f.write("# Hash throughput\n\n| algorithm | payload | n | mean ms | ± CI95 | MB/s |\n|---|---:|---:|---:|---:|---:|\n")
    for r in rows:
        f.write(f"| {r['algo']} | {r['size']} | {r['n']} | {r['mean_ms']} | {r['ci95_ms']} | {r['mb_per_s']} |\n")
