"""network/: ResNet-38 backbone, CPN head and baseline, checked against SPEC §1-2.

The CPN steps are compared with slow loop versions written from SPEC's text below; the
networks are built once per module (about 105 M parameters each)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from engine.errors import UserError
from network import build_network, mxnet_params, resnet38_cls, resnet38_CPN, resnet38d

# ---------------------------------------------------------------- SPEC §1 table, retyped

# (first block name, number of blocks, in, mid, out, stride, first-conv dilation of the
# first block, dilation elsewhere)
SPEC_BASIC_STAGES = [
    ("b2", 3, 64, 128, 128, 2, 1, 1),
    ("b3", 3, 128, 256, 256, 2, 1, 1),
    ("b4", 6, 256, 512, 512, 2, 1, 1),
    ("b5", 3, 512, 512, 1024, 1, 1, 2),
]
SPEC_BOTTLENECKS = [("b6", 1024, 2048, 4), ("b7", 2048, 4096, 4)]
SPEC_HEAD_SHAPES = {
    "fc8.weight": (21, 4096, 1, 1),
    "f8_3.weight": (64, 512, 1, 1),
    "f8_4.weight": (128, 1024, 1, 1),
    "f9.weight": (192, 195, 1, 1),
    "f10.weight": (192, 195, 1, 1),
}
BN_SUFFIXES = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def spec_backbone_convs():
    """{conv name: (weight shape, stride, dilation)} of every convolution in SPEC §1."""
    convs = {"conv1a": ((64, 3, 3, 3), 1, 1)}
    for stage, count, cin, mid, cout, stride, first_dilation, dilation in SPEC_BASIC_STAGES:
        for index in range(count):
            name = stage if index == 0 else f"{stage}_{index}"
            block_in = cin if index == 0 else cout
            block_stride = stride if index == 0 else 1
            convs[f"{name}.conv_branch2a"] = (
                (mid, block_in, 3, 3),
                block_stride,
                first_dilation if index == 0 else dilation,
            )
            convs[f"{name}.conv_branch2b1"] = ((cout, mid, 3, 3), 1, dilation)
            if block_in != cout or block_stride != 1:
                convs[f"{name}.conv_branch1"] = ((cout, block_in, 1, 1), block_stride, 1)
    for name, cin, cout, dilation in SPEC_BOTTLENECKS:
        convs[f"{name}.conv_branch2a"] = ((cout // 4, cin, 1, 1), 1, 1)
        convs[f"{name}.conv_branch2b1"] = ((cout // 2, cout // 4, 3, 3), 1, dilation)
        convs[f"{name}.conv_branch2b2"] = ((cout, cout // 2, 1, 1), 1, 1)
        convs[f"{name}.conv_branch1"] = ((cout, cin, 1, 1), 1, 1)
    return convs


def spec_backbone_bns():
    """{batch-norm name: channels} of SPEC §1: before each conv_branch2a/2b1/2b2, and bn7."""
    bns = {}
    for name, (shape, _, _) in spec_backbone_convs().items():
        block, _, conv = name.partition(".")
        if conv in ("conv_branch2a", "conv_branch2b1", "conv_branch2b2"):
            bns[f"{block}.bn_{conv.removeprefix('conv_')}"] = shape[1]
    bns["bn7"] = 4096
    return bns


def spec_state_dict_shapes(head_shapes):
    shapes = {f"{name}.weight": shape for name, (shape, _, _) in spec_backbone_convs().items()}
    for name, channels in spec_backbone_bns().items():
        for suffix in BN_SUFFIXES:
            shapes[f"{name}.{suffix}"] = () if suffix == "num_batches_tracked" else (channels,)
    shapes.update(head_shapes)
    return shapes


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def cpn_net():
    torch.manual_seed(0)
    net = resnet38_CPN.Net().eval()
    randomise_bn_statistics(net)
    return net


@pytest.fixture(scope="module")
def cls_net():
    torch.manual_seed(1)
    return resnet38_cls.Net().eval()


def randomise_bn_statistics(net):
    """Non-trivial BN statistics, so eval-mode BN is not the identity and a train-mode
    update of them would show."""
    generator = torch.Generator().manual_seed(2)
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            size = module.num_features
            module.running_mean.copy_(0.1 * torch.randn(size, generator=generator))
            module.running_var.copy_(0.5 + torch.rand(size, generator=generator))
            module.weight.data.copy_(0.5 + torch.rand(size, generator=generator))
            module.bias.data.copy_(0.1 * torch.randn(size, generator=generator))


@pytest.fixture(scope="module")
def odd_outputs(cpn_net):
    torch.manual_seed(3)
    x = torch.randn(1, 3, 61, 83)
    with torch.no_grad():
        return x, cpn_net.forward_as_dict(x), cpn_net(x)


# ---------------------------------------------------------------- backbone


def test_state_dict_has_exactly_the_spec_names_and_shapes(cpn_net):
    expected = spec_state_dict_shapes(SPEC_HEAD_SHAPES)
    actual = {name: tuple(value.shape) for name, value in cpn_net.state_dict().items()}
    assert sorted(actual) == sorted(expected)
    assert actual == expected
    for literal in (
        "conv1a.weight",
        "b2.bn_branch2a.weight",
        "b2.conv_branch1.weight",
        "b4_3.conv_branch2b1.weight",
        "b4_3.bn_branch2a.running_mean",
        "b5_1.bn_branch2a.bias",
        "b6.conv_branch2b2.weight",
        "bn7.bias",
        "bn7.running_var",
        "f10.weight",
    ):
        assert literal in actual
    assert "b2_1.conv_branch1.weight" not in actual


def test_convolutions_follow_the_spec_table(cpn_net):
    modules = dict(cpn_net.named_modules())
    for name, (_, stride, dilation) in spec_backbone_convs().items():
        conv = modules[name]
        assert conv.bias is None, name
        assert conv.stride == (stride, stride), name
        assert conv.dilation == (dilation, dilation), name
        assert conv.padding == ((dilation, dilation) if conv.kernel_size == (3, 3) else (0, 0)), name
    for name in SPEC_HEAD_SHAPES:
        assert modules[name.removesuffix(".weight")].bias is None
    assert modules["b6.dropout_2b1"].p == modules["b6.dropout_2b2"].p == 0.3
    assert modules["b7.dropout_2b1"].p == modules["b7.dropout_2b2"].p == 0.5
    assert isinstance(modules["b6.dropout_2b1"], nn.Dropout2d)
    assert isinstance(cpn_net.dropout7, nn.Dropout2d) and cpn_net.dropout7.p == 0.5
    assert all(m.eps == 1e-5 for m in cpn_net.modules() if isinstance(m, nn.BatchNorm2d))


def test_features_have_stride_8_for_odd_inputs(odd_outputs):
    _, features, _ = odd_outputs
    assert features["conv4"].shape == (1, 512, 8, 11)  # ceil(61 / 8), ceil(83 / 8)
    assert features["conv5"].shape == (1, 1024, 8, 11)
    assert features["conv6"].shape == (1, 4096, 8, 11)
    assert (features["conv6"] >= 0).all() and (features["conv4"] >= 0).all()


def test_conv4_and_conv5_are_the_activated_inputs_of_b5_and_b6(cpn_net):
    x = torch.randn(1, 3, 24, 24)
    captured = {}
    handles = [
        getattr(cpn_net, name).bn_branch2a.register_forward_hook(
            lambda module, inputs, output, name=name: captured.__setitem__(name, F.relu(output))
        )
        for name in ("b5", "b6")
    ]
    try:
        with torch.no_grad():
            features = cpn_net.forward_as_dict(x)
    finally:
        for handle in handles:
            handle.remove()
    torch.testing.assert_close(features["conv4"], captured["b5"], rtol=0, atol=0)
    torch.testing.assert_close(features["conv5"], captured["b6"], rtol=0, atol=0)


def test_train_mode_freezes_bn_and_early_layers(cpn_net):
    bn_state = {name: value.clone() for name, value in cpn_net.state_dict().items() if "bn" in name}
    try:
        cpn_net.train()
        assert all(not m.training for m in cpn_net.modules() if isinstance(m, nn.BatchNorm2d))
        assert cpn_net.dropout7.training and cpn_net.b6.dropout_2b1.training
        cam, cam_rv = cpn_net(torch.randn(2, 3, 32, 32))
        (cam.square().sum() + cam_rv.sum()).backward()
        for name, parameter in cpn_net.named_parameters():
            frozen = name.split(".")[0] in ("conv1a", "b2", "b2_1", "b2_2") or ".bn" in name or name.startswith("bn7")
            assert parameter.requires_grad != frozen, name
            assert (parameter.grad is None) == frozen, name
        for layer in ("b3", "b3_2", "b4_5", "b5", "b7", "fc8", "f8_3", "f8_4", "f9", "f10"):
            grads = [p.grad.abs().sum() for p in getattr(cpn_net, layer).parameters() if p.grad is not None]
            assert grads and sum(grads) > 0, layer
        for name, value in cpn_net.state_dict().items():
            if "bn" in name:
                torch.testing.assert_close(value, bn_state[name], rtol=0, atol=0)
    finally:
        cpn_net.eval()
        cpn_net.zero_grad(set_to_none=True)


def test_parameter_groups(cpn_net, cls_net):
    groups = cpn_net.get_parameter_groups()
    assert len(groups) == 4 and groups.pretrained_biases == [] and groups.new_biases == []
    names = {id(p): n for n, p in cpn_net.named_parameters()}
    assert sorted(names[id(p)] for p in groups.new_weights) == sorted(SPEC_HEAD_SHAPES)
    expected_pretrained = {
        f"{name}.weight" for name in spec_backbone_convs() if name.split(".")[0] not in ("conv1a", "b2", "b2_1", "b2_2")
    }
    pretrained = [names[id(p)] for p in groups.pretrained_weights]
    assert len(pretrained) == len(set(pretrained)) and set(pretrained) == expected_pretrained
    trainable = {n for n, p in cpn_net.named_parameters() if p.requires_grad}
    assert trainable == expected_pretrained | set(SPEC_HEAD_SHAPES)
    cls_groups = cls_net.get_parameter_groups()
    assert len(cls_groups.new_weights) == 1 and cls_groups.new_weights[0] is cls_net.fc8.weight
    assert len(cls_groups.pretrained_weights) == len(expected_pretrained)


def test_convert_mxnet_to_torch_is_reexported():
    assert resnet38d.convert_mxnet_to_torch is mxnet_params.convert_mxnet_to_torch


# ---------------------------------------------------------------- SPEC §2 steps, as loops


def loop_class_probability_map(cam):
    """SPEC §2 step 2, element by element in float64."""
    cam = cam.double().numpy()
    n_images, channels, h, w = cam.shape
    p = np.zeros_like(cam)
    for n in range(n_images):
        for c in range(channels):
            m = max(max(v, 0.0) for v in cam[n, c].ravel()) + 1e-5
            for i in range(h):
                for j in range(w):
                    p[n, c, i, j] = max(max(cam[n, c, i, j], 0.0) - 1e-5, 0.0) / m
        for i in range(h):
            for j in range(w):
                fg_max = max(p[n, c, i, j] for c in range(1, channels))
                p[n, 0, i, j] = 1 - fg_max
                for c in range(1, channels):
                    if p[n, c, i, j] < fg_max:
                        p[n, c, i, j] = 0.0
    return p


def loop_context(p, g):
    """SPEC §2 step 4: q = softmax over positions per channel; context[c, k] = Σ q[k]·g[c]."""
    n_images, classes, h, w = p.shape
    channels = g.shape[1]
    p, g = p.reshape(n_images, classes, h * w), g.reshape(n_images, channels, h * w)
    context = np.zeros((n_images, channels, classes, 1))
    for n in range(n_images):
        for k in range(classes):
            exps = [math.exp(v) for v in p[n, k]]
            q = [e / sum(exps) for e in exps]
            for c in range(channels):
                context[n, c, k, 0] = sum(q[pos] * g[n, c, pos] for pos in range(h * w))
    return context


def loop_prcm(context, v, w10, key_layout):
    """SPEC §2 step 5 with 1×1 conv f10 (weight w10, D×C) written out; key_layout(k, a, b)
    reads the N×K×D key at row a, column b from k = relu(f10(context)) of shape D×K."""
    n_images, channels, classes, _ = context.shape
    d_channels, h, w = v.shape[1:]
    r = np.zeros((n_images, classes, h * w))
    for n in range(n_images):
        k = np.array(
            [[max(np.dot(w10[o], context[n, :, j, 0]), 0.0) for j in range(classes)] for o in range(d_channels)]
        )
        f = np.maximum(v[n].reshape(d_channels, h * w), 0.0)
        for a in range(classes):
            s = [sum(key_layout(k, a, b) * f[b, pos] for b in range(d_channels)) * 21**-0.5 for pos in range(h * w)]
            exps = [math.exp(x - max(s)) for x in s]
            r[n, a] = [e / sum(exps) for e in exps]
    return r.reshape(n_images, classes, h, w)


def view_layout(k, a, b):
    """Row-major reinterpretation of k (D×K) as K×D: element a*D + b of the flat memory."""
    d_channels, classes = k.shape
    flat = a * d_channels + b
    return k[flat // classes, flat % classes]


def transpose_layout(k, a, b):
    return k[b, a]


def loop_pcm(p, v):
    """SPEC §2 step 6, with explicit loops over positions."""
    n_images, classes, h, w = p.shape
    d_channels = v.shape[1]
    out = np.zeros((n_images, classes, h * w))
    for n in range(n_images):
        f = v[n].reshape(d_channels, h * w)
        f = np.stack([f[:, pos] / (math.sqrt(sum(x * x for x in f[:, pos])) + 1e-5) for pos in range(h * w)], axis=1)
        a = np.array([[max(np.dot(f[:, i], f[:, j]), 0.0) for j in range(h * w)] for i in range(h * w)])
        for j in range(h * w):
            a[:, j] /= sum(a[:, j]) + 1e-5
        pf = p[n].reshape(classes, h * w)
        for c in range(classes):
            for j in range(h * w):
                out[n, c, j] = sum(pf[c, i] * a[i, j] for i in range(h * w))
    return out.reshape(n_images, classes, h, w)


def tiny_cam():
    torch.manual_seed(4)
    cam = torch.randn(2, 21, 3, 3)
    cam[:, 2] = cam[:, 1]  # ties between two foreground classes
    cam[:, 3] = -cam[:, 3].abs()  # a class with no positive score
    return cam


def test_class_probability_map_matches_loops():
    cam = tiny_cam().requires_grad_()
    p = resnet38_CPN.class_probability_map(cam)
    assert not p.requires_grad
    np.testing.assert_allclose(p.numpy(), loop_class_probability_map(cam.detach()), rtol=1e-6, atol=1e-6)
    assert (p >= 0).all() and (p <= 1).all()
    assert torch.equal(p[:, 1] > 0, p[:, 2] > 0) and (p[:, 1] > 0).any()  # ties keep both
    assert (p[:, 3] == 0).all()


def test_context_prcm_and_pcm_match_loops():
    torch.manual_seed(5)
    p = resnet38_CPN.class_probability_map(tiny_cam())
    g = torch.randn(2, 5, 3, 3)
    v = torch.randn(2, 4, 3, 3)
    f10 = nn.Conv2d(5, 4, 1, bias=False)
    context = resnet38_CPN.class_region_context(p, g)
    assert context.shape == (2, 5, 21, 1)
    np.testing.assert_allclose(
        context.numpy(), loop_context(p.double().numpy(), g.double().numpy()), rtol=1e-5, atol=1e-6
    )
    with torch.no_grad():
        r = resnet38_CPN.prcm(context, v, f10)
    w10 = f10.weight.detach().double()[:, :, 0, 0].numpy()
    expected = loop_prcm(context.double().numpy(), v.double().numpy(), w10, view_layout)
    np.testing.assert_allclose(r.numpy(), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(r.sum(dim=(2, 3)).numpy(), 1, rtol=1e-5)
    np.testing.assert_allclose(
        resnet38_CPN.pcm(p, v).numpy(), loop_pcm(p.double().numpy(), v.double().numpy()), rtol=1e-5, atol=1e-6
    )


def test_prcm_keys_are_a_view_not_a_transpose():
    """SPEC §2 step 5 quirk: with a transpose the result would differ."""
    torch.manual_seed(6)
    context = torch.rand(1, 5, 21, 1)
    v = torch.randn(1, 4, 3, 3)
    f10 = nn.Conv2d(5, 4, 1, bias=False)
    w10 = f10.weight.detach().double()[:, :, 0, 0].numpy()
    with torch.no_grad():
        r = resnet38_CPN.prcm(context, v, f10).double().numpy()
    as_view = loop_prcm(context.double().numpy(), v.double().numpy(), w10, view_layout)
    as_transpose = loop_prcm(context.double().numpy(), v.double().numpy(), w10, transpose_layout)
    np.testing.assert_allclose(r, as_view, rtol=1e-5, atol=1e-7)
    assert np.abs(as_view - as_transpose).max() > 1e-2
    keys = torch.arange(2 * 4 * 21.0).reshape(2, 4, 21, 1)
    assert torch.equal(resnet38_CPN.reference_key_layout(keys), keys.contiguous().view(2, 21, 4))
    assert torch.equal(
        resnet38_CPN.reference_key_layout(keys.to(memory_format=torch.channels_last)), keys.contiguous().view(2, 21, 4)
    )


# ---------------------------------------------------------------- CPN forward


def test_cpn_forward_on_odd_input(odd_outputs):
    _, _, (cam, cam_rv) = odd_outputs
    assert cam.shape == cam_rv.shape == (1, 21, 61, 83)
    assert cam.dtype == cam_rv.dtype == torch.float32
    assert torch.isfinite(cam).all() and torch.isfinite(cam_rv).all()
    # pcm ∈ [0, max p] and r·p ∈ [0, 1]; bilinear resizing keeps the bounds.
    assert (cam_rv >= 0).all() and (cam_rv <= 2).all() and cam_rv.max() > 0


def run_capturing_head_layers(net, x):
    """net(x), plus (input, output) of each head convolution as the forward saw them."""
    captured = {}
    handles = [
        getattr(net, name).register_forward_hook(
            lambda module, inputs, output, name=name: captured.__setitem__(name, (inputs[0], output))
        )
        for name in ("fc8", "f8_3", "f8_4", "f9", "f10")
    ]
    try:
        with torch.no_grad():
            outputs = net(x)
    finally:
        for handle in handles:
            handle.remove()
    return outputs, captured


def spec_refinement(net, x, small_cam, conv4, conv5):
    """SPEC §2 steps 2-8 in float64 from the stride-8 cam and features, with the loop
    versions of steps 2, 4, 5 and 6."""

    def conv(layer, features):
        return F.conv2d(features.double(), layer.weight.detach().double())

    h, w = small_cam.shape[2:]
    with torch.no_grad():
        g = torch.cat(
            [
                F.interpolate(x.double(), (h, w), mode="bilinear", align_corners=True),
                F.relu(conv(net.f8_3, conv4)),
                F.relu(conv(net.f8_4, conv5)),
            ],
            1,
        )
        v = conv(net.f9, g).numpy()
    p = loop_class_probability_map(small_cam)
    context = loop_context(p, g.numpy())
    w10 = net.f10.weight.detach().double()[:, :, 0, 0].numpy()
    final = loop_pcm(p, v) + loop_prcm(context, v, w10, view_layout) * p
    return F.interpolate(torch.from_numpy(final), x.shape[2:], mode="bilinear", align_corners=True)


def test_cpn_forward_composes_the_spec_steps(cpn_net):
    """The whole of SPEC §2 steps 1-8 against the loop versions."""
    torch.manual_seed(7)
    x = torch.randn(1, 3, 19, 27)  # h×w = 3×4
    (cam, cam_rv), captured = run_capturing_head_layers(cpn_net, x)
    with torch.no_grad():
        features = cpn_net.forward_as_dict(x)
    small_cam = captured["fc8"][1]
    torch.testing.assert_close(captured["fc8"][0], features["conv6"], rtol=0, atol=0)  # eval: no dropout
    torch.testing.assert_close(
        cam, F.interpolate(small_cam, (19, 27), mode="bilinear", align_corners=True), rtol=0, atol=0
    )
    expected_rv = spec_refinement(cpn_net, x, small_cam, features["conv4"], features["conv5"])
    torch.testing.assert_close(cam_rv.double(), expected_rv, rtol=1e-4, atol=1e-5)


def test_cpn_forward_with_channels_last(cpn_net):
    torch.manual_seed(8)
    x = torch.randn(1, 3, 32, 40)
    with torch.no_grad():
        cam, cam_rv = cpn_net(x)
        cam_cl, cam_rv_cl = cpn_net(x.to(memory_format=torch.channels_last))
        try:
            cpn_net.to(memory_format=torch.channels_last)
            cam_model_cl, cam_rv_model_cl = cpn_net(x.to(memory_format=torch.channels_last))
        finally:
            cpn_net.to(memory_format=torch.contiguous_format)
    for other_cam, other_rv in ((cam_cl, cam_rv_cl), (cam_model_cl, cam_rv_model_cl)):
        torch.testing.assert_close(other_cam, cam, rtol=1e-4, atol=1e-5 * cam.abs().max().item())
        torch.testing.assert_close(other_rv, cam_rv, rtol=1e-4, atol=1e-5)


def test_cpn_forward_under_bf16_autocast_refines_in_float32(cpn_net):
    """The backbone and fc8 run in bf16; steps 2-8 in float32, so they match the float64
    loops fed with the same bf16 cam and features."""
    torch.manual_seed(8)
    x = torch.randn(1, 3, 32, 40)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        (cam, cam_rv), captured = run_capturing_head_layers(cpn_net, x)
    small_cam = captured["fc8"][1]
    assert small_cam.dtype == torch.bfloat16
    assert cam.dtype == cam_rv.dtype == torch.float32
    assert all(captured[name][1].dtype == torch.float32 for name in ("f8_3", "f8_4", "f9", "f10"))
    torch.testing.assert_close(
        cam, F.interpolate(small_cam.float(), x.shape[2:], mode="bilinear", align_corners=True), rtol=0, atol=0
    )
    expected_rv = spec_refinement(cpn_net, x, small_cam, captured["f8_3"][0], captured["f8_4"][0])
    torch.testing.assert_close(cam_rv.double(), expected_rv, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- baseline


def test_baseline_cam_is_the_classifier_at_each_position(cls_net):
    torch.manual_seed(9)
    x = torch.randn(2, 3, 24, 32)
    with torch.no_grad():
        conv6 = cls_net.forward_as_dict(x)["conv6"].double().numpy()
        cam = cls_net.forward_cam(x)
        logits = cls_net(x)
    weight = cls_net.fc8.weight.detach().double()[:, :, 0, 0].numpy()
    n_images, _, h, w = conv6.shape
    expected_cam = np.zeros((n_images, 20, h, w))
    expected_logits = np.zeros((n_images, 20))
    for n in range(n_images):
        pooled = conv6[n].reshape(4096, -1).mean(axis=1)
        for k in range(20):
            expected_logits[n, k] = np.dot(weight[k], pooled)
            for i in range(h):
                for j in range(w):
                    expected_cam[n, k, i, j] = max(np.dot(weight[k], conv6[n, :, i, j]), 0.0)
    assert cam.shape == (2, 20, 3, 4) and logits.shape == (2, 20)
    np.testing.assert_allclose(cam.numpy(), expected_cam, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(logits.numpy(), expected_logits, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------- build_network


@pytest.mark.parametrize(
    "name, cls",
    [
        ("network.resnet38_CPN", resnet38_CPN.Net),
        ("resnet38_CPN", resnet38_CPN.Net),
        ("network.resnet38_cls", resnet38_cls.Net),
    ],
)
def test_build_network(name, cls):
    assert type(build_network(name)) is cls


def test_build_network_unknown_name():
    with pytest.raises(UserError, match="network.resnet38_CPN, network.resnet38_cls"):
        build_network("network.resnet50")
