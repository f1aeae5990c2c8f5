#!/usr/bin/env bash
# Remote cache benchmark: the time a fresh checkout takes to reach a complete default-study
# report from a remote cache, against building it cold, on the same machine.
#
#   bash bench/remote-cache.sh
#
# Steps:
#   1. build tr118 once (`cargo build --release`; not timed: both sides use the same binary);
#   2. clone the repository's HEAD into a scratch checkout A and time `tr118 make report`
#      there, cold (what `cargo run --release -- make report` does after compiling);
#   3. start nginx (scripts/ensure-nginx.sh) with a WebDAV PUT location on a loopback port,
#      as the README's recipe configures it, and time `tr118 cache push` from A;
#   4. clone again into B (no cache/, no out/) and time
#      `tr118 make report --remote-cache URL`, then check that B has the report and say
#      which nodes ran there (degraded results are never shared, so on a machine without a
#      GPU those nodes, and what reads them, are rebuilt; they take seconds).
#
# Environment:
#   TR118_BIN=path      use this binary instead of building target/release/tr118
#   BENCH_DIR=dir       scratch directory (default: a new one under /tmp); needs ~12 GB free
#   BENCH_KEEP=1        keep the checkouts and the server's files
#
# The last line of stdout is one JSON object; everything before it is for people.

set -uo pipefail
export LC_ALL=C

die() { echo "remote-cache.sh: error: $*" >&2; exit 1; }
command -v python3 >/dev/null || die "python3 is needed (JSON)"
command -v git >/dev/null || die "git is needed (fresh clones)"
[[ -n ${EPOCHREALTIME:-} ]] || die "bash ≥ 5 is needed (\$EPOCHREALTIME)"

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ -z ${TR118_BIN:-} ]]; then
    (cd "$REPO" && cargo build --release --quiet) || die "cargo build --release failed"
    TR118_BIN="${CARGO_TARGET_DIR:-$REPO/target}/release/tr118"
fi
[[ -x $TR118_BIN ]] || die "no tr118 binary at $TR118_BIN"
NGINX=$(bash "$REPO/scripts/ensure-nginx.sh") || die "no nginx (see scripts/ensure-nginx.sh)"

WORK=${BENCH_DIR:-$(mktemp -d /tmp/tr118-remote-bench.XXXXXX)}
mkdir -p "$WORK" || die "cannot create $WORK"
NGINX_PID=
cleanup() {
    [[ -n $NGINX_PID ]] && kill "$NGINX_PID" 2>/dev/null && wait "$NGINX_PID" 2>/dev/null
    [[ ${BENCH_KEEP:-0} == 1 ]] || rm -rf "$WORK"
}
trap cleanup EXIT

now() { echo "$EPOCHREALTIME"; }
secs() { python3 -c "print(f'{$2 - $1:.1f}')"; }

echo "tr118: $TR118_BIN; scratch: $WORK"
git clone --quiet "$REPO" "$WORK/a" || die "git clone failed"
echo "cold build in a fresh clone (tr118 make report)…"
t0=$(now)
"$TR118_BIN" -C "$WORK/a" make report >"$WORK/a.out" 2>"$WORK/a.err" || { cat "$WORK/a.err" >&2; die "the cold build failed"; }
t1=$(now)
cold=$(secs "$t0" "$t1")
tail -n 3 "$WORK/a.err"

# The server: nginx with a WebDAV location, as the README configures it.
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
mkdir -p "$WORK/nginx/root"
cat >"$WORK/nginx/nginx.conf" <<EOF
daemon off;
master_process off;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log;
events { worker_connections 256; }
http {
    access_log off;
    client_body_temp_path $WORK/nginx/body;
    proxy_temp_path $WORK/nginx/proxy;
    fastcgi_temp_path $WORK/nginx/fastcgi;
    uwsgi_temp_path $WORK/nginx/uwsgi;
    scgi_temp_path $WORK/nginx/scgi;
    server {
        listen 127.0.0.1:$PORT;
        root $WORK/nginx/root;
        location / {
            dav_methods PUT;
            create_full_put_path on;
            client_max_body_size 0;
        }
    }
}
EOF
"$NGINX" -p "$WORK/nginx" -e "$WORK/nginx/error.log" -c "$WORK/nginx/nginx.conf" &
NGINX_PID=$!
for _ in $(seq 100); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1', $PORT), 0.2)" 2>/dev/null && break
    sleep 0.05
done
URL="http://127.0.0.1:$PORT"

echo "pushing to $URL…"
t0=$(now)
"$TR118_BIN" -C "$WORK/a" cache push report --remote-cache "$URL" 2>"$WORK/push.err" || { cat "$WORK/push.err" >&2; die "the push failed"; }
t1=$(now)
push=$(secs "$t0" "$t1")
cat "$WORK/push.err"
[[ ${BENCH_KEEP:-0} == 1 ]] || rm -rf "$WORK/a"   # room for the second checkout

git clone --quiet "$REPO" "$WORK/b" || die "git clone failed"
echo "fresh clone from the remote cache (tr118 make report --remote-cache $URL)…"
t0=$(now)
"$TR118_BIN" -C "$WORK/b" make report --json --remote-cache "$URL" >"$WORK/b.json" 2>"$WORK/b.err" || { cat "$WORK/b.err" >&2; die "the build from the remote cache failed"; }
t1=$(now)
remote=$(secs "$t0" "$t1")
grep -v '^ran \|^restored \|^degraded ' "$WORK/b.err"
for f in out/report/report.md out/report/report.html; do
    [[ -s $WORK/b/$f ]] || die "the checkout built from the remote cache has no $f"
done

python3 - "$WORK/b.json" "$cold" "$push" "$remote" <<'EOF'
import json, sys
records = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
cold, push, remote = map(float, sys.argv[2:5])
hits = [r for r in records if r.get("remote")]
ran = [r for r in records if r["cache"] == "miss"]
down = sum(r["remote"]["bytes_down"] for r in hits)
saved = sum(r["remote"]["saved_ms"] for r in hits) / 1000
print(f"\ncold build: {cold:.1f} s; push: {push:.1f} s")
print(f"fresh clone from the remote cache: {remote:.1f} s ({len(hits)} nodes restored, {down / 1e6:.0f} MB down, "
      f"~{saved:.0f} s of recorded run time saved; {len(ran)} ran here: "
      + ", ".join(r["id"] for r in ran) + ")")
print(f"{cold / remote:.1f}x faster than building it")
print("reproduce: bash bench/remote-cache.sh")
print(json.dumps({"cold_s": cold, "push_s": push, "remote_s": remote, "speedup": round(cold / remote, 2),
                  "nodes": len(records), "remote_hits": len(hits), "ran": len(ran), "mb_down": round(down / 1e6, 1)}))
EOF
