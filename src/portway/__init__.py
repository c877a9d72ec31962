"""Portway: one program that puts many private services behind one public address.

The package is layered (see ``docs/architecture.md``): ``proto`` and ``route`` and
``config`` are pure code over bytes and objects; ``net`` and ``modes`` are the thin
I/O that touches sockets; ``worker`` and ``supervisor`` own processes and signals;
``observe`` turns per-connection records into logs and metrics.
"""

__version__ = "0.1.0"
