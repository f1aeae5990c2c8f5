#!/usr/bin/env bash
# Engine benchmark for tr118: no-op, `status` and one-backend-change times on a synthetic
# pipeline of the study's shape, against ninja on the same shape in the same run, and
# optionally against Snakemake and DVC.
#
#   bash bench/engine.sh [K] [S]          # K backends, S scenarios (default 6 6 = 52 nodes)
#   bash bench/engine.sh 40 40            # 1,684 nodes;  bash bench/engine.sh 98 100: 10,000
#   BENCH_PEERS=1 bash bench/engine.sh 6 6  # also Snakemake and DVC (installed into bench/.venv)
#
# Shape: fetch → export → build/<b> (K) → perplexity/<b> (K) → sweep/<b>/<s> (K×S)
#        → stats (glob fan-in over every sweep) → report (stats + every perplexity).
# Nodes: 4 + 2K + K·S (52 at 6×6, 1,684 at 40×40). Commands are trivial `sh -c` one-liners
# that read their upstream output and write their own, so data really flows.
#
# ninja (Debian's `ninja-build`: the one on PATH, else `apt-get download` unpacked into
# bench/.ninja) gets one `build` edge per node with the same commands; a changed `threads`
# changes the edge's command line, which ninja's log notices. It only compares mtimes, so it
# is the floor for a no-op: noop_vs_ninja = noop_ms / ninja_noop_ms (target ≤ 2).
#
# Steps: cold build (build_ms); no-op `make` (first one reported alone as noop_first_ms —
# it fills the stat cache and the no-op index — then the median of BENCH_NOOP_RUNS more,
# noop_ms, each run followed by a ninja no-op and a `tr118 status`, so the three see the
# same machine; status_ms is the median of the latter); then change
# one backend's `threads` param and `make --json -j 1` (change_ms, median of
# BENCH_CHANGE_RUNS edits, each to a new value), checking from the JSON that exactly that
# backend's build, perplexity and S sweeps plus stats and report reran (1+1+S+2).
# cmd_ms is the sum of the rerun nodes' `duration_ms` (which is measured around the whole
# node: command plus committing its outputs to the cache); cmd_only_ms is the sum of the
# commands' own time as recorded in their manifests. overhead_pct = (change_ms - cmd_ms) /
# cmd_ms · 100 (target ≤ 20); overhead_cmd_only_pct uses cmd_only_ms instead.
#
# Environment:
#   TR118_BIN=path          use this binary instead of building target/release/tr118
#   BENCH_NOOP_RUNS=10      timed no-op runs (after the first)
#   BENCH_CHANGE_RUNS=5     one-backend edits timed (each to a fresh param value)
#   BENCH_WORK_MS=0         make every command also sleep this many ms (overhead vs real work)
#   BENCH_KEEP=1            keep the temporary workspaces
#   BENCH_PEERS=1           also measure peers (pip-installs dvc + snakemake into bench/.venv)
#   BENCH_PEER_LIST="snakemake dvc"   which peers
#   BENCH_PEER_PKGS="dvc snakemake"   what to pip install
#   BENCH_PEER_RUNS=5       timed peer no-op runs; BENCH_PEER_CHANGE_RUNS=1 peer edits
#   BENCH_PEER_TIMEOUT=600  seconds allowed per peer command (the cold build included)
#   NINJA=path              use this ninja (default: `ninja` on PATH, else bench/.ninja)
#
# The last line of stdout is one JSON object; everything before it is for people.

set -uo pipefail
export LC_ALL=C

K=${1:-6}
S=${2:-6}
NOOP_RUNS=${BENCH_NOOP_RUNS:-10}
CHANGE_RUNS=${BENCH_CHANGE_RUNS:-5}
WORK_MS=${BENCH_WORK_MS:-0}
PEER_RUNS=${BENCH_PEER_RUNS:-5}
PEER_CHANGE_RUNS=${BENCH_PEER_CHANGE_RUNS:-1}
PEER_TIMEOUT=${BENCH_PEER_TIMEOUT:-600}
PEER_LIST=${BENCH_PEER_LIST:-snakemake dvc}
PEER_PKGS=${BENCH_PEER_PKGS:-dvc snakemake}

die() { echo "engine.sh: error: $*" >&2; exit 1; }
say() { echo "$*"; }

[[ $K =~ ^[0-9]+$ && $K -ge 2 && $S =~ ^[0-9]+$ && $S -ge 1 ]] || die "usage: bash bench/engine.sh K S  (K ≥ 2 backends, S ≥ 1 scenarios)"
command -v python3 >/dev/null || die "python3 is needed (timing statistics and JSON)"
[[ -n ${EPOCHREALTIME:-} ]] || die "bash ≥ 5 is needed (\$EPOCHREALTIME, a fork-free microsecond clock)"

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO" || die "cannot enter $REPO"

# ---------------------------------------------------------------------------------------
# The binary: build it (a no-op when fresh), then freeze a copy so a rebuild by someone
# else in the middle of the run cannot mix two binaries into one set of numbers.
WORK=$(mktemp -d "${TMPDIR:-/tmp}/tr118-engine-bench.XXXXXX") || die "mktemp failed"
cleanup() { [[ ${BENCH_KEEP:-0} == 1 ]] && echo "kept workspaces under $WORK" >&2 || rm -rf "$WORK"; }
trap cleanup EXIT

if [[ -n ${TR118_BIN:-} ]]; then
    SRC_BIN=$TR118_BIN
else
    say "building: cargo build --release"
    if ! cargo build --release >"$WORK/cargo.log" 2>&1; then
        tail -30 "$WORK/cargo.log" >&2
        die "cargo build --release failed (log above); set TR118_BIN=path to bench an existing binary"
    fi
    SRC_BIN=$REPO/target/release/tr118
