"""What every stage reads and writes: groups and keep-sets (meta), channel spaces, the
propagation context, example inputs, weight hooks, and running the user's modules untouched.

Layer 1: imports only :mod:`fxprune.errors`."""

from __future__ import annotations
