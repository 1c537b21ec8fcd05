"""`ScheduleFreeSGD` and `ScheduleFreeAdamW` against a numpy transcription of the
authors' `SGDScheduleFree.step` / `AdamWScheduleFree.step` and `eval()` (PyPI
`schedulefree` 1.4.1), on a linear regression with float64 weights `[w, b]`, an LR that
changes every batch and zero gradients on some batches (the first included); plus the
eval/train swap, checkpoints, XLA and a short Trainer run."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from lrresearch.optimizers import ScheduleFreeAdamW, ScheduleFreeSGD
from tests.support import regression_batches, regression_grad

STEPS = 80
ZERO_GRAD_STEPS = (0, 7)  # the first batch, and one later


def lrs_per_batch(base: float, steps: int = STEPS) -> np.ndarray:
    """`base * (1 + 0.5 sin(t / 5))`, rounded as the float32 LR variable holds it."""
    return np.float32(base * (1 + 0.5 * np.sin(np.arange(steps) / 5))).astype(np.float64)


def reference(adamw, grad_at, params, lrs, beta=0.9, beta_2=0.999, eps=1e-8,
              weight_decay=0.0, warmup_steps=0, r=0.0, weight_lr_power=2.0):  # fmt: skip
    """The authors' step, flat float64: z is cloned from y at the first step; lr_k =
    lr min(1, (k+1)/warmup); lr_max = max(lr_max, lr_k) from -1; weight = (k+1)^r
    lr_max^power; c = weight / weight_sum (0 if the sum is 0); AdamW: v = b2 v + (1-b2)
    g^2, d = g / (sqrt(v / (1 - b2^(k+1))) + eps); d += wd y; y = lerp(y, z, c) + lr_k
    (beta (1-c) - 1) d; z -= lr_k d. Returns (y per batch, lr_k, c, x = eval())."""
    y, z, v = params.copy(), None, np.zeros_like(params)
    lr_max, weight_sum, ys, lr_ks, cs = -1.0, 0.0, [], [], []
    for k, lr in enumerate(lrs):
        g = grad_at(y, k)
        z = y.copy() if z is None else z
        lr_k = lr * ((k + 1) / warmup_steps if k < warmup_steps else 1.0)
        lr_max = max(lr_k, lr_max)
        weight = (k + 1) ** r * lr_max**weight_lr_power
        weight_sum += weight
        c = weight / weight_sum if weight_sum else 0.0
        if adamw:
            v = beta_2 * v + (1 - beta_2) * g * g
            g = g / (np.sqrt(v / (1 - beta_2 ** (k + 1))) + eps)
        d = g + weight_decay * y
        y = y + c * (z - y) + lr_k * (beta * (1 - c) - 1) * d
        z = z - lr_k * d
        ys.append(y)
        lr_ks.append(lr_k)
        cs.append(c)
    return np.array(ys), np.array(lr_ks), np.array(cs), y + (1 - 1 / beta) * (z - y)


@pytest.fixture(scope="module")
def data():
    x, y = regression_batches(STEPS)
    w0 = np.random.default_rng(3).normal(size=x.shape[-1])
    return x.astype(np.float64), y.astype(np.float64), np.concatenate([w0, [0.0]])


def grad_fn(data):
    x, y, _ = data

    def grad_at(params, k):
        g = regression_grad(params[:-1], params[-1], x[k], y[k])
        return 0 * g if k in ZERO_GRAD_STEPS else g

    return grad_at


def run(optimizer, data, lrs, jit_compile=False):
    """Ours on the same batches (zero gradient at ZERO_GRAD_STEPS); returns (flat y per
    batch, effective_lr, average_weight, flat x after swap_to_eval, variables)."""
    x, y, params = data
    w, b = tf.Variable(params[:-1], name="w"), tf.Variable(params[-1], name="b")
    optimizer.build([w, b])

    @tf.function(jit_compile=jit_compile)
    def step(xb, yb, scale):
        with tf.GradientTape() as tape:
            loss = 0.5 * tf.reduce_mean(tf.square(tf.linalg.matvec(xb, w) + b - yb))
        grads = [g * scale for g in tape.gradient(loss, [w, b])]
        optimizer.apply(grads, [w, b])
        s = optimizer.step_summaries()
        return (
            tf.concat([w, b[None]], 0),
            s["optimizer/effective_lr"],
            s["optimizer/average_weight"],
        )

    out = []
    for k, lr in enumerate(lrs):
        optimizer.learning_rate.assign(lr)
        out.append(step(x[k], y[k], tf.constant(0.0 if k in ZERO_GRAD_STEPS else 1.0, tf.float64)))
    optimizer.swap_to_eval([w, b])
    x_eval = np.concatenate([w.numpy(), [b.numpy()]])
    return *(np.array([o[i].numpy() for o in out]) for i in range(3)), x_eval, (w, b)


CASES = {
    "sgd-defaults": (False, 0.1, {}),
    "sgd-warmup-momentum-decay": (
        False, 0.2, {"momentum": 0.6, "weight_decay": 0.01, "warmup_steps": 15}),
    "sgd-power0-r1": (False, 0.1, {"weight_lr_power": 0.0, "r": 1.0, "warmup_steps": 5}),
    "adamw-defaults": (True, 0.01, {}),
    "adamw-all": (True, 0.02, {"beta_1": 0.7, "beta_2": 0.99, "epsilon": 1e-6,
                               "weight_decay": 0.05, "warmup_steps": 20, "r": 0.5}),
}  # fmt: skip


def make(adamw: bool, lr: float, kwargs: dict) -> keras.optimizers.Optimizer:
    return (ScheduleFreeAdamW if adamw else ScheduleFreeSGD)(learning_rate=lr, **kwargs)


def reference_kwargs(kwargs: dict) -> dict:
    renamed = {"momentum": "beta", "beta_1": "beta", "epsilon": "eps"}
    return {renamed.get(k, k): v for k, v in kwargs.items()}


@pytest.mark.parametrize("case", CASES)
def test_matches_the_authors_step_and_eval(case, data):
    adamw, lr, kwargs = CASES[case]
    lrs = lrs_per_batch(lr)
    want_y, want_lr, want_c, want_x = reference(
        adamw, grad_fn(data), data[2], lrs, **reference_kwargs(kwargs)
    )
    got_y, got_lr, got_c, got_x, _ = run(make(adamw, lr, kwargs), data, lrs)
    np.testing.assert_allclose(got_y, want_y, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got_lr, want_lr, rtol=1e-6)  # logged as float32
    np.testing.assert_allclose(got_c, want_c, rtol=1e-6)
    np.testing.assert_allclose(got_x, want_x, rtol=1e-12, atol=1e-12)
    assert got_c[0] == 1.0 and 0 < got_c[-1] < 0.1  # c_1 = 1, then the average settles
    assert not np.allclose(got_x, got_y[-1])  # x is not y


def test_a_zero_lr_first_batch_gives_the_average_no_weight(data):
    """lr_max = 0 on the first batch: weight_sum is 0 and c is 0, as the authors'
    ZeroDivisionError branch."""
    lrs = lrs_per_batch(0.1, 20)
    lrs[0] = 0.0
    want_y, _, want_c, want_x = reference(False, grad_fn(data), data[2], lrs)
    got_y, _, got_c, got_x, _ = run(ScheduleFreeSGD(0.1), data, lrs)
    assert got_c[0] == 0.0 and want_c[0] == 0.0 and got_c[1] == 1.0
    np.testing.assert_allclose(got_y, want_y, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got_x, want_x, rtol=1e-12, atol=1e-12)


def test_swaps_are_exact_idempotent_and_traceable(data):
    optimizer = ScheduleFreeAdamW(0.01)
    lrs = lrs_per_batch(0.01, 30)
    got_y, _, _, got_x, (w, b) = run(optimizer, data, lrs)  # ends in eval mode
    swap_to_eval = tf.function(optimizer.swap_to_eval)
    swap_to_train = tf.function(optimizer.swap_to_train)
    swap_to_eval([w, b])  # already in eval mode: a no-op
    np.testing.assert_array_equal(np.append(w.numpy(), b.numpy()), got_x)
    for _ in range(2):
        swap_to_train([w, b])
        np.testing.assert_array_equal(np.append(w.numpy(), b.numpy()), got_y[-1])  # bit for bit
    assert int(optimizer.eval_mode.numpy()) == 0
    swap_to_eval([w, b])
    np.testing.assert_array_equal(np.append(w.numpy(), b.numpy()), got_x)


def test_eval_before_training_is_the_initial_weights():
    w = tf.Variable([1.5, -2.0], dtype=tf.float64)
    optimizer = ScheduleFreeSGD()
    optimizer.swap_to_eval([w])  # not built yet (Keras evaluate before fit): a no-op
    optimizer.build([w])
    optimizer.swap_to_eval([w])
    np.testing.assert_array_equal(w.numpy(), [1.5, -2.0])


def test_a_checkpoint_in_eval_mode_resumes_training_exactly(tmp_path, data):
    """Saved inside eval mode: the model holds x, the stash y; after restore
    `swap_to_train` gives y bit for bit and the next batches match an uninterrupted run."""
    lrs = lrs_per_batch(0.1, 24)
    full_y = run(ScheduleFreeSGD(0.1, warmup_steps=5), data, lrs)[0]
    optimizer = ScheduleFreeSGD(0.1, warmup_steps=5)
    _, _, _, x_eval, (w, b) = run(optimizer, data, lrs[:12])
    path = tf.train.Checkpoint(optimizer=optimizer, w=w, b=b).save(str(tmp_path / "ckpt"))
    restored = ScheduleFreeSGD(0.1, warmup_steps=5)
    w2, b2 = tf.Variable(tf.zeros_like(w)), tf.Variable(tf.zeros_like(b))
    restored.build([w2, b2])
    tf.train.Checkpoint(optimizer=restored, w=w2, b=b2).restore(path).assert_consumed()
    np.testing.assert_array_equal(np.append(w2.numpy(), b2.numpy()), x_eval)
    restored.swap_to_train([w2, b2])
    np.testing.assert_array_equal(np.append(w2.numpy(), b2.numpy()), full_y[11])
    x, y, _ = data
    for k in range(12, 24):
        with tf.GradientTape() as tape:
            loss = 0.5 * tf.reduce_mean(tf.square(tf.linalg.matvec(x[k], w2) + b2 - y[k]))
        restored.learning_rate.assign(lrs[k])
        restored.apply(tape.gradient(loss, [w2, b2]), [w2, b2])
    np.testing.assert_allclose(np.append(w2.numpy(), b2.numpy()), full_y[-1], rtol=1e-14)


@pytest.mark.parametrize("adamw", [False, True])
def test_xla_gives_the_same_weights(adamw, data):
    kwargs = {"weight_decay": 0.01, "warmup_steps": 5}
    lr = 0.01 if adamw else 0.1
    lrs = lrs_per_batch(lr, 15)
    plain = run(make(adamw, lr, kwargs), data, lrs)
    compiled = run(make(adamw, lr, kwargs), data, lrs, jit_compile=True)
    np.testing.assert_allclose(compiled[0], plain[0], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(compiled[3], plain[3], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize(
    "optimizer", [ScheduleFreeSGD(0.5, momentum=0.8, weight_decay=1e-3, warmup_steps=7, r=1.0,
                                  weight_lr_power=0.0),
                  ScheduleFreeAdamW(beta_1=0.95, beta_2=0.99, epsilon=1e-6, weight_decay=0.1)],
)  # fmt: skip
def test_get_config_round_trips(optimizer):
    config = optimizer.get_config()
    assert type(optimizer).from_config(config).get_config() == config
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    assert type(restored) is type(optimizer) and restored.get_config() == config


@pytest.mark.parametrize(
    ("make_optimizer", "message"),
    [
        (lambda: ScheduleFreeSGD(momentum=1.0), "ScheduleFreeSGD.momentum"),
        (lambda: ScheduleFreeSGD(warmup_steps=-1), "ScheduleFreeSGD.warmup_steps"),
        (lambda: ScheduleFreeSGD(learning_rate=-1.0), "ScheduleFreeSGD.learning_rate"),
        (lambda: ScheduleFreeAdamW(beta_1=0.0), "ScheduleFreeAdamW.beta_1"),
        (lambda: ScheduleFreeAdamW(beta_2=1.0), "ScheduleFreeAdamW.beta_2"),
        (lambda: ScheduleFreeAdamW(weight_decay=-0.1), "ScheduleFreeAdamW.weight_decay"),
        (lambda: ScheduleFreeAdamW(weight_lr_power=float("inf")), "weight_lr_power"),
        (lambda: ScheduleFreeSGD(gradient_accumulation_steps=4), "gradient_accumulation"),
    ],
)
def test_bad_arguments_name_the_parameter(make_optimizer, message):
    with pytest.raises(ValueError, match=message):
        make_optimizer()
