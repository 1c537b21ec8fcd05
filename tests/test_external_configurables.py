"""Keras optimizers, losses and metrics under their Keras names in a gin file."""

from __future__ import annotations

import gin
import keras
import pytest

from lrresearch import config, external_configurables, profiling


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
