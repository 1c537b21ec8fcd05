"""The references of `tools/check_cocob_reference.py`, each run in its own process:

  python tools/cocob_references.py optax SPEC.npz OUT.npz    (a python with jax and optax)
  python tools/cocob_references.py authors SPEC.npz OUT.npz  (TensorFlow; AUTHORS_COCOB
                                                              names cocob_optimizer.py)
  python tools/cocob_references.py authors_graph SPEC.npz OUT.npz     (the same, in a graph)
  python tools/cocob_references.py parameterfree SPEC.npz OUT.npz     (torch on PYTHONPATH;
                                               AUTHORS_PARAMETERFREE names its cocob.py)

SPEC holds the problem (`x`, `y`, `w0`, float64) and per setting `<i>/lrs` plus
`<i>/settings` (`[alpha, eps, weight_decay, float32]`); OUT gets `<i>/weights` (after
every batch) and `<i>/grad_norms` (`||grad + weight_decay * w||` at every batch).
Both train the softmax regression `mean(cross_entropy(x @ w, y))` on the same batches.
"""

from __future__ import annotations

import importlib.util
import os
import sys

import numpy as np


def settings(spec: dict) -> list[tuple[str, np.ndarray, float, float, float, bool]]:
    """`(key, lrs, alpha, eps, weight_decay, float32)` for every setting of the spec."""
    keys = sorted({k.split("/")[0] for k in spec if "/" in k}, key=int)
    out = []
    for key in keys:
        alpha, eps, weight_decay, float32 = spec[f"{key}/settings"]
        out.append((key, spec[f"{key}/lrs"], alpha, eps, weight_decay, bool(float32)))
    return out


def run_optax(spec: dict) -> dict[str, np.ndarray]:
    """optax's `contrib.cocob(learning_rate=schedule, alpha, eps, weight_decay)`, x64."""
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import optax

    out = {}
    for key, lrs, alpha, eps, weight_decay, float32 in settings(spec):
        dtype = jnp.float32 if float32 else jnp.float64
        x, y = jnp.asarray(spec["x"], dtype), jnp.asarray(spec["y"])
        w = jnp.asarray(spec["w0"], dtype)
        table = jnp.asarray(lrs, dtype)
        optimizer = optax.contrib.cocob(
            learning_rate=lambda count, table=table: table[count],
            alpha=alpha, eps=eps, weight_decay=weight_decay,
        )  # fmt: skip

        def loss(w, xb, yb):
            logits = xb @ w
            picked = jnp.take_along_axis(logits, yb[:, None], axis=1)[:, 0]
            return jnp.mean(jax.nn.logsumexp(logits, axis=1) - picked)

        @jax.jit
        def step(w, state, xb, yb, optimizer=optimizer, weight_decay=weight_decay):
            grad = jax.grad(loss)(w, xb, yb)
            updates, state = optimizer.update(grad, state, w)
            return optax.apply_updates(w, updates), state, jnp.linalg.norm(grad + weight_decay * w)

        state = optimizer.init(w)
        weights, norms = [], []
        for t in range(len(lrs)):
            w, state, norm = step(w, state, x[t], y[t])
            weights.append(np.asarray(w))
            norms.append(float(norm))
        out[f"{key}/weights"], out[f"{key}/grad_norms"] = np.array(weights), np.array(norms)
    out["version"] = np.array(f"jax {jax.__version__}, optax {optax.__version__}")
    return out


def authors_module():
    """The authors' `cocob_optimizer` module, from the file AUTHORS_COCOB names."""
    spec = importlib.util.spec_from_file_location("cocob_optimizer", os.environ["AUTHORS_COCOB"])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_authors(spec: dict) -> dict[str, np.ndarray]:
    """The authors' TF1 `COCOB` (`cocob_optimizer.py`): its `_create_slots` and
    `_apply_dense` run eagerly, so its ops execute in the order written. No LR (the
    setting's constant LR is ignored), no weight decay, eps 1e-8."""
    import tensorflow as tf

    module = authors_module()
    out = {}
    for key, lrs, alpha, eps, weight_decay, float32 in settings(spec):
        assert np.all(lrs == lrs[0]) and eps == 1e-8 and weight_decay == 0, key
        dtype = np.float32 if float32 else np.float64
        w = tf.Variable(spec["w0"].astype(dtype))
        optimizer = module.COCOB(alpha=float(alpha))
        optimizer._create_slots([w])
        weights, norms = [], []
        for t in range(len(lrs)):
            with tf.GradientTape() as tape:
                logits = spec["x"][t].astype(dtype) @ w
                loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
                    labels=spec["y"][t], logits=logits))  # fmt: skip
            grad = tape.gradient(loss, w)
            norms.append(float(tf.linalg.norm(grad)))
            optimizer._apply_dense(grad, w)
            weights.append(w.numpy())
        out[f"{key}/weights"], out[f"{key}/grad_norms"] = np.array(weights), np.array(norms)
    out["version"] = np.array(f"TensorFlow {tf.__version__}, eagerly")
    return out


