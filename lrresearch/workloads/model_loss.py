"""The workload's model, loss and metrics, from what gin binds to the `Trainer`.

- The model is any callable returning a `keras.Model`. It is called with the keyword
  arguments it accepts among `input_shape` (one example's shape) and `num_classes`
  (known for in-memory class-labelled data); everything else comes from its own gin
  bindings. The built-in `mlp` and `cnn` take both.
- The loss is a Keras loss (a name such as `'mse'`, a class, or an instance) or a
  callable `(y_true, y_pred) -> per-example loss`. `per_example_loss` always returns
  the unreduced values, so the trainer takes the mean over every element itself (over
  batch x time for a sequence model): Keras `Loss` objects divide by the replica count
  under a strategy, which the trainer's explicit mean avoids.
- Metrics are Keras metrics (names, classes, instances or functions), logged as
  `eval/<metric.name>`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import keras
import tensorflow as tf

LossFn = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]
LossSpec = str | keras.losses.Loss | type | LossFn | None
MetricSpec = str | keras.metrics.Metric | type | Callable[..., Any]


def build_model(
    model_fn: Callable[..., keras.Model],
    input_shape: Sequence[int],
    num_classes: int | None,
) -> keras.Model:
    """Calls `model_fn` with the arguments it takes and checks that it returned a
    `keras.Model`.

    A function with parameters named `input_shape` and/or `num_classes` gets those by
    name. Otherwise its required positional parameters get, in order, the input shape
    and the class count (the convention `(input_shape, num_classes)` of earlier
    versions, whatever the names); a function with none is called with no argument.
    """
    name = getattr(model_fn, "__name__", type(model_fn).__name__)
    known = {"input_shape": tuple(input_shape), "num_classes": num_classes}
    try:
        parameters = inspect.signature(model_fn).parameters
    except (TypeError, ValueError):
        parameters = {}
    required = [
        p.name
        for p in parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
    ]
    if known.keys() & parameters.keys():
        needed = [k for k in known if k in parameters]
        arguments = (), {k: known[k] for k in needed if known[k] is not None}
    else:  # an unknown class count is left to gin (a binding), not passed as None
        positional = [known["input_shape"], num_classes][: len(required)]
        arguments = tuple(p for p in positional if p is not None), {}
    try:
        model = model_fn(*arguments[0], **arguments[1])
    except TypeError as e:
        takes_count = "num_classes" in required or len(required) >= 2
        if num_classes is not None or not takes_count or "missing" not in str(e):
            raise
        count = "num_classes" if "num_classes" in required else required[1]
        raise ValueError(
            f"Trainer.model: {name}() needs the class count ({count}), which only in-memory "
            f"class-labelled data give, not a tf.data input; bind it in gin, e.g. "
            f"`{name}.{count} = 10` (the number of classes, or output units), or give "
            f"{name}'s {count} a default"
        ) from None
    if not isinstance(model, keras.Model):
        raise ValueError(
            f"Trainer.model must return a keras.Model, but {name}() returned "
            f"{type(model).__name__}; bind a function or class that builds the model"
        )
    return model


def check_output_fits(model: keras.Model, loss_fn: LossFn, loss_name: str, inputs: Any) -> None:
    """Raises ValueError naming both per-example shapes, the model and the loss if
    `loss_fn` cannot take the model's output for the labels of `inputs.example_spec`.
    Nothing runs: the model's output is inferred symbolically and the loss traced on
    specs, before any run directory exists (otherwise the first compiled call fails
    with TensorFlow's traced stack)."""
    if inputs.example_spec is None:
        return
    x_spec, y_spec = inputs.example_spec
    try:
        output = model.compute_output_spec(keras.KerasTensor((2, *x_spec.shape), x_spec.dtype))
    except (ValueError, TypeError, NotImplementedError, AttributeError, KeyError):
        return  # a model Keras cannot run symbolically: the step's trace will say
    if not isinstance(output, keras.KerasTensor):
        return  # several outputs: the loss's business
    trace = tf.function(lambda y, p: loss_fn(y, p), autograph=False).get_concrete_function
    try:
        trace(
            tf.TensorSpec((2, *y_spec.shape), y_spec.dtype),
            tf.TensorSpec(output.shape, output.dtype),
        )
    except (ValueError, TypeError, tf.errors.InvalidArgumentError) as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise ValueError(
            f"Trainer.model must output what Trainer.loss takes for these labels: {model.name} "
            f"outputs shape {tuple(output.shape[1:])} per example, the labels of "
            f"{inputs.name} have shape {tuple(y_spec.shape)} ({y_spec.dtype.name}), and "
            f"{loss_name} cannot take them ({reason}); change the model's last layer (e.g. "
            f"mlp.num_classes: the output units) or Trainer.loss"
        ) from None


def per_example_loss(spec: LossSpec) -> tuple[LossFn, str]:
    """The unreduced loss function for `Trainer.loss` and a short name for HParams.

    None is sparse categorical cross-entropy from logits (the built-in classifiers).
    A Keras `Loss` (instance, class or name) is applied through its `call`, which
    returns the per-example values before any reduction or replica scaling.
    """
    if spec is None:
        return _sparse_ce_from_logits, "sparse_categorical_crossentropy(from_logits)"
    if isinstance(spec, str):
        try:
            resolved = keras.losses.get(spec)
        except ValueError:
            raise ValueError(
                f"Trainer.loss: unknown Keras loss {spec!r}; use a name such as 'mse' or "
                "'huber', a class such as @keras.losses.Huber(), or your own function "
                "(y_true, y_pred) -> per-example loss"
            ) from None
        return per_example_loss(resolved)
    if inspect.isclass(spec) and issubclass(spec, keras.losses.Loss):
        spec = spec()
    if isinstance(spec, keras.losses.Loss):
        return spec.call, spec.name
    if callable(spec):
        return spec, getattr(spec, "__name__", type(spec).__name__)
    raise ValueError(
        f"Trainer.loss must be a Keras loss (name, class or instance) or a function "
        f"(y_true, y_pred) -> per-example loss, got {spec!r}"
    )


def _sparse_ce_from_logits(y_true: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    return keras.losses.sparse_categorical_crossentropy(y_true, logits, from_logits=True)


def mean_loss(loss_fn: LossFn, y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
    """The mean of `loss_fn`'s per-example values over every element, in float32."""
    return tf.reduce_mean(tf.cast(loss_fn(y_true, y_pred), tf.float32))


def make_metrics(specs: Sequence[MetricSpec] | None, default_loss: bool) -> list[Any]:
    """Keras metric objects for `Trainer.metrics`; `'accuracy'` is sparse categorical
    accuracy named `accuracy`. None: `['accuracy']` for the default (classification)
    loss, else none."""
    if specs is None:
        specs = ["accuracy"] if default_loss else []
    if isinstance(specs, (str, keras.metrics.Metric)) or not isinstance(specs, Sequence):
        specs = [specs]
    metrics = [_metric(spec) for spec in specs]
    names = [m.name for m in metrics]
    if len(set(names)) != len(names):
        raise ValueError(f"Trainer.metrics: two metrics share a name ({names}); name them")
    return metrics


def _metric(spec: MetricSpec) -> keras.metrics.Metric:
    if isinstance(spec, str):
        if spec in ("accuracy", "acc"):
            return keras.metrics.SparseCategoricalAccuracy(name="accuracy")
        try:
            resolved = keras.metrics.get(spec)
        except ValueError:
            raise ValueError(
                f"Trainer.metrics: unknown Keras metric {spec!r}; use a name such as "
                "'mae', a class such as @keras.metrics.MeanAbsoluteError(), or a function"
            ) from None
        if isinstance(resolved, keras.metrics.Metric):
            try:  # logged under the name the user wrote (`eval/mae`), as Keras's compile
                return type(resolved)(name=spec)
            except TypeError:
                return resolved
        return keras.metrics.MeanMetricWrapper(resolved, name=spec)
    if inspect.isclass(spec) and issubclass(spec, keras.metrics.Metric):
        return spec()
    if isinstance(spec, keras.metrics.Metric):
        return spec
    if callable(spec):
        return keras.metrics.MeanMetricWrapper(spec, name=getattr(spec, "__name__", "metric"))
    raise ValueError(f"Trainer.metrics: expected Keras metrics, got {spec!r}")


def evaluate(
    model: keras.Model, loss_fn: LossFn, metrics: Sequence[Any], data: tf.data.Dataset
) -> dict[str, tf.Tensor]:
    """`{"loss": mean loss over every element of `data`, "<metric>": ...}` (traced
    code: the trainer compiles it once)."""
    for metric in metrics:
        metric.reset_state()
    total = tf.constant(0.0, tf.float64)
    count = tf.constant(0.0, tf.float64)
    for x, y in data:
        y_pred = model(x, training=False)
        per_example = tf.cast(loss_fn(y, y_pred), tf.float64)
        total += tf.reduce_sum(per_example)
        count += tf.cast(tf.size(per_example), tf.float64)
        for metric in metrics:
            metric.update_state(y, y_pred)
    results = {"loss": tf.cast(total / count, tf.float32)}
    for metric in metrics:
        results[metric.name] = tf.cast(metric.result(), tf.float32)
    return results
