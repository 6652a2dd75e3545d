"""tool/losses.py against slow per-formula versions of SPEC §4 written here with explicit
loops over images, channels and pixels."""

import pytest
import torch
from torch import nn

from tool import losses

N, C, H, W = 2, 21, 5, 4
EPSILON = 1e-5
# image 0 holds classes 1 and 5, image 1 holds class 3 (1-based channel indices)
PRESENT = ({1, 5}, {3})


# ---------------------------------------------------------------- slow references (SPEC §4)


def _max_norm_loop(p, eps=1e-5):
    out = torch.empty_like(p)
    for n in range(p.shape[0]):
        for c in range(p.shape[1]):
            values = [max(float(v), 0.0) for v in p[n, c].flatten()]
            low, high = min(values), max(values)
            for i in range(p.shape[2]):
                for j in range(p.shape[3]):
                    out[n, c, i, j] = max(max(float(p[n, c, i, j]), 0.0) - low - eps, 0.0) / (high - low + eps)
    return out


def test_max_norm_matches_formula_and_range():
    p = torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    p[0, 1] = 0.7  # constant channel -> all zero
    p[1, 2] = -torch.rand(4, 5, dtype=torch.float64)  # all negative -> all zero
    normed = losses.max_norm(p)
    torch.testing.assert_close(normed, _max_norm_loop(p), rtol=0, atol=1e-12)
    assert normed.min() >= 0 and normed.max() <= 1
    assert torch.count_nonzero(normed[0, 1]) == 0 and torch.count_nonzero(normed[1, 2]) == 0
    assert normed[0, 0].max() == pytest.approx(1.0, abs=1e-4)


def test_keepmax_keeps_values_and_ties():
    z = torch.tensor([[0.2, 0.5], [0.5, -1.0], [0.1, 0.5]]).view(1, 3, 1, 2)  # pixel 0 max 0.5, pixel 1 tie at 0.5
    expected = torch.tensor([[0.0, 0.5], [0.5, 0.0], [0.0, 0.5]]).view(1, 3, 1, 2)
    assert torch.equal(losses.keepmax(z), expected)
    negative = torch.tensor([-3.0, -1.0, -2.0]).view(1, 3, 1, 1)
    assert torch.equal(losses.keepmax(negative), torch.tensor([0.0, -1.0, 0.0]).view(1, 3, 1, 1))
    z_copy = z.clone()
    losses.keepmax(z)
    assert torch.equal(z, z_copy), "keepmax must not modify its input"


def naive_label(batch=N):
    label = torch.zeros(batch, C - 1)
    for n in range(batch):
        for channel in PRESENT[n % len(PRESENT)]:
            label[n, channel - 1] = 1
    return label


def naive_label_weight(label, n, channel):
    """L[n, channel] with L[:, 0] = 1."""
    return 1.0 if channel == 0 else float(label[n, channel - 1])


def naive_max_norm(maps):
    rows = []
    for n in range(maps.shape[0]):
        channels = []
        for channel in range(maps.shape[1]):
            x = torch.relu(maps[n, channel])
            low, high = x.min(), x.max()
            channels.append(torch.relu(x - low - EPSILON) / (high - low + EPSILON))
        rows.append(torch.stack(channels))
    return torch.stack(rows)


def naive_keepmax(z):
    out = torch.zeros_like(z)
    batch, channels, height, width = z.shape
    for n in range(batch):
        for i in range(height):
            for j in range(width):
                values = [float(z[n, c, i, j]) for c in range(channels)]
                top = max(values)
                for c in range(channels):
                    if values[c] == top:
                        out[n, c, i, j] = values[c]
    return out


def naive_cls(cam, label):
    total = 0.0
    for n in range(cam.shape[0]):
        for channel in range(1, C):
            score = cam[n, channel].mean()
            target = float(label[n, channel - 1])
            total = total - (
                target * torch.log(torch.sigmoid(score)) + (1 - target) * torch.log(1 - torch.sigmoid(score))
            )
    return total / (cam.shape[0] * (C - 1))


