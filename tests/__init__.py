"""Tests of lrresearch, in folders that mirror its subpackages; cross-cutting ones (docs,
README, examples) at this level. Shared helpers: `tests/support.py`; shared fixtures:
`tests/conftest.py`."""
