"""Times one hash algorithm on one payload size; one JSON record per repetition."""
import hashlib, json, sys, time

algo, size, reps, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
payload = bytes(range(256)) * (size // 256 + 1)
payload = payload[:size]
for _ in range(3):  # warm-up
    hashlib.new(algo, payload).digest()
with open(out, "w") as f:
    for rep in range(reps):
        t0 = time.perf_counter_ns()
        hashlib.new(algo, payload).digest()
        ms = (time.perf_counter_ns() - t0) / 1e6
        f.write(json.dumps({"algo": algo, "size": size, "rep": rep, "latency_ms": ms}) + "\n")
