"""`ControlledModel`'s `evaluate`, `predict` and saving on the evaluation weights.

Schedule-Free trains `y` and evaluates `x`, an average (`ScheduleFreeSGD`,
`ScheduleFreeAdamW`). `EvalWeightsMixin` makes Keras's `evaluate` (also the validation
inside `fit`), `predict`, `save` and `save_weights` run with `x` in the model, and puts
`y` back, bit for bit, before training goes on; `fit` starts from `y` even after loading
a file saved on `x`. Nothing changes for any other optimizer
(`lrresearch.optimizers.whole_step.eval_weights`).
"""

from __future__ import annotations

from typing import Any

from lrresearch.optimizers import whole_step


class EvalWeightsMixin:
    """Mixed into `ControlledModel` (before `keras.Model`)."""

    def _on_eval_weights(self, method: str, *args: Any, **kwargs: Any) -> Any:
        optimizer = getattr(self, "optimizer", None)
        if optimizer is None or not optimizer.built:
            return getattr(super(), method)(*args, **kwargs)
        with whole_step.eval_weights(optimizer, self.trainable_variables):
            return getattr(super(), method)(*args, **kwargs)

    def evaluate(self, *args: Any, **kwargs: Any) -> Any:
        return self._on_eval_weights("evaluate", *args, **kwargs)

    def predict(self, *args: Any, **kwargs: Any) -> Any:
        return self._on_eval_weights("predict", *args, **kwargs)

    def save(self, *args: Any, **kwargs: Any) -> Any:
        return self._on_eval_weights("save", *args, **kwargs)

    def save_weights(self, *args: Any, **kwargs: Any) -> Any:
        return self._on_eval_weights("save_weights", *args, **kwargs)

    def fit(self, *args: Any, **kwargs: Any) -> Any:
        optimizer = getattr(self, "optimizer", None)
        if optimizer is not None and optimizer.built:
            whole_step.to_train_weights(optimizer, self.trainable_variables)
        return super().fit(*args, **kwargs)