fi
[[ -x $SRC_BIN ]] || die "no binary at $SRC_BIN"
mkdir -p "$WORK/bin"; BIN=$WORK/bin/tr118
cp "$SRC_BIN" "$BIN" || die "cannot copy $SRC_BIN"
BIN_VERSION=$("$BIN" --version 2>/dev/null || echo unknown)
GIT_REV=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)
GIT_DIRTY=$([[ -n $(git -C "$REPO" status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null) ]] && echo true || echo false)
CPUS=$(nproc 2>/dev/null || echo 1)

loadavg() { cut -d' ' -f1 /proc/loadavg 2>/dev/null || echo null; }
LOAD_START=$(loadavg)
# How busy the CPUs are right now (others' work inflates every number): /proc/stat over 0.5 s.
cpu_busy_pct() {
    python3 -c '
import time
def s():
    v = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    return sum(v), v[3] + v[4]
try:
    t0, i0 = s(); time.sleep(0.5); t1, i1 = s()
    print(round(100 * (1 - (i1 - i0) / max(t1 - t0, 1)), 1))
except Exception:
    print("null")' 2>/dev/null || echo null
}
BUSY_START=$(cpu_busy_pct)

NODES_EXPECTED=$((4 + 2 * K + K * S))
CHANGED_IDX=$((K / 2))
CHANGED=b$CHANGED_IDX
EXPECTED_RERAN=$((1 + 1 + S + 2))

