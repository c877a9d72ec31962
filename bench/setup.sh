#!/bin/sh
# Install the benchmark's peers and load generators (Debian/Ubuntu). Idempotent: installs only what is
# missing. Run as root or with sudo:  sudo bench/setup.sh
set -eu

need=""
command -v haproxy >/dev/null 2>&1 || need="$need haproxy"
command -v nginx >/dev/null 2>&1 || need="$need nginx-light"
# the nginx stream module (dynamic on Debian); skip if nginx was built with it statically
if [ ! -e /usr/lib/nginx/modules/ngx_stream_module.so ] \
   && ! (command -v nginx >/dev/null 2>&1 && nginx -V 2>&1 | grep -q -- '--with-stream '); then
    need="$need libnginx-mod-stream"
fi
command -v iperf3 >/dev/null 2>&1 || need="$need iperf3"
command -v wrk >/dev/null 2>&1 || need="$need wrk"
# SNI passthrough scenarios: sniproxy as a fourth peer, openssl for the origin's self-signed cert
command -v sniproxy >/dev/null 2>&1 || need="$need sniproxy"
command -v openssl >/dev/null 2>&1 || need="$need openssl"
command -v taskset >/dev/null 2>&1 || need="$need util-linux"

if [ -z "$need" ]; then
    echo "bench/setup.sh: everything is installed (haproxy, nginx + stream module, iperf3, wrk, taskset," \
        "sniproxy, openssl)"
    exit 0
fi

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "bench/setup.sh: installing:$need"
$SUDO apt-get update
# iperf3's package asks whether to start a daemon; answer no without a prompt
echo "iperf3 iperf3/start_daemon boolean false" | $SUDO debconf-set-selections 2>/dev/null || true
# shellcheck disable=SC2086
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends $need
# The packages may start system-wide services (sniproxy's only if enabled in /etc/default/sniproxy);
# they do not get in the way (the benchmark runs its own instances on free loopback ports), so they
# are left alone.
echo "bench/setup.sh: done"
