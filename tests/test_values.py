"""One parser for every value: the training CLI / MLproject parameters and the server's
``ZOO_*`` settings read the same words the same way (zoo/values.py)."""
from __future__ import annotations

import pytest

from serving.settings import ServeSettings
from training.config import TrainConfig
from zoo.values import format_value, parse_value, unquote

WORDS = {"1": True, "true": True, "Yes": True, "on": True, " y ": True,
         "0": False, "false": False, "NO": False, "off": False, "f": False}


@pytest.mark.parametrize("word, expected", sorted(WORDS.items()))
def test_booleans_read_alike_in_training_and_serving(word: str, expected: bool) -> None:
    assert TrainConfig.from_dict({"hflip": word}).data.hflip is expected
    assert ServeSettings.from_env({"ZOO_SPIN": word}).spin is expected
    assert parse_value(bool, word) is expected


def test_bad_values_are_refused_alike_naming_the_setting() -> None:
    with pytest.raises(ValueError, match="hflip='maybe' is not a valid bool"):
        TrainConfig.from_dict({"hflip": "maybe"})
    with pytest.raises(ValueError, match="ZOO_SPIN='maybe' is not a valid bool"):
        ServeSettings.from_env({"ZOO_SPIN": "maybe"})
    with pytest.raises(ValueError, match="epochs='2.5' is not a valid int"):
        TrainConfig.from_dict({"epochs": "2.5"})
    with pytest.raises(ValueError, match="ZOO_TOP_K='2.5' is not a valid int"):
        ServeSettings.from_env({"ZOO_TOP_K": "2.5"})


def test_values_round_trip_through_their_text_form() -> None:
    """What is logged as a parameter (format_value) parses back to the same config."""
    cfg = TrainConfig.from_dict({"epochs": "3", "lr": "1e-3", "hflip": "yes", "margin": "auto"})
    assert (cfg.optim.epochs, cfg.optim.lr, cfg.data.hflip,
            cfg.loss.margin) == (3, 0.001, True, None)
    again = TrainConfig.from_dict({k: format_value(v) for k, v in cfg.params().items()})
    assert again == cfg and again.params() == cfg.params()


def test_what_mlflow_run_logged_reads_back_as_given() -> None:
    """``mlflow run`` logs each -P value shell-quoted: ``''`` for an empty one, ``'a b'`` for
    one with a space; ``unquote`` gives the value back, and leaves every other text alone."""
    import shlex

    for value in ("", "my photos", "it's", "resnet18,convnext_atto", "0.004", "'"):
        assert unquote(shlex.quote(value)) == value
    for text in ("auto", "models:/zoo-digits@champion", "'unbalanced", "'a' 'b'"):
        assert unquote(text) == text
    cfg = TrainConfig.from_run({"data": "'my photos'", "epochs": "3"}, {})
    assert cfg.data.source == "my photos" and cfg.optim.epochs == 3
