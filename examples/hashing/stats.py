"""Mean and 95% confidence interval (Student t) per algorithm and size, as CSV."""
import csv, json, math, statistics, sys

# Two-sided 95% Student t quantiles for small samples; normal beyond.
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
       10: 2.228, 15: 2.131, 20: 2.086, 30: 2.042, 60: 2.000}

def t95(df):
    return T95.get(df) or T95[max(k for k in T95 if k <= df)] if df <= 60 else 1.96

out, paths = sys.argv[1], sys.argv[2:]
groups = {}
for p in paths:
    for line in open(p):
        r = json.loads(line)
        groups.setdefault((r["algo"], r["size"]), []).append(r["latency_ms"])
with open(out, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["algo", "size", "n", "mean_ms", "ci95_ms", "mb_per_s"])
    for (algo, size), xs in sorted(groups.items()):
        mean = statistics.fmean(xs)
        ci = t95(len(xs) - 1) * statistics.stdev(xs) / math.sqrt(len(xs)) if len(xs) > 1 else float("nan")
        w.writerow([algo, size, len(xs), f"{mean:.4f}", f"{ci:.4f}", f"{size / mean / 1e3:.1f}"])
