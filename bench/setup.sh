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
# forward-proxy scenarios (fwd-*): squid and tinyproxy as peers, ab (apache2-utils) as the load
command -v squid >/dev/null 2>&1 || need="$need squid"
command -v tinyproxy >/dev/null 2>&1 || need="$need tinyproxy"
command -v ab >/dev/null 2>&1 || need="$need apache2-utils"
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need="$need python3-venv"

# The Python forward proxies go into their own venv (bench/.peers-venv, git-ignored), so that
# Portway's .venv stays clean. Pinned; mitmproxy 11.0.x is the last line for Python 3.11.
PEERS_VENV="$(dirname "$0")/.peers-venv"
PEERS="proxy.py==2.4.10 pproxy==2.7.9 mitmproxy==11.0.2"
install_peers() {
    if [ -x "$PEERS_VENV/bin/proxy" ] && [ -x "$PEERS_VENV/bin/pproxy" ] && [ -x "$PEERS_VENV/bin/mitmdump" ]; then
        return 0
    fi
    echo "bench/setup.sh: installing $PEERS into $PEERS_VENV"
    python3 -m venv "$PEERS_VENV"
    # shellcheck disable=SC2086
    "$PEERS_VENV/bin/pip" install --quiet $PEERS
}

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

if [ -z "$need" ]; then
    install_peers
    echo "bench/setup.sh: everything is installed (haproxy, nginx + stream module, iperf3, wrk, taskset," \
        "sniproxy, openssl, squid, tinyproxy, ab, and proxy.py, pproxy, mitmproxy in bench/.peers-venv)"
    exit 0
fi

echo "bench/setup.sh: installing:$need"
$SUDO apt-get update
# iperf3's package asks whether to start a daemon; answer no without a prompt
echo "iperf3 iperf3/start_daemon boolean false" | $SUDO debconf-set-selections 2>/dev/null || true
# shellcheck disable=SC2086
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends $need
install_peers
# The packages may start system-wide services (squid on :3128, tinyproxy on :8888, sniproxy's only
# if enabled in /etc/default/sniproxy); they do not get in the way (the benchmark runs its own instances on free loopback ports), so they
# are left alone.
echo "bench/setup.sh: done"
