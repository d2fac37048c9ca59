"""The generic registry and the three catalogues built on it."""
from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from tests.conftest import REPO
from zoo.registry import Registry, UnknownNameError


def test_register_create_names() -> None:
    reg: Registry = Registry("widget")

    @reg.register()
    def small(size: int = 1) -> dict:
        """A small widget."""
        return {"size": size}

    @reg.register("big")
    def make_big() -> dict:
        return {"size": 10}

    assert reg.names() == ["small", "big"]
    assert reg.create("small", size=3) == {"size": 3}
    assert reg.create("big") == {"size": 10}
    assert "small" in reg and "tiny" not in reg
    assert reg.get("small").doc == "A small widget."
    assert reg.get("small").module == __name__


def test_unknown_name_lists_choices_and_suggests() -> None:
    reg: Registry = Registry("loss")
    reg.register("arcface")(lambda: 1)
    reg.register("cosface")(lambda: 2)
    with pytest.raises(UnknownNameError,
                       match=r"unknown loss 'arcfce' \(did you mean 'arcface'\?\); "
                             r"choose from: arcface, cosface"):
        reg.create("arcfce")


def test_double_registration_warns(caplog: pytest.LogCaptureFixture) -> None:
    reg: Registry = Registry("model")
    reg.register("m")(lambda: 1)
    with caplog.at_level(logging.WARNING):
        reg.register("m")(lambda: 2)
    assert "registered twice" in caplog.text
    assert reg.create("m") == 2


def test_zoo_list_prints_all_three_catalogues() -> None:
    out = subprocess.run([sys.executable, "-m", "zoo", "list"], cwd=REPO, check=True,
                         capture_output=True, text=True).stdout
    for name in ("resnet18", "convnext_atto", "mobilenetv3_small_100", "residual_mlp",
                 "ft_transformer", "timm/<name>", "arcface", "cosface", "subcenter_arcface",
                 "adaface", "curricularface", "triplet", "supcon", "ntxent", "center",
                 "softmax", "focal", "digits", "folder", "csv", "emitters"):
        assert name in out, name
    assert out.index("models") < out.index("losses") < out.index("data sources")
