#!/usr/bin/env bash
# Prints the path of the ONNX Runtime shared library that tr118's runtime tests load.
#
# With ORT_DYLIB_PATH set, that is the library: the script prints it and does nothing else.
# Otherwise it fetches the CPU build pinned below from PyPI (the `onnxruntime` wheel; no Python
# package is installed, only the wheel is read), checks the library's sha256, and keeps it
# in .tr118-dev/onnxruntime/ (git-ignored). A verified copy is reused: the second run downloads
# nothing and prints only the path. Progress and errors go to stderr.
#
#   export ORT_DYLIB_PATH="$(scripts/fetch-ort.sh)"
set -euo pipefail

VERSION=1.31.1
MEMBER="onnxruntime/capi/libonnxruntime.so.$VERSION"
# sha256 of $MEMBER inside onnxruntime-1.31.1-cp311-cp311-manylinux_2_28_x86_64.whl
SHA256=fc44112fbe06d7d689c57e11d3862031f64711007e4ee020f8eed5185fd2c1d3
PLATFORM=manylinux_2_28_x86_64

if [ -n "${ORT_DYLIB_PATH:-}" ]; then
    if [ ! -f "$ORT_DYLIB_PATH" ]; then
        echo "error: ORT_DYLIB_PATH is \`$ORT_DYLIB_PATH\`, which does not exist; unset it to fetch onnxruntime==$VERSION" >&2
        exit 1
    fi
    printf '%s\n' "$ORT_DYLIB_PATH"
    exit 0
fi

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="$root/.tr118-dev/onnxruntime"
lib="$dir/libonnxruntime.so.$VERSION"

sha256_of() {
    if command -v sha256sum >/dev/null 2>&1; then
        sha256sum "$1" | cut -d' ' -f1
    else
        python3 -c 'import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest())' "$1"
    fi
}

if [ -f "$lib" ] && [ "$(sha256_of "$lib")" = "$SHA256" ]; then
    printf '%s\n' "$lib"
    exit 0
fi

if [ "$(uname -s)-$(uname -m)" != "Linux-x86_64" ]; then
    echo "error: onnxruntime==$VERSION is pinned for Linux x86_64 only, and this is $(uname -s) $(uname -m); set ORT_DYLIB_PATH to an ONNX Runtime $VERSION library" >&2
    exit 1
fi

mkdir -p "$dir"
# Test binaries run in parallel and may all ask at once: one fetches, the others wait.
exec 9>"$dir/.lock"
flock 9
if [ -f "$lib" ] && [ "$(sha256_of "$lib")" = "$SHA256" ]; then
    printf '%s\n' "$lib"
    exit 0
fi
echo "fetching onnxruntime==$VERSION from PyPI into ${dir#"$root/"}/" >&2
wheels="$(mktemp -d "$dir/wheel.XXXXXX")"
trap 'rm -rf "$wheels" "$lib.partial"' EXIT
python3 -m pip download --quiet --disable-pip-version-check --no-deps "onnxruntime==$VERSION" \
    --only-binary=:all: --platform "$PLATFORM" --python-version 3.11 -d "$wheels" >&2
wheel="$(find "$wheels" -name "onnxruntime-$VERSION-*.whl" | head -n 1)"
if [ -z "$wheel" ]; then
    echo "error: pip downloaded no onnxruntime-$VERSION wheel for $PLATFORM" >&2
    exit 1
fi
python3 - "$wheel" "$MEMBER" "$lib.partial" <<'PY'
import shutil, sys, zipfile
wheel, member, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
got="$(sha256_of "$lib.partial")"
if [ "$got" != "$SHA256" ]; then
    echo "error: \`$MEMBER\` in $(basename "$wheel") has sha256 $got, expected $SHA256" >&2
    exit 1
fi
chmod 755 "$lib.partial"
mv "$lib.partial" "$lib"
printf '%s\n' "$lib"