def naive_min_pool(cam_rv, label):
    batch, _, height, width = cam_rv.shape
    count = height * width // 4
    total = 0.0
    for n in range(batch):
        pixel_max = []
        for i in range(height):
            for j in range(width):
                pixel_max.append(
                    torch.stack([cam_rv[n, c, i, j] * naive_label_weight(label, n, c) for c in range(1, C)]).max()
                )
        order = sorted(range(len(pixel_max)), key=lambda k: pixel_max[k].item())
        for k in order[:count]:
            total = total + torch.relu(pixel_max[k])
    return total / (count * batch)


def naive_weighted(maps, label, weight):
    normalized = naive_max_norm(maps)
    return torch.stack(
        [
            torch.stack([normalized[n, c] * naive_label_weight(label, n, c) * weight[n] for c in range(C)])
            for n in range(maps.shape[0])
        ]
    )


def naive_mean_abs(terms):
    """Mean of |x| over the foreground channels of each map in `terms` (all one shape)."""
    batch, _, height, width = terms.shape
    total = 0.0
    for n in range(batch):
        for channel in range(1, C):
            total = total + terms[n, channel].abs().sum()
    return total / (batch * (C - 1) * height * width)


def naive_tcp(a, a1, a2, b, b1, b2):
    return naive_mean_abs(a2.detach() + a1.detach() - a) + naive_mean_abs(b - b1 - b2)


def naive_background(maps):
    rows = []
    for n in range(maps.shape[0]):
        foreground_max = torch.stack([maps[n, c] for c in range(1, C)]).max(dim=0).values
        rows.append(torch.stack([1 - foreground_max] + [maps[n, c] for c in range(1, C)]))
    return torch.stack(rows)


def naive_ohem(errors, ratio=0.2):
    batch = errors.shape[0]
    count = int(C * errors.shape[2] * errors.shape[3] * ratio)
    selected = []
    for n in range(batch):
        flat = errors[n].reshape(-1)
        order = sorted(range(flat.numel()), key=lambda k: -flat[k].item())
        selected.extend(flat[k] for k in order[:count])
    return torch.stack(selected).sum() / (batch * count)


def naive_cpn_terms(outputs, label, kept_fraction, hidden_fraction, ohem_ratio=0.2):
    """outputs: [(cam, cam_rv)] for the full, kept and hidden views → (cls, tcp, cpcr)."""
    weights = (torch.ones(label.shape[0]), kept_fraction, hidden_fraction)
    cls = sum(naive_cls(cam, label) for cam, _ in outputs) / 3
    min_pool = sum(naive_min_pool(cam_rv, label) for _, cam_rv in outputs) / 3
    a, a1, a2 = (naive_weighted(cam, label, w) for (cam, _), w in zip(outputs, weights))
    b, b1, b2 = (naive_weighted(cam_rv, label, w) for (_, cam_rv), w in zip(outputs, weights))
    tcp = naive_tcp(a, a1, a2, b, b1, b2)
    a, a1, a2, b, b1, b2 = map(naive_background, (a, a1, a2, b, b1, b2))
    error1 = (naive_keepmax(a.detach() - a1.detach()) - b2).abs()
    error2 = (naive_keepmax(a.detach() - a2.detach()) - b1).abs()
    cpcr = naive_ohem(error1, ohem_ratio) + naive_ohem(error2, ohem_ratio)
    return cls + min_pool, tcp, cpcr


# ---------------------------------------------------------------- fixtures


def random_maps(seed, batch=N, requires_grad=False):
    generator = torch.Generator().manual_seed(seed)
    maps = torch.randn(batch, C, H, W, generator=generator) * 2
    return maps.requires_grad_(requires_grad)


