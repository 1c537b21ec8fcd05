"""Keras optimizers, losses and metrics under their Keras names in a gin file."""

from __future__ import annotations

import gin
import keras
import pytest

from lrresearch import keras_classes as external_configurables
from lrresearch.config import parse as config
from lrresearch.studies import profile as profiling


@gin.configurable
def workload_parts(loss=None, metrics=(), optimizer=None):
    return loss, metrics, optimizer


@pytest.fixture(autouse=True)
def clean_config():
    gin.clear_config()
    yield
    gin.clear_config()


def test_keras_loss_metric_and_optimizer_parse_and_build_with_their_bindings():
    config.parse(
        [],
        [
            "workload_parts.loss = @keras.losses.Huber()",
            "keras.losses.Huber.delta = 0.5",
            "workload_parts.metrics = [@keras.metrics.MeanAbsoluteError()]",
            "workload_parts.optimizer = @keras.optimizers.Lion",
            "keras.optimizers.Lion.beta_1 = 0.95",
        ],
    )
    loss, metrics, optimizer = workload_parts()
    assert isinstance(loss, keras.losses.Huber)
    assert float(loss([[0.0]], [[2.0]])) == pytest.approx(0.5 * (2.0 - 0.25))  # delta 0.5
    assert isinstance(metrics[0], keras.metrics.MeanAbsoluteError)
    assert optimizer(learning_rate=0.1).beta_1 == 0.95
    assert "keras.losses.Huber" in external_configurables.REGISTERED


def test_a_loss_and_a_metric_of_one_name_need_their_module():
    with pytest.raises(config.ConfigError, match="Ambiguous selector 'MeanSquaredError'"):
        config.parse([], ["workload_parts.loss = @MeanSquaredError()"])
    config.parse([], ["workload_parts.loss = @keras.losses.MeanSquaredError()"])
    assert isinstance(workload_parts()[0], keras.losses.MeanSquaredError)


def test_names_come_from_public_gin_lookups():
    names = config.configurable_names()
    for name in ("Trainer", "GradNormController", "mlp", "keras.optimizers.AdamW", "Huber"):
        assert name in names
    assert "MovingAverage" not in names  # its callers pass every argument
    controllers = profiling.builtin_controllers()
    assert "GradNormController" in controllers and "Product" not in controllers


def test_a_short_name_builds_through_gin_so_its_class_bindings_take_effect():
    from lrresearch.optimizers import Mechanic, make_optimizer

    config.parse([], ["Adam.beta_1 = 0.8", "keras.optimizers.SGD.momentum = 0.9"])
    adam = make_optimizer("adam", 0.1)
    assert isinstance(adam, keras.optimizers.Adam) and adam.beta_1 == 0.8
    assert float(adam.learning_rate) == pytest.approx(0.1)
    assert make_optimizer("momentum", 0.1).momentum == 0.9  # the same value: no conflict
    assert Mechanic(base_optimizer="adam").base_optimizer.beta_1 == 0.8
    assert "Adam.beta_1 = 0.8" in gin.operative_config_str()  # recorded in config.gin


@pytest.mark.parametrize(
    ("bindings", "message"),
    [
        (
            ["SGD.momentum = 0.5"],
            "SGD.momentum must not be bound with Trainer.optimizer = 'momentum', which "
            "builds keras.optimizers.SGD(learning_rate=lr, momentum=0.9), got 0.5; for your "
            "value write `Trainer.optimizer = @keras.optimizers.SGD`",
        ),
        (
            ["keras.optimizers.SGD.learning_rate = 0.5"],
            "SGD.learning_rate must not be bound, got 0.5: the controller sets the "
            "optimizer's LR every batch",
        ),
    ],
)
def test_a_short_name_refuses_a_binding_it_would_override(bindings, message):
    from lrresearch.optimizers import make_optimizer

    config.parse([], bindings)
    with pytest.raises(ValueError) as error:
        make_optimizer("momentum", 0.1)
    assert str(error.value).startswith(message)
