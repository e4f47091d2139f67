"""``mconv verify`` and ``mconv bench`` (registered on the app from mconv.cli)."""

from __future__ import annotations
