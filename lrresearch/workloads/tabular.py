"""Small tables that ship with scikit-learn, scaled as LIBSVM's `*_scale` sets are:
the data sets of the D-Adaptation paper's logistic-regression comparison
(`experiments/iris_logreg.gin`, `tools/parameter_free_claims.py`).
"""

from __future__ import annotations

import gin
import numpy as np

from lrresearch.workloads.data import DataError, Dataset, split

# `name` -> scikit-learn's loader, all bundled with scikit-learn (no download).
TABLES = ("iris", "wine", "breast_cancer")


@gin.configurable
def tabular(name: str = "iris", eval_fraction: float = 0.0, seed: int = 0) -> Dataset:
    """A scikit-learn table (`iris`: 150 x 4, 3 classes; `wine`: 178 x 13, 3 classes;
    `breast_cancer`: 569 x 30, 2 classes), each feature scaled linearly to [-1, 1]
    (LIBSVM's `svm-scale`, which its `iris.scale` / `wine.scale` files use).

    Args:
      name: one of `TABLES`.
      eval_fraction: the share held out for `eval/`; 0 evaluates on the training set
        itself (training accuracy, as the D-Adaptation paper reports for its convex
        problems).
      seed: the split's seed (unused with `eval_fraction = 0`).
    """
    from sklearn import datasets

    if name not in TABLES:
        raise DataError(f"tabular.name must be one of {list(TABLES)}, got {name!r}")
    raw = getattr(datasets, f"load_{name}")()
    x = raw.data.astype(np.float64)
    low, high = x.min(axis=0), x.max(axis=0)
    x = (2.0 * (x - low) / np.where(high > low, high - low, 1.0) - 1.0).astype(np.float32)
    y = raw.target.astype(np.int32)
    classes = int(y.max()) + 1
    if eval_fraction == 0:
        return Dataset(x, y, x, y, classes, name)
    return split(x, y, eval_fraction, seed, classes, name)
