"""The CLI offers exactly the names the code implements: every ``--loss``, ``--optimizer``, ``--mode`` and
``--comm`` choice has an implementation, and every implementation is offered."""

from __future__ import annotations

import click

from pgd.cli.options import MODEL_OPTIONS, OPTIMIZER_OPTIONS, PARALLEL_OPTIONS, train_config
from pgd.cli.train import train
from pgd.comm.device import NcclCommunicator
from pgd.comm.host import COMMUNICATORS
from pgd.local.losses import LOSSES
from pgd.optim import GRAM_SOLVERS, ITERATIVE, OPTIMIZERS
from pgd.strategies import STRATEGIES
from pgd.training.modes import RUNNERS


def _choices(name: str) -> list[str]:
    (param,) = [param for param in train.params if param.name == name]
    assert isinstance(param.type, click.Choice)
    return list(param.type.choices)


def test_loss_and_optimizer_choices_are_the_registries():
    assert _choices("loss") == list(LOSSES) == ["squared", "logistic"]
    assert _choices("optimizer") == ["auto", *ITERATIVE] == ["auto", "gd", "momentum", "nesterov", "adam", "sgd",
                                                             "lbfgs"]
    assert OPTIMIZERS == {**ITERATIVE, **GRAM_SOLVERS} and set(GRAM_SOLVERS) == {"cholesky", "cd"}


def test_mode_and_comm_choices_name_exactly_the_implementations():
    assert _choices("mode") == [*STRATEGIES, *RUNNERS]
    assert _choices("comm") == [*COMMUNICATORS, NcclCommunicator.name]


def test_a_wrong_name_is_a_usage_error_listing_the_registry():
    context = click.Context(train)
    (loss,) = [param for param in train.params if param.name == "loss"]
    try:
        loss.type.convert("huber", loss, context)
    except click.BadParameter as error:
        assert "'squared', 'logistic'" in str(error) or "squared, logistic" in str(error)
    else:
        raise AssertionError("--loss huber was accepted")


def test_option_groups_and_train_config_share_the_defaults():
    groups = MODEL_OPTIONS + OPTIMIZER_OPTIONS + PARALLEL_OPTIONS
    assert groups and train_config(data="x.h5", loss="squared").optimizer == "auto"