def normalized_views(seed):
    """Six leaf tensors shaped like A, A1, A2, B, B1, B2, values in [0, 1]."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.rand(N, C, H, W, generator=generator).requires_grad_() for _ in range(6)]


class TinyCPN(nn.Module):
    """A stand-in for the CPN network: a BatchNorm with frozen statistics (eval mode), a conv
    giving 21 channels (cam) and a second output mixing them (cam_rv)."""

    def __init__(self):
        super().__init__()
        generator = torch.Generator().manual_seed(7)
        self.bn = nn.BatchNorm2d(3)
        self.bn.running_mean.copy_(torch.randn(3, generator=generator))
        self.bn.running_var.copy_(torch.rand(3, generator=generator) + 0.5)
        self.conv_cam = nn.Conv2d(3, C, 3, padding=1)
        self.conv_rv = nn.Conv2d(C, C, 1)
        with torch.no_grad():
            for parameter in self.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator))
        self.eval()

    def forward(self, x):
        cam = self.conv_cam(self.bn(x))
        return cam, cam + self.conv_rv(torch.relu(cam))


def tiny_batch(seed=3, size=(H, W)):
    generator = torch.Generator().manual_seed(seed)
    img = torch.randn(N, 3, *size, generator=generator)
    mask = (torch.rand(N, 1, *size, generator=generator) > 0.5).float()
    kept_fraction = mask.mean(dim=(1, 2, 3))
    return dict(
        img=img,
        img_kept=img * mask,
        img_hidden=img * (1 - mask),
        label=naive_label(),
        kept_fraction=kept_fraction,
        hidden_fraction=1 - kept_fraction,
    )


def assert_close(actual, expected):
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- term by term


def test_label_map_has_background_one_and_the_classes():
    label_map = losses.label_map_with_background(naive_label())
    assert label_map.shape == (N, C, 1, 1)
    for n in range(N):
        for channel in range(C):
            assert label_map[n, channel, 0, 0] == naive_label_weight(naive_label(), n, channel)


def test_classification_loss_matches_formula():
    cam = random_maps(0)
    assert_close(losses.classification_loss(cam, naive_label()), naive_cls(cam, naive_label()))


def test_adaptive_min_pooling_matches_formula_and_gradients():
    cam_rv = (random_maps(1) + 3).requires_grad_()  # mostly positive: the term is not 0
    label = naive_label()
    actual = losses.adaptive_min_pooling_loss(cam_rv, losses.label_map_with_background(label))
    expected = naive_min_pool(cam_rv, label)
    assert_close(actual, expected)
    assert actual > 0
    (actual_grad,) = torch.autograd.grad(actual, cam_rv)
    (expected_grad,) = torch.autograd.grad(expected, cam_rv)
    assert_close(actual_grad, expected_grad)
    # absent classes are masked out by L, so they never receive a gradient
    for n in range(N):
        for channel in range(C):
            if channel not in PRESENT[n]:
                assert not actual_grad[n, channel].any()


def test_adaptive_min_pooling_counts_a_quarter_of_the_pixels():
    # image 0: class 1 is 0..19 over the 20 pixels; the 5 smallest are 0..4 → sum 10.
    cam_rv = torch.full((1, C, H, W), -100.0)
    cam_rv[0, 1] = torch.arange(H * W, dtype=torch.float32).view(H, W)
    label_map = losses.label_map_with_background(naive_label(batch=1))
    assert losses.adaptive_min_pooling_loss(cam_rv, label_map) == pytest.approx(10 / 5)
    # with every class present no zero from an absent class is in the max: relu clips -5..-1
    every_class = losses.label_map_with_background(torch.ones(1, C - 1))
    assert losses.adaptive_min_pooling_loss(cam_rv - 5, every_class) == pytest.approx((0 + 0 + 0 + 0 + 0) / 5)
    assert losses.adaptive_min_pooling_loss(cam_rv - 3, every_class) == pytest.approx((0 + 0 + 0 + 0 + 1) / 5)


def test_weighted_normalized_map_matches_formula():
    maps = random_maps(2)
    weight = torch.tensor([0.25, 0.6])
    label = naive_label()
    actual = losses.weighted_normalized_map(maps, losses.label_map_with_background(label), weight)
    assert_close(actual, naive_weighted(maps, label, weight))


def test_tcp_loss_matches_formula_and_detaches_patch_cams():
    views = normalized_views(4)
    actual = losses.tcp_loss(*views)
    expected = naive_tcp(*views)
    assert_close(actual, expected)
    actual_grads = torch.autograd.grad(actual, views, allow_unused=True, materialize_grads=True)
    expected_grads = torch.autograd.grad(expected, views, allow_unused=True, materialize_grads=True)
    for actual_grad, expected_grad in zip(actual_grads, expected_grads):
        assert_close(actual_grad, expected_grad)
    cam_full, cam_kept, cam_hidden, rv_full, rv_kept, rv_hidden = actual_grads
    assert not cam_kept.any() and not cam_hidden.any()
    for grad in (cam_full, rv_full, rv_kept, rv_hidden):
        assert grad[:, 1:].abs().sum() > 0
        assert not grad[:, 0].any()  # channel 0 plays no part in L_tcp


def test_background_from_foreground_matches_formula():
    maps = random_maps(5)
    assert_close(losses.background_from_foreground(maps), naive_background(maps))


def test_background_gradient_goes_through_the_foreground_max():
    maps = torch.rand(N, C, H, W, generator=torch.Generator().manual_seed(6), requires_grad=True)
    (grad,) = torch.autograd.grad(losses.background_from_foreground(maps)[:, 0].sum(), maps)
    assert not grad[:, 0].any()
    assert torch.equal(grad[:, 1:].sum(dim=1), torch.full((N, H, W), -1.0))


@pytest.mark.parametrize("ratio", [0.2, 0.05, 0.5, 1.0])
def test_ohem_matches_formula(ratio):
    errors = random_maps(8).abs()
    assert_close(losses.ohem_mean(errors, ratio), naive_ohem(errors, ratio))


def test_ohem_takes_int_of_21_h_w_ratio_entries_per_image():
    # 21·5·4·0.2 = 84 entries per image. Image 0 has 84 ones (mean 1 if exactly 84 are taken),
    # image 1 has 42 twos (the other 42 taken are zeros).
    errors = torch.zeros(N, C, H, W)
    errors[0].view(-1)[:84] = 1
    errors[1].view(-1)[-42:] = 2
    assert losses.ohem_mean(errors) == pytest.approx((84 * 1 + 42 * 2) / (2 * 84))
    errors[0].view(-1)[84] = 1  # an 85th one is not taken
    assert losses.ohem_mean(errors) == pytest.approx((84 * 1 + 42 * 2) / (2 * 84))
    assert losses.OHEM_RATIO == 0.2


def test_cpcr_errors_keep_tied_maxima_and_detach_the_cams():
    # small integers make ties over channels common
    generator = torch.Generator().manual_seed(9)
    cam_full, cam_kept, cam_hidden, rv_kept, rv_hidden = [
        torch.randint(0, 3, (N, C, H, W), generator=generator).float().requires_grad_() for _ in range(5)
    ]
    error1, error2 = losses.cpcr_errors(cam_full, cam_kept, cam_hidden, rv_kept, rv_hidden)
    target1 = naive_keepmax(cam_full.detach() - cam_kept.detach())
    target2 = naive_keepmax(cam_full.detach() - cam_hidden.detach())
    assert ((target1 != 0).sum(dim=1) > 1).any(), "the case should contain ties"
    assert_close(error1, (target1 - rv_hidden).abs())
    assert_close(error2, (target2 - rv_kept).abs())
    grads = torch.autograd.grad(
        error1.sum() + error2.sum(),
        [cam_full, cam_kept, cam_hidden, rv_kept, rv_hidden],
        allow_unused=True,
        materialize_grads=True,
    )
    assert not any(grad.any() for grad in grads[:3])
    assert grads[3].abs().sum() > 0 and grads[4].abs().sum() > 0


def test_cpcr_loss_matches_formula():
    views = normalized_views(10)
    cam_full, cam_kept, cam_hidden, _, rv_kept, rv_hidden = views
    actual = losses.cpcr_loss(cam_full, cam_kept, cam_hidden, rv_kept, rv_hidden)
    expected = naive_ohem((naive_keepmax(cam_full.detach() - cam_kept.detach()) - rv_hidden).abs()) + naive_ohem(
        (naive_keepmax(cam_full.detach() - cam_hidden.detach()) - rv_kept).abs()
    )
    assert_close(actual, expected)


# ---------------------------------------------------------------- cpn_loss


def cpn_loss_of(model, batch, **switches):
    """cpn_loss on the model's outputs for the batch's three views."""
    outputs = [model(batch[key]) for key in ("img", "img_kept", "img_hidden")]
    return losses.cpn_loss(outputs, batch["label"], batch["kept_fraction"], batch["hidden_fraction"], **switches)


def test_cpn_loss_matches_naive_composition():
    model = TinyCPN()
    batch = tiny_batch()
    result = cpn_loss_of(model, batch)
    actual_grads = torch.autograd.grad(
        result["loss"], list(model.parameters()), allow_unused=True, materialize_grads=True
    )

    outputs = [model(batch[key]) for key in ("img", "img_kept", "img_hidden")]
    cls, tcp, cpcr = naive_cpn_terms(outputs, batch["label"], batch["kept_fraction"], batch["hidden_fraction"])
    expected_grads = torch.autograd.grad(
        cls + tcp + cpcr, list(model.parameters()), allow_unused=True, materialize_grads=True
    )

    assert_close(result["loss_cls"], cls)
    assert_close(result["loss_tcp"], tcp)
    assert_close(result["loss_cpcr"], cpcr)
    assert_close(result["loss"], cls + tcp + cpcr)
    for actual_grad, expected_grad in zip(actual_grads, expected_grads):
        assert_close(actual_grad, expected_grad)


def test_cpn_loss_gradients_reach_each_view_as_spec_says():
    """With the network's outputs as leaves: L_tcp's cam term reaches only the full view's cam,
    E1/E2 reach only the patch views' cam_rv, and absent classes' cam_rv get nothing."""
    outputs = [(random_maps(20 + k, requires_grad=True), random_maps(30 + k, requires_grad=True)) for k in range(3)]
    label, kept_fraction, hidden_fraction = naive_label(), torch.tensor([0.4, 0.7]), torch.tensor([0.6, 0.3])
    result = losses.cpn_loss(outputs, label, kept_fraction, hidden_fraction)
    leaves = [tensor for pair in outputs for tensor in pair]
    expected_terms = dict(
        zip(("loss_cls", "loss_tcp", "loss_cpcr"), naive_cpn_terms(outputs, label, kept_fraction, hidden_fraction))
    )
    for key, expected_term in expected_terms.items():
        actual = torch.autograd.grad(result[key], leaves, retain_graph=True, allow_unused=True, materialize_grads=True)
        expected = torch.autograd.grad(
            expected_term, leaves, retain_graph=True, allow_unused=True, materialize_grads=True
        )
        for actual_grad, expected_grad in zip(actual, expected):
            assert_close(actual_grad, expected_grad)
        if key == "loss_cpcr":
            cam_full, rv_full, cam_kept, rv_kept, cam_hidden, rv_hidden = actual
            assert not cam_full.any() and not cam_kept.any() and not cam_hidden.any() and not rv_full.any()
            assert rv_kept.abs().sum() > 0 and rv_hidden.abs().sum() > 0
        if key == "loss_tcp":
            cam_full, rv_full, cam_kept, rv_kept, cam_hidden, rv_hidden = actual
            assert not cam_kept.any() and not cam_hidden.any()
            assert cam_full.abs().sum() > 0
    (rv_grad,) = torch.autograd.grad(result["loss"], [outputs[0][1]])
    for n in range(N):
        for channel in range(1, C):
            if channel not in PRESENT[n]:
                assert not rv_grad[n, channel].any()


def test_cpn_loss_switches_zero_their_terms_only():
    model = TinyCPN()
    batch = tiny_batch()
    full = cpn_loss_of(model, batch)
    for switches, zeroed in (({"use_tcp": False}, "loss_tcp"), ({"use_cpcr": False}, "loss_cpcr")):
        result = cpn_loss_of(model, batch, **switches)
        assert result[zeroed].item() == 0 and full[zeroed].item() > 0
        kept = {"loss_cls", "loss_tcp", "loss_cpcr"} - {zeroed}
        for key in kept:
            assert_close(result[key], full[key])
        assert_close(result["loss"], sum(result[key] for key in kept))
    neither = cpn_loss_of(model, batch, use_tcp=False, use_cpcr=False)
    assert_close(neither["loss"], full["loss_cls"])


def test_cpn_loss_ohem_ratio_is_passed_on():
    model = TinyCPN()
    batch = tiny_batch()
    outputs = [model(batch[key]) for key in ("img", "img_kept", "img_hidden")]
    _, _, cpcr = naive_cpn_terms(
        outputs, batch["label"], batch["kept_fraction"], batch["hidden_fraction"], ohem_ratio=0.5
    )
    assert_close(cpn_loss_of(model, batch, ohem_ratio=0.5)["loss_cpcr"], cpcr)


def test_cpn_loss_is_float32_under_autocast():
    model = TinyCPN()
    batch = tiny_batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(batch["img"])[0].dtype == torch.bfloat16
        result = cpn_loss_of(model, batch)
    assert all(value.dtype == torch.float32 for value in result.values())
