"""Built-in workloads: a dataset, a model and a metric together, each gin-configurable.

- `stdlib_lm`: next-byte language modelling on the Python standard library's own
  source files (`@stdlib_bytes`, `@byte_transformer`, `@BitsPerByte()`).
"""

from lrresearch.workloads import stdlib_lm  # noqa: F401  (registers its configurables)
