"""Fixtures for the pure scheduler core's tests.

The builders themselves (``task``, ``node``, ``gpu_cluster``, ``new_core``, ``drive`` and
the event builders) live in :mod:`streamsched.testing`, so users can import them too; this
file only adds the forecasters several test modules share.
"""

from __future__ import annotations

import pytest

from streamsched.scheduler.forecasting import RunningMeanForecaster
from streamsched.testing import task

#: Seconds the "resnet" type takes: v100 is three times faster than k80.
RESNET_V100_S = 100.0
RESNET_K80_S = 300.0
#: Seconds the "long" type takes on v100.
LONG_V100_S = 10_000.0


def taught_forecaster() -> RunningMeanForecaster:
    """A running mean that has seen ``resnet`` on v100 (100 s) and k80 (300 s), and the
    ``long`` type on v100 (10 000 s)."""
    model = RunningMeanForecaster()
    for _ in range(3):
        model.learn(task("seen", "resnet", gpus=1), "gpu-v100", RESNET_V100_S)
        model.learn(task("seen", "resnet", gpus=1), "gpu-k80", RESNET_K80_S)
        model.learn(task("seen", "long", gpus=1), "gpu-v100", LONG_V100_S)
    return model


@pytest.fixture
def hetero_forecaster() -> RunningMeanForecaster:
    return taught_forecaster()
