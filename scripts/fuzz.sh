#!/usr/bin/env bash
# Fuzzes tr118's parsers of untrusted bytes with AFL++ on the stable toolchain.
#
#   scripts/fuzz.sh TARGET SECONDS     one target (see `fuzz/Cargo.toml`), for SECONDS
#   scripts/fuzz.sh all SECONDS        every target in turn, SECONDS each
#
# Installs what it needs from crates.io (cargo-afl, which builds AFL++ from the source it
# ships), builds the targets in fuzz/target/ (instrumented builds never share a target dir
# with ordinary ones), runs each from its seeds in fuzz/seeds/TARGET/ into
# fuzz/findings/TARGET/ (both resumable and git-ignored), and prints executions, coverage,
# crashes and hangs. Each crash is minimised with afl-tmin and copied to
# tests/fixtures/fuzz-crashes/TARGET/, where tests/suite/untrusted_inputs.rs replays it; a new
# one there needs a fix and is then a regression test.
#
# The fuzzer runs at the lowest priority (nice 19) and unbound to any CPU, so that it can
# share a machine with builds; targets run one after the other.
set -euo pipefail

TARGETS=(pipeline_toml gguf safetensors_config tokenizer onnx manifest listing remote_entry)
CARGO_AFL_VERSION=0.18.2

usage() {
    echo "usage: scripts/fuzz.sh TARGET|all SECONDS   (targets: ${TARGETS[*]})" >&2
    exit 2
}
[ $# -eq 2 ] || usage
what=$1
seconds=$2
[[ $seconds =~ ^[0-9]+$ ]] && [ "$seconds" -gt 0 ] || usage
if [ "$what" = all ]; then
    selected=("${TARGETS[@]}")
else
    [[ " ${TARGETS[*]} " == *" $what "* ]] || usage
    selected=("$what")
fi

root=$(cd "$(dirname "$0")/.." && pwd)
fuzz=$root/fuzz
export CARGO_TARGET_DIR=$fuzz/target
bin=$CARGO_TARGET_DIR/release

# --- tools ------------------------------------------------------------------------------
if ! cargo afl --version 2>/dev/null | grep -q "$CARGO_AFL_VERSION"; then
    echo "installing cargo-afl $CARGO_AFL_VERSION" >&2
    cargo install --locked --version "$CARGO_AFL_VERSION" cargo-afl >&2
fi
# Builds AFL++ once per rustc; it refuses (harmlessly) when that is already done.
if ! out=$(cargo afl config --build 2>&1); then
    grep -q "already built" <<<"$out" || { echo "$out" >&2; exit 1; }
fi

# --- build ------------------------------------------------------------------------------
(cd "$fuzz" && nice -n 19 cargo afl build --release --bins >&2)

# AFL++ refuses to start where a core dump would go to a program or the CPU governor is
# not `performance`; neither changes what it finds, so both checks are skipped rather than
# the machine reconfigured.
export AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_SKIP_CPUFREQ=1 AFL_NO_AFFINITY=1
export AFL_NO_UI=1 AFL_AUTORESUME=1 AFL_SKIP_CRASHES=1

field() { awk -F' *: *' -v k="$1" '$1 == k { print $2 }' "$2"; }

summary=()
for t in "${selected[@]}"; do
    seeds=$fuzz/seeds/$t
    out=$fuzz/findings/$t
    mkdir -p "$out"
    echo "== $t: ${seconds}s from $(find "$seeds" -type f | wc -l) seeds" >&2
    # -V: stop after SECONDS; -t: an input that runs longer than 2 s is a hang; -m: 4 GiB of
    # address space, so that an allocation sized by a corrupt count is a crash, not a swap.
    nice -n 19 cargo afl fuzz -V "$seconds" -t 2000 -m 4096 -i "$seeds" -o "$out" -- "$bin/$t" \
        >"$out/afl.log" 2>&1 || { tail -n 30 "$out/afl.log" >&2; exit 1; }

    stats=$out/default/fuzzer_stats
    crashes=$(find "$out/default/crashes" -type f -name 'id:*' 2>/dev/null | sort)
    n_crashes=$(printf '%s' "$crashes" | grep -c . || true)
    n_hangs=$(find "$out/default/hangs" -type f -name 'id:*' 2>/dev/null | wc -l)
    # AFL++ keeps every crash that took a new path, often dozens for one bug: they are
    # grouped by where the target panicked (or the signal, for an abort without a panic
    # message), and only the smallest input of each group is minimised and kept.
    fixtures=$root/tests/fixtures/fuzz-crashes/$t
    declare -A smallest=()
    for c in $crashes; do
        where=$("$bin/$t" <"$c" 2>&1 | grep -m1 -o "panicked at [^ ]*" || true)
        where=${where:-$(basename "$c" | grep -o "sig:[0-9]*")}
        if [ -z "${smallest[$where]:-}" ] || [ "$(stat -c %s "$c")" -lt "$(stat -c %s "${smallest[$where]}")" ]; then
            smallest[$where]=$c
        fi
    done
    for where in "${!smallest[@]}"; do
        c=${smallest[$where]}
        mkdir -p "$fixtures"
        min=$(mktemp)
        if ! nice -n 19 cargo afl tmin -t 2000 -m 4096 -i "$c" -o "$min" -- "$bin/$t" >/dev/null 2>&1; then
            cp "$c" "$min"
        fi
        name=$(sha256sum "$min" | cut -c1-16)
        cp "$min" "$fixtures/$name"
        chmod 644 "$fixtures/$name"
        rm -f "$min"
        echo "crash ($where): $c -> tests/fixtures/fuzz-crashes/$t/$name" >&2
    done
    unset smallest
    line=$(printf '%-18s %8ss  execs %-10s  edges %-12s  corpus %-5s  crashes %-3s hangs %-3s  %s' \
        "$t" "$(field run_time "$stats")" "$(field execs_done "$stats")" \
        "$(field edges_found "$stats")/$(field total_edges "$stats")" "$(field corpus_count "$stats")" \
        "$n_crashes" "$n_hangs" "${out#"$root"/}/default")
    echo "$line"
    summary+=("$line")
done

if [ ${#summary[@]} -gt 1 ]; then
    echo
    printf '%s\n' "${summary[@]}"
fi