# ---------------------------------------------------------------------------------------
# Timing: bash's $EPOCHREALTIME, read without forking, around the whole process.
ELAPSED_US=0
timed() { # timed OUT ERR cmd…  → sets ELAPSED_US, returns the command's status
    local out=$1 err=$2 t0 t1 rc
    shift 2
    t0=${EPOCHREALTIME/./}
    "$@" >"$out" 2>"$err"
    rc=$?
    t1=${EPOCHREALTIME/./}
    ELAPSED_US=$((10#$t1 - 10#$t0))
    return $rc
}
ms() { printf '%d.%03d' $(($1 / 1000)) $(($1 % 1000)); }
median_ms() { python3 -c 'import sys,statistics; v=[int(x) for x in sys.argv[1:]]; print("%.3f" % (statistics.median(v)/1000))' "$@"; }

# A command prefix every generated command gets: optional simulated work.
if [[ $WORK_MS -gt 0 ]]; then
    WORK_SH="sleep $(printf '%d.%03d' $((WORK_MS / 1000)) $((WORK_MS % 1000))); "
else
    WORK_SH=""
fi

# threads of backend i in edit number `edit` (0 = the original pipeline)
threads_of() { local i=$1 edit=$2; if [[ $i -eq $CHANGED_IDX && $edit -gt 0 ]]; then echo $((1 + edit)); else echo 1; fi; }

# ---------------------------------------------------------------------------------------
# The tr118 pipeline.
gen_tr118() { # gen_tr118 EDIT > tr118.toml
    local edit=$1 i s
    echo "# synthetic engine benchmark: K=$K backends, S=$S scenarios (bench/engine.sh)"
    echo "[params]"
    echo "reps = 3"
    echo
    echo "[axes]"
    printf 'backend = ['
    for ((i = 0; i < K; i++)); do
        ((i > 0)) && printf ', '
        printf '{ name = "b%d", threads = %d }' "$i" "$(threads_of "$i" "$edit")"
    done
    printf ']\n'
    printf 'scenario = ['
    for ((s = 0; s < S; s++)); do
        ((s > 0)) && printf ', '
        printf '"s%d"' "$s"
    done
    printf ']\n'
    cat <<EOF

[stages.fetch]
cmd = ["sh", "-c", '${WORK_SH}echo model > "\$0"', "{outs.model}"]
outs = { model = "model.bin" }

[stages.export]
cmd = ["sh", "-c", '${WORK_SH}cat "\$0" > "\$1"; echo onnx >> "\$1"', "{deps.model}", "{outs.onnx}"]
deps = { model = "out/fetch/model.bin" }
outs = { onnx = "model.onnx" }

[stages.build]
matrix = ["backend"]
cmd = ["sh", "-c", '${WORK_SH}cat "\$0" > "\$1"; echo "build \$2 threads=\$3" >> "\$1"', "{deps.onnx}", "{outs.plan}", "{matrix.backend}", "{params.threads}"]
deps = { onnx = "out/export/model.onnx" }
outs = { plan = "plan.txt" }
params = { threads = "{matrix.backend.threads}" }

[stages.perplexity]
matrix = ["backend"]
cmd = ["sh", "-c", '${WORK_SH}cat "\$0" > "\$1"; echo "ppl \$2" >> "\$1"', "{deps.plan}", "{outs.ppl}", "{matrix.backend}"]
deps = { plan = "out/build/{matrix.backend}/plan.txt" }
outs = { ppl = "ppl.json" }

[stages.sweep]
matrix = ["backend", "scenario"]
cmd = ["sh", "-c", '${WORK_SH}cat "\$0" > "\$1"; echo "sweep \$2 \$3 reps=\$4" >> "\$1"', "{deps.plan}", "{outs.records}", "{matrix.backend}", "{matrix.scenario}", "{params.reps}"]
deps = { plan = "out/build/{matrix.backend}/plan.txt" }
outs = { records = "records.jsonl" }
timing = true

[stages.stats]
cmd = ["sh", "-c", '${WORK_SH}out="\$0"; cat "\$@" > "\$out"', "{outs.table}", "{deps.records}"]
deps = { records = "out/sweep/*/*/records.jsonl" }
outs = { table = "stats.csv" }

[stages.report]
cmd = ["sh", "-c", '${WORK_SH}out="\$0"; cat "\$@" > "\$out"; echo report >> "\$out"', "{outs.report}", "{deps.stats}", "{deps.ppl}"]
deps = { stats = "out/stats/stats.csv", ppl = "out/perplexity/*/ppl.json" }
outs = { report = "report.txt" }
EOF
}

# ---------------------------------------------------------------------------------------
# The same shape for ninja: one edge per node, the same commands.
gen_ninja() { # gen_ninja EDIT > build.ninja
    local edit=$1 i s
    echo "# synthetic engine benchmark, ninja side (bench/engine.sh)"
    echo "rule fetch"
    echo "  command = sh -c '${WORK_SH}echo model > \"\$\$0\"' \$out"
    echo "rule export"
    echo "  command = sh -c '${WORK_SH}cat \"\$\$0\" > \"\$\$1\"; echo onnx >> \"\$\$1\"' \$in \$out"
    echo "rule build"
    echo "  command = sh -c '${WORK_SH}cat \"\$\$0\" > \"\$\$1\"; echo \"build \$\$2 threads=\$\$3\" >> \"\$\$1\"' \$in \$out \$backend \$threads"
    echo "rule perplexity"
    echo "  command = sh -c '${WORK_SH}cat \"\$\$0\" > \"\$\$1\"; echo \"ppl \$\$2\" >> \"\$\$1\"' \$in \$out \$backend"
    echo "rule sweep"
    echo "  command = sh -c '${WORK_SH}cat \"\$\$0\" > \"\$\$1\"; echo \"sweep \$\$2 \$\$3 reps=\$\$4\" >> \"\$\$1\"' \$in \$out \$backend \$scenario 3"
    # The fan-ins read their inputs from a response file: ninja hands a command to `sh -c` as one
    # argument, which Linux caps at 128 KiB (10,000 nodes' paths are more).
    echo "rule stats"
    echo "  command = sh -c '${WORK_SH}xargs cat < \"\$\$0\" > \"\$\$1\"' \$out.rsp \$out"
    echo "  rspfile = \$out.rsp"
    echo "  rspfile_content = \$in"
    echo "rule report"
    echo "  command = sh -c '${WORK_SH}xargs cat < \"\$\$0\" > \"\$\$1\"; echo report >> \"\$\$1\"' \$out.rsp \$out"
    echo "  rspfile = \$out.rsp"
    echo "  rspfile_content = \$in"
    echo "build out/fetch/model.bin: fetch"
    echo "build out/export/model.onnx: export out/fetch/model.bin"
    local sweeps="" ppls=""
    for ((i = 0; i < K; i++)); do
        printf 'build out/build/b%d/plan.txt: build out/export/model.onnx\n  backend = b%d\n  threads = %d\n' "$i" "$i" "$(threads_of "$i" "$edit")"
        printf 'build out/perplexity/b%d/ppl.json: perplexity out/build/b%d/plan.txt\n  backend = b%d\n' "$i" "$i" "$i"
        ppls+=" out/perplexity/b$i/ppl.json"
        for ((s = 0; s < S; s++)); do
            printf 'build out/sweep/b%d/s%d/records.jsonl: sweep out/build/b%d/plan.txt\n  backend = b%d\n  scenario = s%d\n' "$i" "$s" "$i" "$i" "$s"
            sweeps+=" out/sweep/b$i/s$s/records.jsonl"
        done
    done
    # In the order tr118 expands a glob: bytewise.
    sorted_list() { tr ' ' '\n' <<<"$1" | sed '/^$/d' | sort | tr '\n' ' ' | sed 's/ $//'; }
    echo "build out/stats/stats.csv: stats $(sorted_list "$sweeps")"
    echo "build out/report/report.txt: report out/stats/stats.csv $(sorted_list "$ppls")"
    echo "default out/report/report.txt"
}

# ninja itself: NINJA, else PATH, else Debian's package unpacked into bench/.ninja.
find_ninja() {
    if [[ -n ${NINJA:-} ]]; then echo "$NINJA"; return; fi
    if command -v ninja >/dev/null; then command -v ninja; return; fi
    local dir=$REPO/bench/.ninja
    if [[ ! -x $dir/usr/bin/ninja ]] && command -v apt-get >/dev/null && command -v dpkg >/dev/null; then
        mkdir -p "$dir" && (cd "$WORK" && apt-get download ninja-build >"$WORK/ninja-dl.log" 2>&1 &&
            dpkg -x ninja-build_*.deb "$dir") || { tail -5 "$WORK/ninja-dl.log" >&2; rm -rf "$dir"; }
    fi
    [[ -x $dir/usr/bin/ninja ]] && echo "$dir/usr/bin/ninja"
}
NINJA_BIN=$(find_ninja)
NINJA_VER=$([[ -n $NINJA_BIN ]] && "$NINJA_BIN" --version 2>/dev/null)
[[ -n $NINJA_BIN ]] || echo "engine.sh: warning: no ninja (install Debian's ninja-build or set NINJA=path); measuring tr118 alone" >&2

# ---------------------------------------------------------------------------------------
# tr118
say ""
say "== tr118 engine benchmark: K=$K backends × S=$S scenarios = $NODES_EXPECTED nodes"
say "   binary: $SRC_BIN ($BIN_VERSION, git $GIT_REV$([[ $GIT_DIRTY == true ]] && echo ', src modified'))  cpus: $CPUS  work per command: ${WORK_MS} ms"
say "   reproduce: bash bench/engine.sh $K $S"
if [[ $BUSY_START != null ]] && python3 -c 'import sys; sys.exit(0 if float(sys.argv[1]) > 10 else 1)' "$BUSY_START"; then
    say "   WARNING: the CPUs were ${BUSY_START}% busy just before starting; other work on this machine inflates the numbers"
fi

WS=$WORK/tr118
mkdir -p "$WS"
gen_tr118 0 >"$WS/tr118.toml"

if ! timed "$WORK/cold.ndjson" "$WORK/cold.err" "$BIN" -C "$WS" make --json; then
    cat "$WORK/cold.err" >&2
    die "the cold build failed"
fi
BUILD_US=$ELAPSED_US
read -r COLD_NODES COLD_MISS < <(python3 -c '
import json,sys
recs=[json.loads(l) for l in open(sys.argv[1]) if l.strip()]
bad=[r["id"] for r in recs if r["cache"]!="miss" or r["status"]!="ok"]
if bad: print("not run ok:", bad[:5], file=sys.stderr)
print(len(recs), sum(r["cache"]=="miss" for r in recs))' "$WORK/cold.ndjson")
[[ $COLD_NODES -eq $NODES_EXPECTED && $COLD_MISS -eq $NODES_EXPECTED ]] ||
    die "cold build: expected $NODES_EXPECTED nodes all run, got $COLD_NODES nodes, $COLD_MISS run"
say "cold build (make, -j $CPUS): $(ms $BUILD_US) ms for $COLD_NODES nodes  [$(grep -m1 " nodes: " "$WORK/cold.err")]"

NINJA_WS=$WORK/ninja
if [[ -n $NINJA_BIN ]]; then
    mkdir -p "$NINJA_WS"
    gen_ninja 0 >"$NINJA_WS/build.ninja"
    timed "$WORK/ninja.cold.out" "$WORK/ninja.cold.err" "$NINJA_BIN" -C "$NINJA_WS" -j "$CPUS" ||
        { tail -n 20 "$WORK/ninja.cold.out" "$WORK/ninja.cold.err" >&2; die "ninja's cold build failed"; }
    NINJA_BUILD_US=$ELAPSED_US
    say "ninja $NINJA_VER cold build (-j $CPUS): $(ms $NINJA_BUILD_US) ms"
fi

# No-op. The stat cache does not trust files younger than its racy window (100 ms), so
# wait that out first; the first no-op then hashes every output once and records it.
sleep 0.2
timed /dev/null "$WORK/noop.err" "$BIN" -C "$WS" make || { cat "$WORK/noop.err" >&2; die "first no-op failed"; }
NOOP_FIRST_US=$ELAPSED_US
grep -q "^$NODES_EXPECTED nodes: 0 ran, $NODES_EXPECTED fresh" "$WORK/noop.err" ||
    { cat "$WORK/noop.err" >&2; die "first no-op was not a no-op"; }
[[ -n $NINJA_BIN ]] && { "$NINJA_BIN" -C "$NINJA_WS" >/dev/null 2>&1 || die "ninja's first no-op failed"; }
NOOP_US=()
NINJA_US=()
STATUS_US=()
for ((r = 0; r < NOOP_RUNS; r++)); do
    timed /dev/null "$WORK/noop.err" "$BIN" -C "$WS" make || { cat "$WORK/noop.err" >&2; die "no-op failed"; }
    NOOP_US+=("$ELAPSED_US")
    if [[ -n $NINJA_BIN ]]; then
        timed "$WORK/ninja.noop.out" "$WORK/ninja.noop.err" "$NINJA_BIN" -C "$NINJA_WS" || die "ninja's no-op failed"
        NINJA_US+=("$ELAPSED_US")
    fi
    timed "$WORK/status.out" "$WORK/status.err" "$BIN" -C "$WS" status || { cat "$WORK/status.err" >&2; die "status failed"; }
    STATUS_US+=("$ELAPSED_US")
done
grep -q "^$NODES_EXPECTED nodes: 0 ran, $NODES_EXPECTED fresh" "$WORK/noop.err" ||
    { cat "$WORK/noop.err" >&2; die "no-op was not a no-op"; }
[[ $(grep -c "^fresh " "$WORK/status.out") -eq $NODES_EXPECTED ]] || { head "$WORK/status.out" >&2; die "status did not say every node is fresh"; }
if [[ -n $NINJA_BIN ]]; then
    grep -q "no work to do" "$WORK/ninja.noop.out" || { cat "$WORK/ninja.noop.out" >&2; die "ninja's no-op was not a no-op"; }
fi
NOOP_MS=$(median_ms "${NOOP_US[@]}")
STATUS_MS=$(median_ms "${STATUS_US[@]}")
NINJA_MS=$([[ -n $NINJA_BIN ]] && median_ms "${NINJA_US[@]}" || echo null)
all_ms() { for u in "$@"; do printf '%s ' "$(ms "$u")"; done | sed 's/ $//'; }
say "no-op make: first $(ms $NOOP_FIRST_US) ms, then median $NOOP_MS ms over $NOOP_RUNS runs (all: $(all_ms "${NOOP_US[@]}"))  [$(head -1 "$WORK/noop.err")]"
say "status:     median $STATUS_MS ms (all: $(all_ms "${STATUS_US[@]}"))"
[[ -n $NINJA_BIN ]] && say "ninja no-op: median $NINJA_MS ms (all: $(all_ms "${NINJA_US[@]}")), runs interleaved with tr118's"
# The two did the same work: the same report, byte for byte.
SAME_OUTPUT=null
if [[ -n $NINJA_BIN ]]; then
    cmp -s "$WS/out/report/report.txt" "$NINJA_WS/out/report/report.txt" && SAME_OUTPUT=true || die "tr118's and ninja's reports differ"
fi

# One backend's param changes: edit e sets threads of $CHANGED to 1+e (always a new value).
CHANGE_US=()
CHANGE_FILES=()
for ((e = 1; e <= CHANGE_RUNS; e++)); do
    sleep 0.2
    gen_tr118 "$e" >"$WS/tr118.toml"
    timed "$WORK/change$e.ndjson" "$WORK/change$e.err" "$BIN" -C "$WS" make --json -j 1 ||
        { cat "$WORK/change$e.err" >&2; die "the change run failed"; }
    CHANGE_US+=("$ELAPSED_US")
    CHANGE_FILES+=("$WORK/change$e.ndjson:$ELAPSED_US")
done
CHANGE_MS=$(median_ms "${CHANGE_US[@]}")

# Check every change run: exactly the changed backend's nodes plus stats and report reran.
CHANGE_JSON=$(python3 - "$WS" "$CHANGED" "$S" "$NODES_EXPECTED" "${CHANGE_FILES[@]}" <<'EOF'
import json, statistics, sys
ws, changed, S, nodes = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
expected = {f"build/{changed}", f"perplexity/{changed}", "stats", "report"} | {f"sweep/{changed}/s{s}" for s in range(S)}
runs, ok = [], True
for arg in sys.argv[5:]:
    path, us = arg.rsplit(":", 1)
    recs = [json.loads(l) for l in open(path) if l.strip()]
    miss = [r for r in recs if r["cache"] == "miss"]
    ids = {r["id"] for r in miss}
    bad = [r for r in recs if r["status"] not in ("ok",)]
    if ids != expected or len(recs) != nodes or bad:
        ok = False
        print(f"MISMATCH in {path}: {len(recs)} records, reran {sorted(ids)}", file=sys.stderr)
        print(f"  unexpected: {sorted(ids - expected)}  missing: {sorted(expected - ids)}  not ok: {[r['id'] for r in bad]}", file=sys.stderr)
    cmd_ms = sum(r["duration_ms"] for r in miss)
    cmd_only = 0
    for r in miss:
        try:
            cmd_only += json.load(open(f"{ws}/cache/actions/{r['key']}.json"))["duration_ms"]
        except Exception as e:  # the manifest layout is the engine's business; degrade gracefully
            cmd_only = None
            break
    change_ms = int(us) / 1000
    runs.append({"change_ms": change_ms, "reran": len(miss), "cmd_ms": cmd_ms, "cmd_only_ms": cmd_only,
                 "reran_ids": sorted(ids)})
med = lambda k: statistics.median(r[k] for r in runs) if all(r[k] is not None for r in runs) else None
print(json.dumps({"ok": ok, "reran": runs[0]["reran"], "all_reran": [r["reran"] for r in runs],
                  "cmd_ms": med("cmd_ms"), "cmd_only_ms": med("cmd_only_ms"),
                  "change_runs_ms": [r["change_ms"] for r in runs],
                  "overheads": [round((r["change_ms"] - r["cmd_ms"]) / r["cmd_ms"] * 100, 1) if r["cmd_ms"] else None for r in runs],
                  "reran_ids": runs[0]["reran_ids"]}))
EOF
) || die "cannot read the change runs' JSON"
CHANGE_OK=$(python3 -c 'import json,sys; print(str(json.loads(sys.argv[1])["ok"]).lower())' "$CHANGE_JSON")
RERAN=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["reran"])' "$CHANGE_JSON")
say "one-backend change (threads of $CHANGED, make --json -j 1): median $CHANGE_MS ms over $CHANGE_RUNS edits; reran $RERAN, expected $EXPECTED_RERAN (build, perplexity, $S sweeps, stats, report)"
say "  human summary of the first change run (stderr of the same run):"
sed 's/^/    | /' "$WORK/change1.err"
say "  per-edit: $(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print(", ".join("%.1f ms (overhead %s%%)" % (c, o) for c, o in zip(d["change_runs_ms"], d["overheads"])))' "$CHANGE_JSON")"
if [[ $CHANGE_OK != true ]]; then
    echo "engine.sh: FAIL: the one-backend change did not rerun exactly the expected $EXPECTED_RERAN nodes (see above)" >&2
fi

# ninja's one-backend change: the same edit, once.
NINJA_CHANGE_US=null
NINJA_RERAN=null
if [[ -n $NINJA_BIN ]]; then
    sleep 0.2
    gen_ninja 1 >"$NINJA_WS/build.ninja"
    timed "$WORK/ninja.change.out" "$WORK/ninja.change.err" "$NINJA_BIN" -C "$NINJA_WS" -j 1 || die "ninja's change run failed"
    NINJA_CHANGE_US=$ELAPSED_US
    NINJA_RERAN=$(grep -c '^\[' "$WORK/ninja.change.out")
    say "ninja one-backend change: $(ms $NINJA_CHANGE_US) ms, ran $NINJA_RERAN edges (tr118: $EXPECTED_RERAN)"
fi

# ---------------------------------------------------------------------------------------
# Peers (BENCH_PEERS=1): the same shape as a Snakemake workflow and as a DVC pipeline.
VENV=$REPO/bench/.venv
PEERS_JSON="{}"

gen_smk_config() { # gen_smk_config EDIT > config.yaml
    local edit=$1 i s
    echo "backends:"
    for ((i = 0; i < K; i++)); do echo "  b$i: {threads: $(threads_of "$i" "$edit")}"; done
    echo "scenarios:"
    for ((s = 0; s < S; s++)); do echo "  - s$s"; done
    echo "reps: 3"
}
gen_snakefile() {
    cat <<EOF
# synthetic engine benchmark, Snakemake side (bench/engine.sh)
configfile: "config.yaml"
BACKENDS = list(config["backends"])
SCENARIOS = config["scenarios"]
wildcard_constraints:
    backend="[^/]+",
    scenario="[^/]+"

rule all:
    input: "out/report/report.txt"

rule fetch:
    output: "out/fetch/model.bin"
    shell: "${WORK_SH}echo model > {output}"

rule export:
    input: "out/fetch/model.bin"
    output: "out/export/model.onnx"
    shell: "${WORK_SH}cat {input} > {output}; echo onnx >> {output}"

rule build:
    input: "out/export/model.onnx"
    output: "out/build/{backend}/plan.txt"
    params: threads=lambda w: config["backends"][w.backend]["threads"]
    shell: "${WORK_SH}cat {input} > {output}; echo 'build {wildcards.backend} threads={params.threads}' >> {output}"

rule perplexity:
    input: "out/build/{backend}/plan.txt"
    output: "out/perplexity/{backend}/ppl.json"
    shell: "${WORK_SH}cat {input} > {output}; echo 'ppl {wildcards.backend}' >> {output}"

rule sweep:
    input: "out/build/{backend}/plan.txt"
    output: "out/sweep/{backend}/{scenario}/records.jsonl"
    params: reps=config["reps"]
    shell: "${WORK_SH}cat {input} > {output}; echo 'sweep {wildcards.backend} {wildcards.scenario} reps={params.reps}' >> {output}"

rule stats:
    input: expand("out/sweep/{b}/{s}/records.jsonl", b=BACKENDS, s=SCENARIOS)
    output: "out/stats/stats.csv"
    shell: "${WORK_SH}cat {input} > {output}"

rule report:
    input: stats="out/stats/stats.csv", ppl=expand("out/perplexity/{b}/ppl.json", b=BACKENDS)
    output: "out/report/report.txt"
    shell: "${WORK_SH}cat {input.stats} {input.ppl} > {output}; echo report >> {output}"
EOF
}

gen_dvc_params() { # gen_dvc_params EDIT > params.yaml
    local edit=$1 i
    echo "backends:"
    for ((i = 0; i < K; i++)); do echo "  b$i: {threads: $(threads_of "$i" "$edit")}"; done
    echo "reps: 3"
}
gen_dvc_yaml() {
    local i s
    local backends scenarios
    backends=$(for ((i = 0; i < K; i++)); do printf 'b%d, ' "$i"; done | sed 's/, $//')
    scenarios=$(for ((s = 0; s < S; s++)); do printf 's%d, ' "$s"; done | sed 's/, $//')
    cat <<EOF
stages:
  fetch:
    cmd: ${WORK_SH}echo model > out/fetch/model.bin
    outs: ["out/fetch/model.bin"]
  export:
    cmd: ${WORK_SH}cat out/fetch/model.bin > out/export/model.onnx; echo onnx >> out/export/model.onnx
    deps: ["out/fetch/model.bin"]
    outs: ["out/export/model.onnx"]
  build:
    foreach: \${backends}
    do:
      cmd: ${WORK_SH}cat out/export/model.onnx > out/build/\${key}/plan.txt; echo 'build \${key} threads=\${item.threads}' >> out/build/\${key}/plan.txt
      deps: ["out/export/model.onnx"]
      outs: ["out/build/\${key}/plan.txt"]
  perplexity:
    matrix:
      backend: [$backends]
    cmd: ${WORK_SH}cat out/build/\${item.backend}/plan.txt > out/perplexity/\${item.backend}/ppl.json; echo 'ppl \${item.backend}' >> out/perplexity/\${item.backend}/ppl.json
    deps: ["out/build/\${item.backend}/plan.txt"]
    outs: ["out/perplexity/\${item.backend}/ppl.json"]
  sweep:
    matrix:
      backend: [$backends]
      scenario: [$scenarios]
    cmd: ${WORK_SH}cat out/build/\${item.backend}/plan.txt > out/sweep/\${item.backend}/\${item.scenario}/records.jsonl; echo 'sweep \${item.backend} \${item.scenario} reps=\${reps}' >> out/sweep/\${item.backend}/\${item.scenario}/records.jsonl
    deps: ["out/build/\${item.backend}/plan.txt"]
    outs: ["out/sweep/\${item.backend}/\${item.scenario}/records.jsonl"]
  stats:
    cmd: ${WORK_SH}cat out/sweep/*/*/records.jsonl > out/stats/stats.csv
    deps:
EOF
    for ((i = 0; i < K; i++)); do for ((s = 0; s < S; s++)); do echo "      - out/sweep/b$i/s$s/records.jsonl"; done; done
    cat <<EOF
    outs: ["out/stats/stats.csv"]
  report:
    cmd: ${WORK_SH}cat out/stats/stats.csv out/perplexity/*/ppl.json > out/report/report.txt; echo report >> out/report/report.txt
    deps:
      - out/stats/stats.csv
EOF
    for ((i = 0; i < K; i++)); do echo "      - out/perplexity/b$i/ppl.json"; done
    echo '    outs: ["out/report/report.txt"]'
}

dvc_mkdirs() { # DVC does not create output directories for the command
    local d=$1 i s
    mkdir -p "$d/out/fetch" "$d/out/export" "$d/out/stats" "$d/out/report"
    for ((i = 0; i < K; i++)); do
        mkdir -p "$d/out/build/b$i" "$d/out/perplexity/b$i"
        for ((s = 0; s < S; s++)); do mkdir -p "$d/out/sweep/b$i/s$s"; done
    done
}

run_peer() { # run_peer NAME : sets PEER_RESULT (JSON) or fails
    local name=$1
    local dir=$WORK/$name cmd=() noop=() change=() reran=() e r
    mkdir -p "$dir"
    case $name in
        snakemake)
            gen_smk_config 0 >"$dir/config.yaml"
            gen_snakefile >"$dir/Snakefile"
            cmd=("$VENV/bin/snakemake" --cores 1)
            PEER_VER=$("$VENV/bin/snakemake" --version 2>/dev/null | tail -1)
            ;;
        dvc)
            gen_dvc_params 0 >"$dir/params.yaml"
            gen_dvc_yaml >"$dir/dvc.yaml"
            dvc_mkdirs "$dir"
            (cd "$dir" && "$VENV/bin/dvc" init --no-scm -q && "$VENV/bin/dvc" config core.analytics false &&
                "$VENV/bin/dvc" config core.check_update false) >"$WORK/dvc.init.log" 2>&1 ||
                { cat "$WORK/dvc.init.log" >&2; return 1; }
            cmd=("$VENV/bin/dvc" repro)
            PEER_VER=$("$VENV/bin/dvc" --version 2>/dev/null | tail -1)
            ;;
    esac
    say ""
    say "== peer: $name $PEER_VER (${cmd[*]##*/})"
    pushd "$dir" >/dev/null || return 1
    local T=(timeout "$PEER_TIMEOUT")
    if ! timed "$WORK/$name.cold.out" "$WORK/$name.cold.err" "${T[@]}" "${cmd[@]}"; then
        popd >/dev/null
        tail -n 15 "$WORK/$name.cold.out" "$WORK/$name.cold.err" >&2
        echo "peer $name: the cold build failed or took over ${PEER_TIMEOUT}s" >&2
        return 1
    fi
    local build_us=$ELAPSED_US
    say "cold build: $(ms $build_us) ms"
    sleep 0.2
    timed "$WORK/$name.noop.out" "$WORK/$name.noop.err" "${T[@]}" "${cmd[@]}" || { popd >/dev/null; echo "peer $name: no-op failed" >&2; return 1; }
    local noop_first_us=$ELAPSED_US
    for ((r = 0; r < PEER_RUNS; r++)); do
        timed "$WORK/$name.noop.out" "$WORK/$name.noop.err" "${T[@]}" "${cmd[@]}" || { popd >/dev/null; echo "peer $name: no-op failed" >&2; return 1; }
        noop+=("$ELAPSED_US")
    done
    local noop_reran
    noop_reran=$(peer_reran "$name" "$WORK/$name.noop.out" "$WORK/$name.noop.err")
    say "no-op: first $(ms $noop_first_us) ms, then median $(median_ms "${noop[@]}") ms over $PEER_RUNS runs (jobs run: $noop_reran)"
    for ((e = 1; e <= PEER_CHANGE_RUNS; e++)); do
        sleep 0.2
        case $name in
            snakemake) gen_smk_config "$e" >config.yaml ;;
            dvc) gen_dvc_params "$e" >params.yaml ;;
        esac
        timed "$WORK/$name.change$e.out" "$WORK/$name.change$e.err" "${T[@]}" "${cmd[@]}" || { popd >/dev/null; echo "peer $name: change run failed" >&2; return 1; }
        change+=("$ELAPSED_US")
        reran+=("$(peer_reran "$name" "$WORK/$name.change$e.out" "$WORK/$name.change$e.err")")
    done
    popd >/dev/null
    say "one-backend change: median $(median_ms "${change[@]}") ms over $PEER_CHANGE_RUNS edits; jobs run: ${reran[*]} (tr118: $EXPECTED_RERAN)"
    PEER_RESULT=$(python3 -c '
import json,sys,statistics
name,ver,build,first,noop,change,reran=sys.argv[1:8]
f=lambda s:[int(x) for x in s.split()]
print(json.dumps({"version":ver,"build_ms":int(build)/1000,"noop_first_ms":int(first)/1000,
  "noop_ms":statistics.median(f(noop))/1000,"change_ms":statistics.median(f(change))/1000,
  "reran":f(reran)[0] if reran.split() else None,"noop_runs":len(f(noop)),"change_runs":len(f(change))}))' \
        "$name" "$PEER_VER" "$build_us" "$noop_first_us" "${noop[*]}" "${change[*]}" "${reran[*]}")
}

