#!/usr/bin/env bash
# Prints the path of an nginx built with the WebDAV module: the cache server the remote cache
# tests and `bench/remote-cache.sh` start on a loopback port.
#
# nginx is looked for on PATH and at /usr/sbin/nginx. Without one, Debian's `nginx` package is
# installed with apt-get (as root, or through passwordless sudo). Several test binaries may
# call this at once: apt-get waits for the dpkg lock instead of failing. Progress and errors
# go to stderr.
set -euo pipefail

find_nginx() {
    command -v nginx 2>/dev/null || { [ -x /usr/sbin/nginx ] && echo /usr/sbin/nginx; } || true
}

nginx="$(find_nginx)"
if [ -z "$nginx" ]; then
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "error: nginx is not installed and there is no apt-get here to install it; install nginx with the WebDAV module (\`--with-http_dav_module\`)" >&2
        exit 1
    fi
    as_root=()
    if [ "$(id -u)" != 0 ]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
            as_root=(sudo -n)
        else
            echo "error: nginx is not installed, and installing it needs root: run \`apt-get install nginx\` as root" >&2
            exit 1
        fi
    fi
    install() {
        "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
            apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends nginx >&2
    }
    echo "installing nginx (Debian's \`nginx\` package) for the remote cache tests" >&2
    # A fresh image may have no package lists yet.
    install || { "${as_root[@]}" apt-get -o DPkg::Lock::Timeout=600 update >&2 && install; }
    nginx="$(find_nginx)"
    if [ -z "$nginx" ]; then
        echo "error: apt-get installed \`nginx\` but no nginx binary is on PATH or at /usr/sbin/nginx" >&2
        exit 1
    fi
fi
if ! "$nginx" -V 2>&1 | grep -q -- '--with-http_dav_module'; then
    echo "error: \`$nginx\` is built without the WebDAV module (\`--with-http_dav_module\`), which stores PUT uploads; install Debian's \`nginx\` package" >&2
    exit 1
fi
printf '%s\n' "$nginx"
