"""tool/optim.py: the poly schedule, the reference's momentum, the four parameter
groups (SPEC §2, §4) and resuming from a state dict."""

import io

import pytest
import torch
from torch import nn

from engine.errors import UserError
from network import build_network
from tool.optim import REFERENCE_MOMENTUM, PolyOptimizer, cpn_param_groups

LR, WEIGHT_DECAY, MAX_STEP = 0.01, 5e-4, 10
# SPEC §2, in the optimiser's order
GROUP_NAMES = ("pretrained_weights", "pretrained_biases", "new_weights", "new_biases")
MULTIPLIERS = (1, 2, 10, 20)
DECAYS = (WEIGHT_DECAY, 0.0, WEIGHT_DECAY, 0.0)


def four_groups(seed=0, sizes=(3, 2, 4, 1)):
    """One parameter (of the given size) per group, in GROUP_NAMES' order; size 0: an empty group."""
    generator = torch.Generator().manual_seed(seed)
    return [[nn.Parameter(torch.randn(size, generator=generator))] if size else [] for size in sizes]


def named(groups):
    return dict(zip(GROUP_NAMES, groups))


def make_optimizer(groups, max_step=MAX_STEP):
    return PolyOptimizer(cpn_param_groups(named(groups), LR, WEIGHT_DECAY), LR, max_step)


def fake_step(groups, optimizer, step):
    """One optimiser step with a gradient that depends on the parameters and the step."""
    optimizer.zero_grad()
    loss = sum(((params[0] - step) ** 2).sum() for params in groups if params)
    loss.backward()
    optimizer.step()


def test_param_groups_have_the_spec_multipliers_and_decay():
    groups = four_groups()
    sgd_groups = cpn_param_groups(named(groups), LR, WEIGHT_DECAY)
    assert [group["lr"] for group in sgd_groups] == pytest.approx([m * LR for m in MULTIPLIERS])
    assert [group["weight_decay"] for group in sgd_groups] == list(DECAYS)
    assert [group["params"] for group in sgd_groups] == groups


def test_param_groups_follow_the_names_not_the_order_given():
    groups = four_groups()
    reversed_names = dict(reversed(named(groups).items()))
    assert list(reversed_names) == list(reversed(GROUP_NAMES))
    sgd_groups = cpn_param_groups(reversed_names, LR, WEIGHT_DECAY)
    assert [group["params"] for group in sgd_groups] == groups
    assert [group["lr"] for group in sgd_groups] == pytest.approx([m * LR for m in MULTIPLIERS])


def test_param_groups_of_a_real_network_by_name():
    net = build_network("resnet38_CPN")
    groups = net.get_parameter_groups()
    sgd_groups = cpn_param_groups(groups._asdict(), LR, WEIGHT_DECAY)  # the CPN has no trainable biases
    assert [group["params"] for group in sgd_groups] == [groups.pretrained_weights, groups.new_weights]
    assert [group["lr"] for group in sgd_groups] == pytest.approx([LR, 10 * LR])


def test_empty_param_group_is_skipped_without_shifting_the_others():
    groups = four_groups(sizes=(3, 0, 4, 1))
    sgd_groups = cpn_param_groups(named(groups), LR, WEIGHT_DECAY)
    assert [group["params"] for group in sgd_groups] == [groups[0], groups[2], groups[3]]
    assert [group["lr"] for group in sgd_groups] == pytest.approx([LR, 10 * LR, 20 * LR])
    assert [group["weight_decay"] for group in sgd_groups] == [WEIGHT_DECAY, WEIGHT_DECAY, 0.0]


def test_momentum_defaults_to_the_reference_quirk():
    assert REFERENCE_MOMENTUM == 5e-4
    optimizer = make_optimizer(four_groups())
    assert all(group["momentum"] == 5e-4 for group in optimizer.param_groups)


@pytest.mark.parametrize("step", [0, 4, MAX_STEP - 1])
def test_poly_lr_of_every_group_follows_the_formula(step):
    groups = four_groups()
    optimizer = make_optimizer(groups)
    for done in range(step + 1):
        fake_step(groups, optimizer, done)
    expected = [m * LR * (1 - step / MAX_STEP) ** 0.9 for m in MULTIPLIERS]
    assert [group["lr"] for group in optimizer.param_groups] == pytest.approx(expected, rel=1e-12)
    assert optimizer.global_step == step + 1


