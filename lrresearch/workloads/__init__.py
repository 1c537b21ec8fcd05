"""Built-in workloads: a dataset, a model and a metric together, each gin-configurable.

- `stdlib_lm`: next-byte language modelling on the Python standard library's own
  source files (`@stdlib_bytes`, `@byte_transformer`, `@BitsPerByte()`).
- `tabular`: scikit-learn's Iris, Wine and breast-cancer tables, LIBSVM-scaled
  (`@tabular`), for the D-Adaptation paper's logistic regression.
"""

from lrresearch.workloads import stdlib_lm, tabular  # noqa: F401  (registers configurables)
