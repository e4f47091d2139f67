"""Hypothesis settings for the property tests: deterministic and sized for two cores.

``derandomize=True`` makes every run draw the same examples, so a failure in CI is a
failure on a laptop too; the budget (``max_examples`` per test) keeps the whole folder
around three minutes. Set ``HYPOTHESIS_PROFILE=mconv-property-long`` for a longer,
still deterministic, search, or ``mconv-property-hunt`` (with ``--hypothesis-seed=N``)
for a random one, when hunting new counterexamples.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_COMMON = {
    "derandomize": True,
    "deadline": None,
    "database": None,  # derandomized runs need no example database (and write no .hypothesis/)
    "print_blob": True,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
}

settings.register_profile("mconv-property", max_examples=100, **_COMMON)
settings.register_profile("mconv-property-long", max_examples=400, **_COMMON)
# Random (not derandomized) search for new counterexamples: run with --hypothesis-seed=N.
settings.register_profile("mconv-property-hunt", max_examples=400, **{**_COMMON, "derandomize": False})
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "mconv-property"))
