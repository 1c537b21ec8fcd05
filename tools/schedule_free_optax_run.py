"""optax's `contrib.schedule_free` for `tools/check_schedule_free_wrap_reference.py`, run
in its own interpreter (a venv with jax and optax; never lrresearch's dependencies, never
TensorFlow), float64 (`jax_enable_x64`).

`python tools/schedule_free_optax_run.py CASES.json DATA.npz OUT.npz`: DATA holds the
softmax-regression batches `x` (steps, batch, features), labels `y`, the initial
weights `w0` and, per case name, its LR per batch `lr/<name>`. Each case of CASES is
`{"name", "base": "sgd" | "adam" | "adamw", "b1", "b2", "keras_epsilon",
"weight_decay", "momentum", "weight_lr_power", "shift"}`: optax's
`schedule_free(base, learning_rate, b1=momentum, weight_lr_power)` with the base at the
LR of batch `count` (its own counter from 0) and the wrapper's `learning_rate` schedule
at `lr[count - shift]` (optax evaluates it at its `step_count`, which starts at 1:
`shift = 1` feeds it the LR of the batch being applied, `shift = 0` is optax's own
indexing). Adam's `eps` is Keras's `epsilon / sqrt(1 - b2^t)` every step (through
`inject_hyperparams`), so the base is Keras's Adam. Writes `y/<name>` (the weights after
each batch) and `x/<name>` (`schedule_free_eval_params` after the last).
"""

from __future__ import annotations

import json
import sys

import numpy as np


def run_case(case: dict, data: dict) -> tuple[np.ndarray, np.ndarray]:
    import jax
    import jax.numpy as jnp
    import optax

    lrs = jnp.asarray(data[f"lr/{case['name']}"], jnp.float64)
    last = len(lrs) - 1

    def base_lr(count):
        return lrs[jnp.minimum(count, last)]

    def wrapper_lr(count):
        return lrs[jnp.clip(count - case["shift"], 0, last)]

    if case["base"] == "sgd":
        base = optax.sgd(base_lr)
    else:
        b2 = case["b2"]

        def eps(count):  # Keras's epsilon, added before the bias correction
            return case["keras_epsilon"] / jnp.sqrt(1 - b2 ** (count + 1.0))

        if case["base"] == "adam":
            base = optax.inject_hyperparams(optax.adam)(base_lr, b1=case["b1"], b2=b2, eps=eps)
        else:
            base = optax.inject_hyperparams(optax.adamw)(
                base_lr, b1=case["b1"], b2=b2, eps=eps, weight_decay=case["weight_decay"]
            )
    optimizer = optax.contrib.schedule_free(
        base, wrapper_lr, b1=case["momentum"], weight_lr_power=case["weight_lr_power"]
    )
    x, y = jnp.asarray(data["x"]), jnp.asarray(data["y"])

    def loss(w, xb, yb):
        return optax.softmax_cross_entropy_with_integer_labels(xb @ w, yb).mean()

    @jax.jit
    def step(params, state, xb, yb):
        updates, state = optimizer.update(jax.grad(loss)(params, xb, yb), state, params)
        return optax.apply_updates(params, updates), state

    params = jnp.asarray(data["w0"])
    state = optimizer.init(params)
    weights = []
    for k in range(len(x)):
        params, state = step(params, state, x[k], y[k])
        weights.append(np.asarray(params))
    evaluated = optax.contrib.schedule_free_eval_params(state, params)
    return np.array(weights), np.asarray(evaluated)


def main(cases_path: str, data_path: str, out_path: str) -> None:
    import jax

    jax.config.update("jax_enable_x64", True)
    with open(cases_path) as f:
        cases = json.load(f)
    with np.load(data_path) as loaded:
        data = {k: loaded[k] for k in loaded.files}
    out = {}
    for case in cases:
        out[f"y/{case['name']}"], out[f"x/{case['name']}"] = run_case(case, data)
    np.savez(out_path, **out)


if __name__ == "__main__":
    main(*sys.argv[1:4])
