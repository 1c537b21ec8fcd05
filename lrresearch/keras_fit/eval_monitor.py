"""A controller that watches a validation value under Keras `fit`.

`PlateauController(monitor='val_loss')` (or `'eval/loss'`, the trainer's spelling of the
same value) inside a `ControlledModel` reads Keras's epoch logs: `fit` adds an
`EvalMonitor` callback, which at each epoch's end (after `fit`'s validation) hands the
watched `val_<name>` to the controller (`lrresearch.controllers.evaluation`); the first
batch of the next epoch acts on it, in-graph, as under the trainer. `fit` without
`validation_data` or `validation_split` is refused before training; a name the epoch
logs lack is an error at the first epoch's end, when Keras's logs first show which
`val_<name>` exist (Keras's own `ReduceLROnPlateau` only warns there).
"""

from __future__ import annotations

import inspect
from typing import Any

import keras

from lrresearch.controllers import evaluation

_FIT = inspect.signature(keras.Model.fit)


class EvalMonitor(keras.callbacks.Callback):
    """Hands each epoch's `val_<name>` values to the controllers that watch one."""

    def __init__(self, controller: Any):
        super().__init__()
        self.controller = controller
        self.bound = False

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        prefix = evaluation.FIT_PREFIX
        values = {k[len(prefix) :]: v for k, v in (logs or {}).items() if k.startswith(prefix)}
        if not values:  # no validation this epoch (`validation_freq`)
            return
        if not self.bound:
            known = evaluation.directions(_user_metrics(self.model))
            available = {name: known.get(name) for name in values}
            evaluation.bind(self.controller, available, prefix)
            self.bound = True
        evaluation.observe(self.controller, {k: float(v) for k, v in values.items()})


def _user_metrics(model: keras.Model) -> list[Any]:
    """The compiled metrics, out of Keras's containers (as its `MonitorCallback` does)."""
    from keras.src.trainers import compile_utils

    found = []
    for metric in model.metrics:
        if isinstance(metric, (compile_utils.CompileMetrics, compile_utils.MetricsList)):
            found.extend(metric.metrics)
        else:
            found.append(metric)
    return found


class EvalMonitorMixin:
    """Mixed into `ControlledModel` (before `keras.Model`): `fit` adds `EvalMonitor`
    when the controller watches a validation value."""

    def fit(self, *args: Any, **kwargs: Any) -> Any:
        controller = getattr(self, "controller", None)
        if controller is None or not evaluation.watchers(controller):
            return super().fit(*args, **kwargs)
        arguments = _FIT.bind_partial(self, *args, **kwargs).arguments
        arguments.pop("self")
        monitor = evaluation.watchers(controller)[0]
        if arguments.get("validation_data") is None and not arguments.get("validation_split"):
            raise ValueError(
                f"PlateauController.monitor = {getattr(monitor, 'monitor', '?')!r} watches "
                f"a validation value, but fit got no validation_data or validation_split; "
                f"pass one, or monitor the training loss ('loss_ma_long')"
            )
        callbacks = list(arguments.get("callbacks") or [])
        if not any(isinstance(c, EvalMonitor) for c in callbacks):
            callbacks.append(EvalMonitor(controller))
        arguments["callbacks"] = callbacks
        kwargs = arguments.pop("kwargs", {})
        return super().fit(**arguments, **kwargs)
