"""The positive-share schedule: values per epoch for constant, linear and stepwise schedules."""

import numpy as np
import pytest

from ptxseg.config import load_config
from ptxseg.data.dataset import PositiveFractionSampler
from ptxseg.util.schedule import PositiveFraction


def values(text, epochs):
    schedule = PositiveFraction.parse(text)
    return [schedule.at(e, epochs) for e in range(epochs)]


def test_linear_schedule_goes_from_start_at_the_first_epoch_to_end_at_the_last():
    assert values("0.8:0.4", 5) == pytest.approx([0.8, 0.7, 0.6, 0.5, 0.4])
    assert values("0.2:0.6", 3) == pytest.approx([0.2, 0.4, 0.6])
    assert values("0.8:0.4", 1) == [0.8]  # one epoch: the start
    assert PositiveFraction.parse("0.8:0.4").at(9, 5) == pytest.approx(0.4)  # past the end


def test_steps_hold_each_value_from_their_epoch_on():
    assert values("0.8@0,0.6@2,0.4@4", 6) == [0.8, 0.8, 0.6, 0.6, 0.4, 0.4]


def test_constant_and_natural():
    assert values("0.5", 3) == [0.5, 0.5, 0.5]
    assert values(0.25, 2) == [0.25, 0.25]
    assert values(None, 2) == [None, None]
    assert PositiveFraction.parse("none").kind == "natural"


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("1.5", "not in [0, 1]"),
        ("0.8:x", "not a number"),
        ("0.8:0.4:0.2", "expected"),
        ("0.8@1,0.4@5", "start at epoch 0"),
        ("0.8@0,0.4@0", "increase"),
        ("0.8@0,0.4", "needs @"),
        ("0.8@0,0.4@-2", "negative"),
        ("0.8@0,0.4@x", "not a whole number"),
    ],
)
def test_bad_schedules_say_what_is_expected(text, fragment):
    with pytest.raises(ValueError, match="positive fraction") as error:
        PositiveFraction.parse(text)
    assert fragment in str(error.value)


def test_config_keeps_numbers_and_checks_schedules():
    assert load_config(overrides={"data.positive_fraction": "0.5"}).data.positive_fraction == 0.5
    config = load_config(overrides={"data.positive_fraction": "0.8:0.4"})
    assert config.data.positive_fraction == "0.8:0.4"
    with pytest.raises(ValueError, match="data.positive_fraction"):
        load_config(overrides={"data.positive_fraction": "0.8:1.4"})


def test_sampler_draws_each_epochs_share():
    labels = np.array([True] * 50 + [False] * 50)
    sampler = PositiveFractionSampler(labels, "0.8:0.4", num_samples=100, epochs=3)
    shares = []
    for epoch in range(3):
        sampler.set_epoch(epoch)  # Lightning calls this before every epoch
        shares.append(labels[list(sampler)].mean())
    assert shares == pytest.approx([0.8, 0.6, 0.4])


def test_sampler_refuses_a_schedule_the_data_cannot_serve():
    with pytest.raises(ValueError, match="no negative images"):
        PositiveFractionSampler(np.ones(4, bool), "1.0:0.5", epochs=2)
