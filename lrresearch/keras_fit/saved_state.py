"""What `ControlledModel` saves beside the model's weights, and loads back.

Keras's saving (`save_weights`, `model.save`, `ModelCheckpoint`, `BackupAndRestore`)
walks Keras objects only; the controller, the moving averages, the guard and the loss
scale are `tf.Module`s, so their variables are stored under their attribute paths
(`controller.parts.0.count`, `guard.skipped`, ...) beside the model's own numbered
entries, with the random streams of the model's layers (`lrresearch.step.random_state`).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from lrresearch.step import random_state


class SavedStateMixin:
    """Mixed into `ControlledModel` (before `keras.Model`); reads its `controller`,
    `ma_short`, `ma_long`, `guard`, `loss_scale` and `inner`."""

    def controller_state(self) -> dict[str, tf.Variable]:
        """The controller's and the moving averages' variables by attribute path
        (`controller.losses`, `controller.parts.0.count`, `loss_ma_long.buffer`): what
        `save_own_variables` writes, with `guard_state()`. The order is sorted by
        attribute, so it does not depend on the order in which the variables were
        created."""
        return _state(
            ("controller", self.controller),
            ("loss_ma_short", self.ma_short),
            ("loss_ma_long", self.ma_long),
        )

    def guard_state(self) -> dict[str, tf.Variable]:
        """The guard's variables (`guard.consecutive`, `guard.first_nonfinite_step`,
        `guard.lr_scale`, `guard.skipped`), saved beside `controller_state()`."""
        return _state(("guard", self.guard))

    def loss_scale_state(self) -> dict[str, tf.Variable]:
        """The loss scale's variables (`loss_scale.good_steps`, `loss_scale.overflows`,
        `loss_scale.scale`) under float16 loss scaling, else none."""
        return {} if self.loss_scale is None else _state(("loss_scale", self.loss_scale))

    # Keras's saving (`save_weights`, `model.save`, `ModelCheckpoint`) walks Keras
    # objects only; the controller, the moving averages and the guard are `tf.Module`s,
    # so their variables are stored here, under their attribute paths, beside the
    # model's own.
    def save_own_variables(self, store) -> None:
        super().save_own_variables(store)
        state = {**self.controller_state(), **self.guard_state(), **self.loss_scale_state()}
        for key, variable in state.items():
            store[key] = variable.numpy()
        random_state.save_to_store(random_state.find_states(self.inner), store)

    def load_own_variables(self, store) -> None:
        keys = list(store.keys())
        # Keras's own entries are numbered "0", "1", ...; ours are attribute paths.
        saved = {k: np.asarray(store[k]) for k in keys if not k.isdigit()}
        saved_random = random_state.pop_from(saved)
        guard = self.guard_state()
        saved_guard = {k: saved.pop(k) for k in guard if k in saved}
        # A float32 model ignores a float16 model's loss scale; a float16 model keeps its
        # fresh one if the file has none (a float32 model's, or older than loss scaling).
        saved_scale = {k: saved.pop(k) for k in list(saved) if k.startswith("loss_scale.")}
        state = self.controller_state()
        saved_shapes = {k: tuple(v.shape) for k, v in saved.items()}
        shapes = {k: tuple(v.shape) for k, v in state.items()}
        if saved_shapes != shapes:
            raise ValueError(
                _mismatch_message(type(self.controller).__name__, saved_shapes, shapes)
            )
        # A file saved before the guard existed has none of its keys: that code never
        # skipped a batch, so the guard starts afresh. Part of them is a damaged file.
        if saved_guard and saved_guard.keys() != guard.keys():
            raise ValueError(
                f"ControlledModel: the saved guard state has {sorted(saved_guard)}, not "
                f"{sorted(guard)}; the file is damaged. Pass `skip_mismatch=True` to "
                f"`load_weights` to load the weights and start the controller and guard "
                f"afresh."
            )
        states = random_state.find_states(self.inner)  # checked before the rest loads
        random_state.load_from_store(states, saved_random, "ControlledModel")
        super().load_own_variables({k: store[k] for k in keys if k.isdigit()})
        for key, variable in state.items():
            variable.assign(saved[key])
        if saved_guard:
            for key, variable in guard.items():
                variable.assign(saved_guard[key])
        else:
            self.guard.reset()
        for key, variable in self.loss_scale_state().items():
            if key in saved_scale:
                variable.assign(saved_scale[key])


def _is_variable(value: object) -> bool:
    return isinstance(value, tf.Variable)


def _state(*modules: tuple[str, tf.Module]) -> dict[str, tf.Variable]:
    """The variables of each `(prefix, module)` by attribute path, sorted by attribute."""
    state = {}
    for prefix, module in [m for m in modules if m[1] is not None]:  # None: no controller yet
        for path, variable in module._flatten(predicate=_is_variable, with_path=True):
            state[".".join(map(str, (prefix, *path)))] = variable
    return state


def _mismatch_message(
    controller: str, saved: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]]
) -> str:
    def listing(shapes: dict[str, tuple[int, ...]]) -> str:
        return ", ".join(f"{k} {list(s)}" for k, s in sorted(shapes.items())) or "nothing"

    return (
        f"ControlledModel: the saved controller state does not fit this model's "
        f"{controller}.\n  saved:      {listing(saved)}\n  this model: {listing(expected)}\n"
        f"Load into a ControlledModel built with the controller class and arguments that "
        f"saved it (a `.keras` file records them: `keras.models.load_model(path)` rebuilds "
        f"the model), or pass `skip_mismatch=True` to `load_weights` to load the rest and "
        f"start the controller afresh."
    )
