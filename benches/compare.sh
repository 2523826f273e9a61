#!/usr/bin/env bash
# The side-by-side benchmark in one command: direct call, govbridge
# (routing only), govbridge (everything on) and nginx, one after the
# other, in one run, on this machine.
#
#     benches/compare.sh [ARGS...]     # ARGS go to `govbridge bench compare`
#
# Installs nginx from Debian (apt-get, non-interactive, as root or through
# sudo) when there is none, builds govbridge in release, then runs the
# comparison. See docs/benchmarks.md for the method and how to read it.
set -euo pipefail

cd "$(dirname "$0")/.."

# Debian installs nginx in /usr/sbin, which is not on a normal user's PATH.
find_nginx() {
    command -v nginx 2>/dev/null || { [ -x /usr/sbin/nginx ] && echo /usr/sbin/nginx; } || true
}

nginx_bin=$(find_nginx)
if [ -z "$nginx_bin" ]; then
    echo "compare.sh: nginx is not installed; installing Debian's nginx package" \
        "(apt-get install -y nginx, non-interactive)" >&2
    if ! command -v apt-get >/dev/null; then
        echo "compare.sh: no apt-get here: install nginx (1.22 or later) and run again" >&2
        exit 1
    fi
    as_root=()
    if [ "$(id -u)" -ne 0 ]; then
        as_root=(sudo)
    fi
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends nginx
    nginx_bin=$(find_nginx)
    [ -n "$nginx_bin" ] || { echo "compare.sh: nginx still not found after installing it" >&2; exit 1; }
    echo "compare.sh: installed $("$nginx_bin" -v 2>&1). Debian may also have started its" \
        "nginx service on port 80; the benchmark runs its own instance and does not use" \
        "it ('sudo systemctl disable --now nginx' stops it)." >&2
fi

cargo build --release --locked

# The tables are printed, and written into docs/benchmarks.md between its
# bench:table markers.
cargo run --release --locked -- bench compare --nginx "$nginx_bin" --docs docs/benchmarks.md "$@"
