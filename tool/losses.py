"""CPN training loss (SPEC §4) as pure functions of tensors (IRN's, SPEC-IRN §6, is in tool/irn.py).

Shapes: N images, C = 21 channels (0 = background), H×W the maps' size (the input size:
the network returns its maps resized to the input). `label` is the N×20 multi-hot class
vector; `label_map` is the N×21×1×1 form with channel 0 = 1 that the maps are masked with.
The three views of one batch are the full image, the kept patches (`img_kept`, weight
`kept_fraction`) and the hidden patches (`img_hidden`, weight `hidden_fraction`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

MAX_NORM_EPSILON = 1e-5  # SPEC §4: max_norm's ε
OHEM_RATIO = 0.2  # SPEC §4: L_cpcr averages the hardest 20% of the entries per image


def max_norm(p: torch.Tensor) -> torch.Tensor:
    """SPEC §4: relu, then per (n, channel) relu(p − min − ε) / (max − min + ε) over
    the H×W positions of an N×C×H×W tensor; values in [0, 1)."""
    p = F.relu(p)
    flat = p.flatten(2)
    min_value = flat.min(dim=-1).values[..., None, None]
    max_value = flat.max(dim=-1).values[..., None, None]
    return F.relu(p - min_value - MAX_NORM_EPSILON) / (max_value - min_value + MAX_NORM_EPSILON)


def keepmax(z: torch.Tensor) -> torch.Tensor:
    """SPEC §4: per pixel of an N×C×H×W tensor keep the values equal to the max over
    channels (ties keep all), set the others to 0 (the value is kept, not 1)."""
    return torch.where(z == z.max(dim=1, keepdim=True).values, z, torch.zeros_like(z))


def label_map_with_background(label: Tensor) -> Tensor:
    """SPEC §4 L: N×20 multi-hot → N×21×1×1 float with channel 0 (background) = 1."""
    label = label.float()
    background = label.new_ones(label.shape[0], 1)
    return torch.cat((background, label), dim=1)[:, :, None, None]


def classification_loss(cam: Tensor, label: Tensor) -> Tensor:
    """SPEC §4 cls_k: multilabel soft margin of GAP(cam)[:, 1:] against the label.

    cam N×21×H×W, label N×20 → scalar (mean over the N·20 entries)."""
    class_scores = cam[:, 1:].mean(dim=(2, 3))
    return F.multilabel_soft_margin_loss(class_scores, label.float())


def adaptive_min_pooling_loss(cam_rv: Tensor, label_map: Tensor) -> Tensor:
    """SPEC §4 min_k: on (cam_rv·L)[:, 1:] take the per-pixel max over channels, the
    H·W // 4 smallest of those per image, relu, and sum / (count · N).

    cam_rv N×21×H×W, label_map N×21×1×1 → scalar."""
    batch, _, height, width = cam_rv.shape
    count = height * width // 4
    pixel_max = (cam_rv * label_map)[:, 1:].max(dim=1).values.flatten(1)
    smallest = pixel_max.topk(count, dim=1, largest=False).values
    return F.relu(smallest).sum() / (count * batch)


def weighted_normalized_map(maps: Tensor, label_map: Tensor, weight: Tensor) -> Tensor:
    """SPEC §4 A, B (weight 1), A1, B1 (weight c), A2, B2 (weight u): max_norm(maps)·L·weight.

    maps N×21×H×W, label_map N×21×1×1, weight length-N (one per image) → N×21×H×W."""
    return max_norm(maps) * label_map * weight.float().view(-1, 1, 1, 1)


def tcp_loss(
    cam_full: Tensor, cam_kept: Tensor, cam_hidden: Tensor, rv_full: Tensor, rv_kept: Tensor, rv_hidden: Tensor
) -> Tensor:
    """SPEC §4 L_tcp = mean|A2 + A1 - A| + mean|B - B1 - B2| over the foreground channels 1..20.

    In the first term A1, A2 (cam_kept, cam_hidden) are detached: only the full view's cam
    learns from the patch views. The second term keeps every gradient. Inputs N×21×H×W,
    the weighted maps of `weighted_normalized_map` before the background replacement;
    each mean is over all N·20·H·W entries. → scalar."""
    cam_term = (cam_hidden[:, 1:].detach() + cam_kept[:, 1:].detach() - cam_full[:, 1:]).abs().mean()
    rv_term = (rv_full[:, 1:] - rv_kept[:, 1:] - rv_hidden[:, 1:]).abs().mean()
    return cam_term + rv_term


def background_from_foreground(maps: Tensor) -> Tensor:
    """SPEC §4: channel 0 becomes 1 - (max over channels 1..20); the others are unchanged.

    N×21×H×W → N×21×H×W (a new tensor; gradients flow into channels 1..20 through the max)."""
    foreground = maps[:, 1:]
    background = 1 - foreground.max(dim=1, keepdim=True).values
    return torch.cat((background, foreground), dim=1)


def ohem_mean(errors: Tensor, ratio: float = OHEM_RATIO) -> Tensor:
    """SPEC §4 OHEM: per image the largest int(C·H·W·ratio) entries of `errors`, and the
    mean of all N·count selected entries.

    errors N×C×H×W → scalar."""
    batch, channels, height, width = errors.shape
    count = int(channels * height * width * ratio)
    assert count >= 1, f"OHEM ratio {ratio} selects no entry of a {channels}×{height}×{width} map"
    return errors.reshape(batch, -1).topk(count, dim=1).values.mean()


def cpcr_errors(
    cam_full: Tensor, cam_kept: Tensor, cam_hidden: Tensor, rv_kept: Tensor, rv_hidden: Tensor
) -> tuple[Tensor, Tensor]:
    """SPEC §4 E1 = |keepmax(A - A1) - B2|, E2 = |keepmax(A - A2) - B1| with A, A1, A2
    detached: the targets come from the cams, the gradient goes to the patch views' cam_rv.

    Inputs N×21×H×W after `background_from_foreground` → (E1, E2), each N×21×H×W."""
    cam_full = cam_full.detach()
    error_kept_target = (keepmax(cam_full - cam_kept.detach()) - rv_hidden).abs()
    error_hidden_target = (keepmax(cam_full - cam_hidden.detach()) - rv_kept).abs()
    return error_kept_target, error_hidden_target


def cpcr_loss(
    cam_full: Tensor,
    cam_kept: Tensor,
    cam_hidden: Tensor,
    rv_kept: Tensor,
    rv_hidden: Tensor,
    ohem_ratio: float = OHEM_RATIO,
) -> Tensor:
    """SPEC §4 L_cpcr = ohem(E1) + ohem(E2); inputs as `cpcr_errors` → scalar."""
    error_kept_target, error_hidden_target = cpcr_errors(cam_full, cam_kept, cam_hidden, rv_kept, rv_hidden)
    return ohem_mean(error_kept_target, ohem_ratio) + ohem_mean(error_hidden_target, ohem_ratio)


def cpn_loss(
    outputs: Sequence[tuple[Tensor, Tensor]],
    label: Tensor,
    kept_fraction: Tensor,
    hidden_fraction: Tensor,
    *,
    use_tcp: bool = True,
    use_cpcr: bool = True,
    ohem_ratio: float = OHEM_RATIO,
) -> dict[str, Tensor]:
    """SPEC §4 training loss of one batch: loss = L_cls + L_tcp + L_cpcr.

    outputs: the network's (cam, cam_rv) for the full image, its kept patches and its hidden
    patches, each N×21×H×W; label N×20 multi-hot; kept_fraction, hidden_fraction length N
    (c and u of each image). The terms are computed in float32 whatever precision the network
    ran in. A disabled term (use_tcp / use_cpcr False) is reported as a zero.
    → dict(loss, loss_cls, loss_tcp, loss_cpcr) of scalars."""
    label_map = label_map_with_background(label)
    view_weights = (torch.ones_like(kept_fraction), kept_fraction, hidden_fraction)

    cls_terms, min_terms, cam_maps, rv_maps = [], [], [], []
    for (cam, cam_rv), weight in zip(outputs, view_weights):
        cam, cam_rv = cam.float(), cam_rv.float()
        cls_terms.append(classification_loss(cam, label))
        min_terms.append(adaptive_min_pooling_loss(cam_rv, label_map))
        cam_maps.append(weighted_normalized_map(cam, label_map, weight))
        rv_maps.append(weighted_normalized_map(cam_rv, label_map, weight))
    loss_cls = torch.stack(cls_terms).mean() + torch.stack(min_terms).mean()

    zero = loss_cls.new_zeros(())
    loss_tcp = tcp_loss(*cam_maps, *rv_maps) if use_tcp else zero
    if use_cpcr:
        # SPEC §4: the background replacement comes after L_tcp has used the maps.
        cam_full, cam_kept, cam_hidden = map(background_from_foreground, cam_maps)
        _, rv_kept, rv_hidden = map(background_from_foreground, rv_maps)
        loss_cpcr = cpcr_loss(cam_full, cam_kept, cam_hidden, rv_kept, rv_hidden, ohem_ratio)
    else:
        loss_cpcr = zero
    return {"loss": loss_cls + loss_tcp + loss_cpcr, "loss_cls": loss_cls, "loss_tcp": loss_tcp, "loss_cpcr": loss_cpcr}
