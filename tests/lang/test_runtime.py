"""radixrt.Runtime rejects bad options before it starts any process."""

from __future__ import annotations

import subprocess

import pytest

import radixrt as sgl


@pytest.fixture
def no_launch(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("a server was started for bad options")

    monkeypatch.setattr(subprocess, "Popen", fail)


def test_model_and_a_different_model_path_is_an_error(no_launch):
    with pytest.raises(ValueError, match="model or model_path"):
        sgl.Runtime(model="default", model_path="/somewhere/else")


def test_an_unknown_option_is_an_error(no_launch):
    with pytest.raises(TypeError, match="no_such_option"):
        sgl.Runtime(no_such_option=1)


def test_a_bad_option_value_is_an_error(no_launch):
    with pytest.raises(ValueError, match="schedule_policy"):
        sgl.Runtime(schedule_policy="random")