def test_lr_stays_at_its_last_value_after_max_step():
    groups = four_groups()
    optimizer = make_optimizer(groups)
    for done in range(MAX_STEP + 3):
        fake_step(groups, optimizer, done)
    expected = [m * LR * (1 / MAX_STEP) ** 0.9 for m in MULTIPLIERS]
    assert [group["lr"] for group in optimizer.param_groups] == pytest.approx(expected, rel=1e-12)


def test_update_is_sgd_with_momentum_and_group_weight_decay():
    groups = four_groups()
    optimizer = make_optimizer(groups)
    start = [params[0].detach().clone() for params in groups]
    fake_step(groups, optimizer, 0)
    after_first = [params[0].detach().clone() for params in groups]
    fake_step(groups, optimizer, 1)
    lr_first = [m * LR for m in MULTIPLIERS]
    lr_second = [m * LR * (1 - 1 / MAX_STEP) ** 0.9 for m in MULTIPLIERS]
    for index, params in enumerate(groups):
        # d = grad + wd·p; buffer_1 = d_1, buffer_2 = momentum·buffer_1 + d_2; p -= lr·buffer
        d_first = 2 * (start[index] - 0) + DECAYS[index] * start[index]
        expected_first = start[index] - lr_first[index] * d_first
        torch.testing.assert_close(after_first[index], expected_first)
        d_second = 2 * (after_first[index] - 1) + DECAYS[index] * after_first[index]
        buffer = REFERENCE_MOMENTUM * d_first + d_second
        torch.testing.assert_close(params[0].detach(), after_first[index] - lr_second[index] * buffer)


def test_state_dict_round_trip_resumes_the_schedule():
    steps_before, steps_after = 4, 3
    groups = four_groups()
    optimizer = make_optimizer(groups)
    for done in range(steps_before + steps_after):
        fake_step(groups, optimizer, done)

    interrupted = four_groups()
    first_run = make_optimizer(interrupted)
    for done in range(steps_before):
        fake_step(interrupted, first_run, done)
    buffer = io.BytesIO()
    torch.save({"params": [p[0].detach() for p in interrupted], "optimizer": first_run.state_dict()}, buffer)
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)

    resumed = [[nn.Parameter(value.clone())] for value in checkpoint["params"]]
    # a different lr and max_step at construction: the checkpoint's schedule must win
    second_run = PolyOptimizer(cpn_param_groups(named(resumed), 1.0, WEIGHT_DECAY), 1.0, 999)
    second_run.load_state_dict(checkpoint["optimizer"])
    assert (second_run.global_step, second_run.max_step) == (steps_before, MAX_STEP)
    for done in range(steps_before, steps_before + steps_after):
        fake_step(resumed, second_run, done)

    assert second_run.global_step == optimizer.global_step
    assert [g["lr"] for g in second_run.param_groups] == [g["lr"] for g in optimizer.param_groups]
    for uninterrupted_params, resumed_params in zip(groups, resumed):
        assert torch.equal(uninterrupted_params[0], resumed_params[0])


def test_loading_a_plain_sgd_state_is_a_user_error():
    groups = four_groups()
    plain = torch.optim.SGD(cpn_param_groups(named(groups), LR, WEIGHT_DECAY), LR)
    with pytest.raises(UserError, match="PolyOptimizer"):
        make_optimizer(groups).load_state_dict(plain.state_dict())


def test_batchnorm_statistics_are_those_of_the_images():
    from tool.optim import estimate_batchnorm_statistics

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 3)
    model = torch.nn.Sequential(conv, torch.nn.BatchNorm2d(4), torch.nn.Dropout(0.5), torch.nn.Conv2d(4, 2, 1))
    model.train()
    images = torch.randn(5, 3, 9, 7) * 3 + 1
    estimate_batchnorm_statistics(model, images)
    features = conv(images).detach()
    norm = model[1]
    torch.testing.assert_close(norm.running_mean, features.mean(dim=(0, 2, 3)))
    torch.testing.assert_close(norm.running_var, features.var(dim=(0, 2, 3), unbiased=True))
    assert norm.momentum == 0.1 and model.training and norm.training
    model.eval()
    normalised = norm(features)
    torch.testing.assert_close(normalised.mean(dim=(0, 2, 3)), torch.zeros(4), atol=1e-5, rtol=0)
