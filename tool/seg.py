"""The segmentation stage's method (SPEC_SEG §2-4), as pure functions of tensors and modules: the optimiser's
groups and schedule, the forward with BatchNorm statistics per group of images ("ghost BN", §3), the
cross-entropy normalised by a global pixel count, and the test-time multi-scale probabilities with the
image the CRF sees. No I/O, no device decisions (the caller's model and precision are used); the CRF itself is
tool/crf.py's."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from engine.datasets import IGNORE_INDEX
from engine.kernels import cross_entropy_sum
from engine.runtime import autocast
from tool.constants import IMAGENET_MEAN, IMAGENET_STD
from tool.optim import PolyOptimizer, cpn_param_groups

# SPEC_SEG §2: the reference's recipe (config.py, train.py).
SEG_LR = 0.001
SEG_MOMENTUM = 0.9  # a real momentum: SPEC §4's momentum quirk is CPN's, not this stage's
SEG_WEIGHT_DECAY = 5e-4
SEG_BATCH_SIZE = 10
SEG_STEPS = 20000
# SPEC_SEG §3: DataParallel on 2 GPUs gave each BatchNorm 5 of the 10 images; running stats kept GPU0's.
SEG_BN_GROUP = 5


def seg_param_groups(model: nn.Module, lr: float, weight_decay: float = SEG_WEIGHT_DECAY) -> list[dict]:
    """SPEC_SEG §2's SGD groups of `model.get_parameter_groups()`: every backbone convolution weight, conv1a
    included (lr, wd); other biases, none in DeepLab (2·lr, 0); conv_fov, conv_fov2, cls_conv weights
    (10·lr, wd); cls_conv.bias (20·lr, 0). Empty groups are left out.

    Quirk kept (SPEC_SEG §2, §5.5): the groups see only convolutions, so no BatchNorm weight or bias is in any
    group. They get gradients and never change: the backbone's γ/β stay ImageNet's, the head's 1/0. Their
    running statistics still follow the batches (§3). `parameters_left_out` names them for the run log."""
    return cpn_param_groups(model.get_parameter_groups()._asdict(), lr, weight_decay)


def parameters_left_out(model: nn.Module, sgd_groups: Sequence[dict]) -> list[str]:
    """Names of `model`'s trainable parameters in none of `sgd_groups`: under SPEC_SEG §2's quirk, every BN's."""
    grouped = {id(param) for group in sgd_groups for param in group["params"]}
    return [name for name, param in model.named_parameters() if param.requires_grad and id(param) not in grouped]


def seg_optimizer(
    model: nn.Module,
    lr: float = SEG_LR,
    total_steps: int = SEG_STEPS,
    weight_decay: float = SEG_WEIGHT_DECAY,
    momentum: float = SEG_MOMENTUM,
) -> PolyOptimizer:
    """SPEC_SEG §2: SGD whose lr before step t = 0…total_steps−1 is lr·(1 − t/(total_steps + 1))^0.9 times
    each group's multiplier: PolyOptimizer with max_step = total_steps + 1 (the reference's `max_itr + 1`)."""
    return PolyOptimizer(seg_param_groups(model, lr, weight_decay), lr, max_step=total_steps + 1, momentum=momentum)


@contextmanager
def running_statistics_frozen(model: nn.Module) -> Iterator[None]:
    """Inside, every BatchNorm of `model` normalises as it would (batch statistics in training mode, running
    ones in eval mode) but updates neither its running statistics nor its batch counter."""
    norms = [module for module in model.modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)]
    tracked = [norm.track_running_stats for norm in norms]
    for norm in norms:
        norm.track_running_stats = False  # read at every forward: no running buffers passed, none updated
    try:
        yield
    finally:
        for norm, was_tracked in zip(norms, tracked):
            norm.track_running_stats = was_tracked


def forward_in_bn_groups(model: nn.Module, images: torch.Tensor, bn_group: int = SEG_BN_GROUP) -> torch.Tensor:
    """SPEC_SEG §3 "ghost BN" in one process: `model` on consecutive groups of `bn_group` images, each
    BatchNorm normalising every group with that group's statistics, the running statistics updated by the
    first group alone (as DataParallel's GPU0 replica kept them); the outputs concatenated in order.
    With bn_group ≥ the batch this is one plain forward (DDP: each rank one group, rank 0's buffers
    broadcast, SPEC_SEG §3)."""
    groups = images.split(bn_group)
    outputs = [model(groups[0])]
    with running_statistics_frozen(model):
        outputs += [model(group) for group in groups[1:]]
    return torch.cat(outputs)