peer_reran() { # how many jobs a peer run executed, from its output
    local name=$1 out=$2 err=$3
    case $name in
        # "10 of 10 steps (100%) done" counts the target rule `all` too
        snakemake) python3 -c '
import re,sys
t=open(sys.argv[1]).read()+open(sys.argv[2]).read()
m=re.findall(r"(\d+) of (\d+) steps", t)
print(max(int(m[-1][1])-1,0) if m else 0)' "$out" "$err" ;;
        dvc) cat "$out" "$err" | grep -c "^Running stage" ;;
    esac
}

if [[ ${BENCH_PEERS:-0} == 1 ]]; then
    if [[ ! -x $VENV/bin/snakemake || ! -x $VENV/bin/dvc ]]; then
        say ""
        say "installing peers into bench/.venv: pip install $PEER_PKGS"
        # shellcheck disable=SC2086
        (python3 -m venv "$VENV" && "$VENV/bin/pip" install -q $PEER_PKGS) >"$WORK/pip.log" 2>&1 ||
            { tail -n 20 "$WORK/pip.log" >&2; echo "peers: pip install failed; measuring tr118 only" >&2; }
    fi
    PEERS_ACC=()
    for p in $PEER_LIST; do
        if [[ ! -x $VENV/bin/$p ]]; then
            echo "peer $p: not installed in bench/.venv; skipped" >&2
            continue
        fi
        PEER_RESULT=""
        if run_peer "$p" && [[ -n $PEER_RESULT ]]; then
            PEERS_ACC+=("$p=$PEER_RESULT")
        else
            PEERS_ACC+=("$p={\"error\": \"failed or timed out; see stderr\"}")
        fi
    done
    PEERS_JSON=$(python3 -c '
import json,sys
print(json.dumps({a.split("=",1)[0]: json.loads(a.split("=",1)[1]) for a in sys.argv[1:]}))' "${PEERS_ACC[@]}")
fi

# ---------------------------------------------------------------------------------------
# Summary.
say ""
LOAD_END=$(loadavg)
BUSY_END=$(cpu_busy_pct)
FINAL=$(python3 - "$K" "$S" "$NODES_EXPECTED" "$BUILD_US" "$NOOP_FIRST_US" "$NOOP_MS" "$CHANGE_MS" "$EXPECTED_RERAN" \
    "$CHANGE_JSON" "$PEERS_JSON" "$CPUS" "$WORK_MS" "$GIT_REV" "$GIT_DIRTY" "$CHANGED" "$LOAD_START" "$LOAD_END" "$BUSY_START" "$BUSY_END" \
    "$STATUS_MS" "$NINJA_MS" "${NINJA_VER:-}" "$NINJA_CHANGE_US" "$NINJA_RERAN" "${NINJA_BUILD_US:-null}" "$SAME_OUTPUT" "${NOOP_US[@]}" <<'EOF'
import json, sys
a = sys.argv[1:]
K, S, nodes, build_us, first_us = map(int, a[0:5])
noop_ms, change_ms = float(a[5]), float(a[6])
expected = int(a[7])
ch, peers = json.loads(a[8]), json.loads(a[9])
cpus, work_ms, rev, dirty, changed = int(a[10]), int(a[11]), a[12], a[13] == "true", a[14]
load_start, load_end, busy_start, busy_end = (json.loads(x) for x in a[15:19])
status_ms, ninja_ms, ninja_ver = float(a[19]), json.loads(a[20]), a[21]
ninja_change_us, ninja_reran, ninja_build_us, same_output = (json.loads(x) for x in a[22:26])
noops = [int(x) / 1000 for x in a[26:]]
cmd_ms, cmd_only = ch["cmd_ms"], ch["cmd_only_ms"]
pct = lambda base: round((change_ms - base) / base * 100, 1) if base else None
# The absolute targets were set against ninja on this kind of VM (3 ms and 11 ms);
# the ratio to ninja in the same run is the one that holds on any machine.
noop_target = 6 if nodes <= 100 else 22 if nodes <= 2000 else None
vs_ninja = round(noop_ms / ninja_ms, 2) if ninja_ms else None
out = {
    "nodes": nodes, "noop_ms": noop_ms, "change_ms": change_ms, "reran": ch["reran"],
    "expected_reran": expected, "reran_ok": ch["ok"],
    "k": K, "s": S, "changed_backend": changed,
    "build_ms": build_us / 1000, "noop_first_ms": first_us / 1000,
    "noop_min_ms": min(noops), "noop_max_ms": max(noops),
    "change_runs_ms": ch["change_runs_ms"], "change_min_ms": min(ch["change_runs_ms"]),
    "cmd_ms": cmd_ms, "cmd_only_ms": cmd_only,
    "overhead_pct": pct(cmd_ms), "overhead_cmd_only_pct": pct(cmd_only),
    "overhead_target_pct": 20,
    "ninja_noop_ms": ninja_ms, "noop_vs_ninja": vs_ninja, "noop_vs_ninja_target": 2,
    "ninja_version": ninja_ver or None, "ninja_build_ms": ninja_build_us / 1000 if ninja_build_us else None,
    "ninja_change_ms": ninja_change_us / 1000 if ninja_change_us else None, "ninja_reran": ninja_reran,
    "same_report_as_ninja": same_output,
    "status_ms": status_ms, "status_vs_noop": round(status_ms / noop_ms, 2) if noop_ms else None,
    "noop_target_ms": noop_target,
    "noop_ok": (vs_ninja <= 2) if vs_ninja is not None else (noop_ms <= noop_target) if noop_target else None,
    "cpus": cpus, "work_ms": work_ms, "git": rev, "src_modified": dirty,
    "loadavg_start": load_start, "loadavg_end": load_end,
    "cpu_busy_pct_before": busy_start, "cpu_busy_pct_after": busy_end,
}
for name, p in peers.items():
    out[name] = p
    if "noop_ms" in p:
        out[f"{name}_noop_ratio"] = round(p["noop_ms"] / noop_ms, 1) if noop_ms else None
        out[f"{name}_change_ratio"] = round(p["change_ms"] / change_ms, 1) if change_ms else None
print(json.dumps(out))
EOF
)
python3 - "$FINAL" <<'EOF'
import json, sys
d = json.loads(sys.argv[1])
if d["ninja_noop_ms"] is not None:
    print(f"summary: {d['nodes']} nodes; no-op {d['noop_ms']:.1f} ms, ninja {d['ninja_noop_ms']:.1f} ms: "
          f"{d['noop_vs_ninja']}x ninja (target <= 2x: {'met' if d['noop_ok'] else 'MISSED'}); status {d['status_ms']:.1f} ms ({d['status_vs_noop']}x the no-op)")
else:
    print(f"summary: {d['nodes']} nodes; no-op {d['noop_ms']:.1f} ms (no ninja; target {d['noop_target_ms']} ms: {'met' if d['noop_ok'] else 'MISSED'}); status {d['status_ms']:.1f} ms")
print(f"  one-backend change {d['change_ms']:.1f} ms, reran {d['reran']}/{d['expected_reran']}"
      + (f"; ninja {d['ninja_change_ms']:.1f} ms, ran {d['ninja_reran']}" if d['ninja_change_ms'] else ""))
oc = d["overhead_pct"]
print(f"  commands' duration_ms sum {d['cmd_ms']} ms (manifest command time {d['cmd_only_ms']} ms); "
      f"overhead {oc}% of duration_ms (target ≤ 20%: {'met' if oc is not None and oc <= 20 else 'MISSED'}), "
      f"{d['overhead_cmd_only_pct']}% of command time")
for k in ("snakemake", "dvc"):
    if k in d and "noop_ms" in d[k]:
        print(f"  {k} {d[k]['version']}: no-op {d[k]['noop_ms']:.0f} ms ({d[k+'_noop_ratio']}× tr118), "
              f"change {d[k]['change_ms']:.0f} ms ({d[k+'_change_ratio']}× tr118), reran {d[k]['reran']}")
    elif k in d:
        print(f"  {k}: {d[k].get('error')}")
print(f"reproduce: bash bench/engine.sh {d['k']} {d['s']}   (peers: BENCH_PEERS=1 bash bench/engine.sh {d['k']} {d['s']})")
EOF
echo "$FINAL"
[[ $CHANGE_OK == true ]] || exit 1
