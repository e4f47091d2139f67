"""``mconv run`` and ``mconv recipe`` (registered on the app from mconv.cli)."""

from __future__ import annotations
