"""The built-in configuration that ``portway run`` uses when no ``-c`` is given.

It works at once and shows the shape of a real file: the admin endpoint on
loopback, a forward proxy on ``127.0.0.1:8080`` (``curl -x 127.0.0.1:8080
https://example.com/``), and one ``tcp`` listener that forwards to the admin
endpoint, so that ``curl http://127.0.0.1:7070/stats`` answers through Portway
itself. The text is also the annotated example users read, so every key is explained.
"""

from __future__ import annotations

from portway.config.load import load_text
from portway.config.model import Config

__all__ = ["DEFAULT_SOURCE", "DEFAULT_TOML", "default_config"]

DEFAULT_SOURCE = "<built-in default>"
"""The :attr:`Config.source` of :func:`default_config`, as error messages name it."""

DEFAULT_TOML = """\
# Portway configuration: the built-in default, and an annotated example.
#
# Durations are strings with a unit: "250ms", "5s", "1m30s", "1h" ("0" means
# zero, or "none" for idle_timeout); a plain number like 5 or 0.25 means seconds.
# Addresses are "host:port" or "[ipv6]:port". Relative paths are relative to the
# directory of this file. `portway check -c FILE` validates a file and prints the
# effective plan, with every inherited default filled in.

# Worker processes, each with its own event loop and its own SO_REUSEPORT
# sockets: "auto" = one per CPU this process may run on, or a number >= 1.
workers = "auto"

# Where the supervisor writes its pid (optional; not written when absent).
# pid_file = "portway.pid"

# How long SIGTERM waits for live connections to finish before closing them.
drain_timeout = "30s"

[admin]
# /metrics (Prometheus), /stats (JSON), /healthz and a live dashboard at /.
# Keep it on loopback; "off" disables it.
listen = "127.0.0.1:9090"

[log]
# The access log: one line per connection. "stdout", "stderr", "off" or a path.
access = "stdout"
# "text" for people, "json" for log pipelines.
format = "text"
# The operational log on stderr: "debug", "info", "warning" or "error".
level = "info"

[defaults]
# Inherited by every listener and backend that does not set the key itself.
sniff_timeout = "5s"        # deadline on everything read before routing
connect_timeout = "5s"      # one connect attempt to a server
idle_timeout = "1h"         # no bytes either way for this long: close ("0" = never)
retries = 2                 # extra connect attempts, each on another server
max_connections = 10000     # per listener, split over the workers; more wait in the backlog
keepalive = { idle = "60s", interval = "10s", count = 6 }   # TCP keepalive; false = off
relay = "auto"              # "auto" (copy small exchanges, splice bulk), "splice" or "copy"
backlog = 1024              # listen(2) backlog

# A listener accepts connections and hands them to its mode: "tcp", "sni",
# "tls", "gateway" or "http-proxy" (see README.md).
#
# A forward proxy: HTTP/1.1 (GET http://...), CONNECT for https, and SOCKS5 on
# the same port. Try: curl -x 127.0.0.1:8080 https://example.com/
[[listener]]
name = "proxy"
mode = "http-proxy"
bind = "127.0.0.1:8080"        # a public address needs users_file (or allow_unauthenticated = true)
# users_file = "users.htpasswd"  # bcrypt users (`portway user add FILE NAME`): Basic and SOCKS5 auth
connect_ports = [443]          # where CONNECT may go, as squid
# Destinations: any public address, and this machine's admin endpoint (so that
# `curl -x 127.0.0.1:8080 http://127.0.0.1:9090/stats` works). Loopback, private,
# link-local (cloud metadata) and CGNAT addresses are refused unless an entry
# inside them is listed; the check is on the IP actually dialled, after DNS.
allow = ["0.0.0.0/0", "::/0", "127.0.0.1:9090"]
# deny = ["*.ads.example", "198.51.100.0/24"]
# TLS interception (off while intercept is empty or absent): CONNECT tunnels to these
# destinations are decrypted with certificates made on the fly by the CA of
# `portway ca init`, which the clients must trust (`portway ca show > portway-ca.crt`).
# intercept = ["example.com", "*.example.org"]   # exact name, *.suffix, "*" (all) or an IP
# intercept_ca = "~/.portway/ca"         # the CA directory (this is the default)
# intercept_origin_ca = "origin-ca.pem"  # CAs trusted for origins besides the system's
# har = "intercepted.har"                # record the intercepted requests (HAR 1.2)
# pinning = "log"                        # a client refusing the certificate is logged;
#                                        # "passthrough" also tunnels that host untouched
# pinning_ttl = "1h"                     # ... for this long (with "passthrough")

# mode "tcp": forward every connection, byte for byte, to one backend.
[[listener]]
name = "demo"                  # unique; letters, digits, "_", "." and "-"
mode = "tcp"
bind = "127.0.0.1:7070"        # or a list: ["0.0.0.0:7070", "[::]:7070"]
backend = "admin"              # the [[backend]] below
# Any of sniff_timeout, idle_timeout, keepalive, relay, backlog and
# max_connections may be set here to override [defaults].
# To read the client address from a load balancer's PROXY protocol header:
# proxy_protocol = { accept = "optional", trusted = ["10.0.0.0/8"] }

# A backend is a pool of servers and how to reach them. This one is Portway's
# own admin endpoint, so that `curl http://127.0.0.1:7070/stats` works at once.
[[backend]]
name = "admin"
balance = "roundrobin"         # "roundrobin", "leastconn", "random" or "source"
servers = [
  { address = "127.0.0.1:9090", name = "admin" },
  # { address = "db6.internal:9090", weight = 2 },   # weight 0-256, default 1
  # { address = "[::1]:9090", backup = true },       # used only when the others are down
]
# connect_timeout = "2s"       # and retries: override [defaults]
# health_check = { interval = "2s", timeout = "1s", rise = 2, fall = 3 }   # active checks
eject = { failures = 3, cooldown = "10s" }   # passive: out after 3 failed connects; 0 = never
send_proxy_protocol = "off"    # "v1" or "v2" tells the servers the client's address
"""
"""The built-in configuration as TOML, with comments: also the reference example."""


def default_config() -> Config:
    """Load :data:`DEFAULT_TOML` (a fresh :class:`Config` on each call)."""
    return load_text(DEFAULT_TOML, DEFAULT_SOURCE)