def run_parameterfree(spec: dict) -> dict[str, np.ndarray]:
    """The authors' PyTorch `COCOB` from their `parameterfree` library (the file
    AUTHORS_PARAMETERFREE names): `lr` multiplies the gradient after `weight_decay * w`
    is added, as optax's; the LR set in `param_groups[0]["lr"]` before every batch."""
    sys.modules.setdefault("triton", None)  # torch's optimizers import it; unused here
    import torch

    path = os.environ["AUTHORS_PARAMETERFREE"]
    module_spec = importlib.util.spec_from_file_location("parameterfree_cocob", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    out = {}
    for key, lrs, alpha, eps, weight_decay, float32 in settings(spec):
        dtype = np.float32 if float32 else np.float64
        w = torch.nn.Parameter(torch.tensor(spec["w0"].astype(dtype)))
        optimizer = module.COCOB([w], alpha=float(alpha), eps=float(eps),
                                 weight_decay=float(weight_decay))  # fmt: skip
        weights, norms = [], []
        for t in range(len(lrs)):
            optimizer.param_groups[0]["lr"] = float(lrs[t])
            optimizer.zero_grad()
            logits = torch.tensor(spec["x"][t].astype(dtype)) @ w
            loss = torch.nn.functional.cross_entropy(logits, torch.tensor(spec["y"][t]))
            loss.backward()
            norms.append(float(torch.linalg.norm(w.grad + weight_decay * w.detach())))
            optimizer.step()
            weights.append(w.detach().numpy().copy())
        out[f"{key}/weights"], out[f"{key}/grad_norms"] = np.array(weights), np.array(norms)
    out["version"] = np.array(f"torch {torch.__version__}")
    return out


def run_authors_graph(spec: dict) -> dict[str, np.ndarray]:
    """The authors' `COCOB` as they ran it, `minimize` in a TF1 graph on reference
    variables (on resource variables it runs too). Its reads and assigns of a variable
    carry no control dependencies, so the executor may run an assign before a read that
    the code writes earlier: a run's numbers depend on the schedule. Weights only."""
    import tensorflow as tf

    tf.compat.v1.disable_eager_execution()
    tf.compat.v1.disable_resource_variables()
    module = authors_module()
    out = {}
    for key, _, alpha, *_ in settings(spec):
        graph = tf.Graph()
        with graph.as_default():
            w = tf.compat.v1.Variable(spec["w0"])
            xb = tf.compat.v1.placeholder(tf.float64, spec["x"].shape[1:])
            yb = tf.compat.v1.placeholder(tf.int64, spec["y"].shape[1:])
            loss = tf.reduce_mean(
                tf.nn.sparse_softmax_cross_entropy_with_logits(labels=yb, logits=xb @ w)
            )
            train = module.COCOB(alpha=float(alpha)).minimize(loss, var_list=[w])
            weights = []
            with tf.compat.v1.Session(graph=graph) as session:
                session.run(tf.compat.v1.global_variables_initializer())
                for t in range(len(spec["x"])):
                    session.run(train, {xb: spec["x"][t], yb: spec["y"][t]})
                    weights.append(session.run(w))
        out[f"{key}/weights"] = np.array(weights)
    return out


RUNNERS = {"optax": run_optax, "authors": run_authors, "authors_graph": run_authors_graph,
           "parameterfree": run_parameterfree}  # fmt: skip

if __name__ == "__main__":
    which, spec_path, out_path = sys.argv[1:]
    with np.load(spec_path) as loaded:
        spec = {k: loaded[k] for k in loaded.files}
    np.savez(out_path, **RUNNERS[which](spec))