def valid_pixel_count(labels: torch.Tensor) -> torch.Tensor:
    """The pixels the loss counts: labels other than IGNORE_INDEX (an int64 0-d tensor, to all-reduce)."""
    return (labels != IGNORE_INDEX).sum()


def seg_loss(
    logits: torch.Tensor, labels: torch.Tensor, valid_pixels: int | torch.Tensor, world_size: int = 1
) -> torch.Tensor:
    """SPEC_SEG §2-3: the per-pixel cross-entropy (label 255 ignored) of N×K×H×W logits against N×H×W labels,
    summed and divided by `valid_pixels`, the valid-pixel count of the whole global batch, times `world_size`.
    Under DDP (which averages the ranks' gradients) each rank passing the all-reduced count gets the gradient
    of the reference's one mean over the global batch; the per-rank halves differ in valid pixels through the
    255 padding, so a per-rank mean would not. A batch with no valid pixel has loss 0 (the reference's mean is
    NaN)."""
    total = cross_entropy_sum(logits.float(), labels, IGNORE_INDEX)
    return total * world_size / torch.as_tensor(valid_pixels, device=total.device).clamp(min=1)


@torch.no_grad()
def multiscale_probabilities(
    model: nn.Module,
    scaled_images: Sequence[torch.Tensor],
    size,
    *,
    flip: bool = True,
    amp_dtype: torch.dtype | None = None,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> torch.Tensor:
    """SPEC_SEG §4: K×H×W float32 class probabilities of one image, on the model's device, from its scaled,
    normalised 3×h×w inputs: each input and (with `flip`, the reference's) its horizontal flip through `model` (in
    the mode the caller set: eval for the reference; under autocast with `amp_dtype`), each output resized
    bilinearly to `size` = (H, W) with align_corners=True, the flip undone, then the mean of the 2·S (or S) logit
    maps, then softmax, in float32. The pair goes through as one batch of 2 (eval-mode BN treats images alone)."""
    device = next(model.parameters()).device
    logit_maps = []
    for image in scaled_images:
        image = image.to(device, non_blocking=True)
        batch = (torch.stack([image, image.flip(-1)]) if flip else image[None]).contiguous(memory_format=memory_format)
        with autocast(device, amp_dtype):
            outputs = model(batch)
        outputs = F.interpolate(outputs.float(), size, mode="bilinear", align_corners=True)
        logit_maps += [outputs[:1], outputs[1:].flip(-1)] if flip else [outputs]
    return F.softmax(torch.cat(logit_maps).mean(dim=0, keepdim=True), dim=1)[0]


_MEAN = np.asarray(IMAGENET_MEAN, np.float32)
_STD = np.asarray(IMAGENET_STD, np.float32)


def seg_normalize(image: np.ndarray) -> np.ndarray:
    """SPEC_SEG §2 step 4 (and §4): H×W×3 RGB uint8 → float32 (x/255 − mean)/std, computed in float32 as the
    reference's ImageNorm (CPN's `tool.imutils.Normalize` computes in float64: the last bit can differ)."""
    return (np.asarray(image).astype(np.float32) / np.float32(255) - _MEAN) / _STD


def img_denorm(normalised: np.ndarray) -> np.ndarray:
    """SPEC_SEG §4: the CRF's image, H×W×3 uint8, from the unscaled 3×H×W normalised float32 input, computed as
    the reference's `img_denorm` in float32: x·std + mean, ×255, clipped to 0…255, truncated (not rounded) to
    uint8, so it differs from the original image (62/39/36 of the 256 R/G/B values come back one lower)."""
    image = (np.asarray(normalised, np.float32) * _STD[:, None, None] + _MEAN[:, None, None]) * np.float32(255)
    return np.ascontiguousarray(np.clip(image, 0, 255).astype(np.uint8).transpose(1, 2, 0))
