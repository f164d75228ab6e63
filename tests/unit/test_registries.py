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
    assert _choices("loss") == list(LOSSES) == ["squared", "logistic", "multinomial"]
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


def test_optimizers_take_typed_keyword_options_and_from_config_maps_a_run_config():
    from pgd.optim.methods import Adam, HeavyBall
    from pgd.optim.sgd import MiniBatchSGD

    assert HeavyBall.option_names() == ("l1", "momentum")
    assert Adam.option_names() == ("l1", "beta1", "beta2", "eps")
    assert MiniBatchSGD.option_names() == ("l1", "batch_size", "epochs", "schedule", "seed")
    assert OPTIMIZERS["cholesky"].option_names() == ()
    objective = object()
    direct = HeavyBall(objective, xp=None, lr=0.5, momentum=0.5)
    assert (direct.beta, direct.l1, direct.lr) == (0.5, 0.0, 0.5)
    cfg = train_config(data="x.h5", loss="squared", momentum=0.7, l1=0.0)
    mapped = OPTIMIZERS["momentum"].from_config(objective, xp=None, lr=1.0, cfg=cfg)
    assert mapped.beta == 0.7
    assert OPTIMIZERS["momentum"].from_config(objective, xp=None, lr=1.0).beta == 0.9  # no config: the default
    for name, cls in OPTIMIZERS.items():  # every option of every method is a pgd train option
        assert set(cls.option_names()) <= set(cfg.values), name
