"""Load weights into a network: the one function every script uses; and write IRNet's weights for IRN.

Accepts a `.pth` state dict (plain, wrapped in {"state_dict": ...} or {"model": ...}, with or
without DataParallel's "module." prefix) or an MXNet `.params` file (SPEC §1). Checkpoints are
read with `weights_only=True`, so a file never runs code. The backbone must be complete and every
shape must match; head layers the file lacks (an ImageNet file) start from their initialisation
and are reported. What a file may name a tensor depends on the model (`CheckpointLayout`): the
ResNet-38 CAM nets read their own names; DeepLab (SPEC_SEG §1) its own (the reference's) and, for its
`backbone.`, an ImageNet ResNet-38's; IRNet (SPEC-IRN §1-2) reads its own, torchvision's ResNet-50
(`fc.*` ignored) and IRN's `res50_irn.pth`, which holds each tensor under several names. A file of another
network family (CPN weights given to DeepLab, or the reverse) is refused by name.

A file's width (network/__init__.py) is not stored beside its tensors, so the files stay plain state dicts that
the references load: `state_width` reads it from the first convolution's output channels, 64 at width 1. A file of
another width than the model's is refused; `load_network` builds the network at the width its file holds."""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from engine.datasets import DATASETS, VOC12, DatasetSpec
from engine.errors import UserError
from engine.fileio import atomic_path
from engine.runtime import on_cpu
from network import build_network, network_class, resnet38_aff, resnet38_deeplab, resnet38d, resnet50_irn
from network.mxnet_params import LIST_MAGIC, convert_mxnet_to_torch

# SPEC §1: the backbone's top-level layers, conv1a, b2 ... b7 (with their b4_3-style followers), bn7.
BACKBONE_KEY = re.compile(r"(?:conv1a|bn7|b[2-7](?:_[1-9][0-9]*)?)\.")
DEEPLAB_BACKBONE_PREFIX = "backbone."  # SPEC_SEG §1: the reference's DeepLab holds the ResNet-38 as `backbone`
# File keys that name another network family's file, so it is refused before any tensor is matched.
CAM_HEAD_KEY = re.compile(r"(?:fc8|f8_3|f8_4|f9|f10)\.")  # CPN's and the baseline's heads (SPEC §2)
CAM_CLASS_KEY = re.compile(r"(?:fc8|f10)\.")  # the CAM heads' layers AffinityNet's head (f8_3 … f9) lacks
AFF_KEY = re.compile(r"f8_5\.")  # AffinityNet's head (SPEC_AFF §1); no CAM head has it
RESNET50_KEY = re.compile(r"(?:resnet50\.)?(?:layer[1-4]|stage[2-5])\.")  # torchvision's, ours and IRN's names
DEEPLAB_KEY = re.compile(r"backbone\.(?:conv1a|bn7|b[2-7])|(?:cls_conv|conv_fov)\.")
# BatchNorm's update counter. MXNet files and the reference's converted ImageNet .pth lack it,
# and it is never used because every BN stays in eval mode (SPEC §1): a missing one keeps
# the model's value and is not reported.
OPTIONAL_SUFFIX = ".num_batches_tracked"
# Keys that trainers wrap around a whole state dict: nn.DataParallel / DistributedDataParallel, torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
WRAPPER_KEYS = ("state_dict", "model")


@dataclass(frozen=True)
class CheckpointLayout:
    """How the weights files of one family of networks name the model's tensors."""

    description: str  # what such a file is, for "not a ... checkpoint"
    backbone_key: re.Pattern  # model keys every file must supply
    checkpoint_names: Callable[[str], tuple[str, ...]]  # the names a model key may have in a file, preferred first
    first_conv: str  # model key of the first convolution's weight, whose output channels say the width
    # (file key pattern, what a file holding such a key is, what to pass instead): other families' files
    refused: tuple[tuple[re.Pattern, str, str], ...] = ()


CAM_NETWORK_FILE = "weights of a CAM network (CPN's or the baseline's fc8 head, train_cpn.py's output)"
RESNET50_FILE = "ResNet-50 weights (IRN's, or torchvision's)"
RESNET38_FILE_HINT = "pass an ImageNet ResNet-38 (ilsvrc-cls_rna-a1_cls1000_ep-0001.params or .pth)"
DEEPLAB_FILE = "DeepLab weights (network.resnet38_deeplab, the segmentation stage's)"
RESNET38_LAYOUT = CheckpointLayout(
    "ResNet-38",
    BACKBONE_KEY,
    lambda key: (key,),
    "conv1a.weight",
    refused=(
        (DEEPLAB_KEY, DEEPLAB_FILE, RESNET38_FILE_HINT),
        (RESNET50_KEY, RESNET50_FILE, RESNET38_FILE_HINT),
        (AFF_KEY, "AffinityNet weights (network.resnet38_aff, train_aff.py's output)", RESNET38_FILE_HINT),
    ),
)
DEEPLAB_LAYOUT = CheckpointLayout(
    "DeepLab ResNet-38 (an ImageNet ResNet-38, or a network.resnet38_deeplab checkpoint)",
    re.compile(re.escape(DEEPLAB_BACKBONE_PREFIX)),
    lambda key: (key, key.removeprefix(DEEPLAB_BACKBONE_PREFIX)) if key.startswith(DEEPLAB_BACKBONE_PREFIX) else (key,),
    f"{DEEPLAB_BACKBONE_PREFIX}conv1a.weight",
    refused=(
        (CAM_HEAD_KEY, CAM_NETWORK_FILE, f"DeepLab trains from ImageNet weights: {RESNET38_FILE_HINT}"),
        (RESNET50_KEY, RESNET50_FILE, f"{RESNET38_FILE_HINT}, or DeepLab weights"),
    ),
)
AFF_LAYOUT = CheckpointLayout(
    "AffinityNet ResNet-38 (an ImageNet ResNet-38, or a network.resnet38_aff checkpoint)",
    BACKBONE_KEY,
    lambda key: (key,),
    "conv1a.weight",
    refused=(
        (CAM_CLASS_KEY, CAM_NETWORK_FILE, f"AffinityNet trains from ImageNet weights: {RESNET38_FILE_HINT}"),
        (DEEPLAB_KEY, DEEPLAB_FILE, RESNET38_FILE_HINT),
        (RESNET50_KEY, RESNET50_FILE, RESNET38_FILE_HINT),
    ),
)
RESNET50_IRN_LAYOUT = CheckpointLayout(
    "ResNet-50 (torchvision's resnet50 or IRN's res50_irn.pth)",
    re.compile(r"resnet50\."),
    resnet50_irn.checkpoint_names,
    "resnet50.conv1.weight",
)
# conv1a's (ResNet-38's) and conv1's (ResNet-50's) output channels at width 1.
FIRST_CONV_CHANNELS = resnet38d.FIRST_CONV_CHANNELS
assert FIRST_CONV_CHANNELS == resnet50_irn.FIRST_CONV_CHANNELS


def checkpoint_layout(network: type[nn.Module]) -> CheckpointLayout:
    """The layout of the files a network class reads."""
    if issubclass(network, resnet50_irn.Net):
        return RESNET50_IRN_LAYOUT
    if issubclass(network, resnet38_aff.Net):
        return AFF_LAYOUT
    return DEEPLAB_LAYOUT if issubclass(network, resnet38_deeplab.Net) else RESNET38_LAYOUT


def state_width(state: Mapping[str, torch.Tensor], layout: CheckpointLayout) -> tuple[str, int] | None:
    """(the first convolution's name in `state`, the width it says: FIRST_CONV_CHANNELS / its output channels),
    for a model's state dict or a file's; None where `state` lacks it or its channels do not divide 64."""
    name = next((name for name in layout.checkpoint_names(layout.first_conv) if name in state), None)
    if name is None or state[name].ndim == 0:
        return None
    channels = state[name].shape[0]
    if channels == 0 or FIRST_CONV_CHANNELS % channels:
        return None
    return name, FIRST_CONV_CHANNELS // channels


def weights_width(name: str, path: str | os.PathLike) -> int:
    """The width of network `name` that the weights file holds, for an inference script's manifest."""
    path = Path(path)
    return _file_width(name, read_state_dict(path), path)


def load_network(name: str, path: str | os.PathLike, dataset: DatasetSpec = VOC12) -> tuple[nn.Module, WeightsReport]:
    """`build_network(name, dataset)` at the width the weights file holds, its tensors loaded (`load_weights`):
    the inference scripts' network, which needs no --width."""
    path = Path(path)
    file_state = read_state_dict(path)
    model = build_network(name, dataset, _file_width(name, file_state, path))
    return model, _load_state(model, file_state, path)


def _file_width(name: str, file_state: dict[str, torch.Tensor], path: Path) -> int:
    """`state_width` of a file for network `name`; 1 where the file has no first convolution (loading it then
    says what it lacks). Another family's file is refused here, so `weights_width` refuses it in a script's checks."""
    net_class = network_class(name)
    layout = checkpoint_layout(net_class)
    _refuse_other_families(file_state, layout, path)  # before a network is built for it
    found = state_width(file_state, layout)
    width = 1 if found is None else found[1]
    if width not in net_class.widths:
        raise UserError(f"weights file {path} holds a width-{width} network, but {name} has no width {width}")
    return width


@dataclass(frozen=True)
class WeightsReport:
    """What `load_weights` did: keys copied from the file, model keys the file lacks (left at
    their initialisation), and file keys the model has no place for."""

    path: Path
    loaded: list[str]
    from_scratch: list[str]
    unexpected: list[str]

    def summary(self) -> str:
        lines = [f"loaded {len(self.loaded)} tensors from {self.path}"]
        if self.from_scratch:
            layers = ", ".join(_layer_names(self.from_scratch))
            lines.append(f"initialised from scratch ({len(self.from_scratch)} tensors): {layers}")
        if self.unexpected:
            layers = ", ".join(_layer_names(self.unexpected))
            lines.append(f"ignored {len(self.unexpected)} tensors the model has no place for: {layers}")
        return "\n".join(lines)


def _layer_names(keys: list[str]) -> list[str]:
    """`["f9.weight", "f9.bias", "fc8.weight"]` -> `["f9", "fc8"]`, in first-seen order."""
    return list(dict.fromkeys(key.rpartition(".")[0] or key for key in keys))


def load_weights(model: nn.Module, path: str | os.PathLike) -> WeightsReport:
    """Copy the tensors of `path` into `model` (see the module docstring); UserError when the
    file is missing, corrupt, not a checkpoint of the model's backbone, of another width, or made for another head."""
    path = Path(path)
    return _load_state(model, read_state_dict(path), path)


def _refuse_other_families(file_state: dict[str, torch.Tensor], layout: CheckpointLayout, path: Path) -> None:
    """UserError, by name, where the file holds another network family's tensors (`layout.refused`)."""
    for pattern, what, instead in layout.refused:
        key = next((key for key in file_state if pattern.match(key)), None)
        if key is not None:
            raise UserError(
                f"weights file {path} holds {what} (e.g. {key}), not {layout.description} weights; {instead}"
            )


def _load_state(model: nn.Module, file_state: dict[str, torch.Tensor], path: Path) -> WeightsReport:
    layout = checkpoint_layout(type(model))
    _refuse_other_families(file_state, layout, path)
    model_state = model.state_dict()
    _check_width(state_width(file_state, layout), state_width(model_state, layout), path)
    file_names = {key: layout.checkpoint_names(key) for key in model_state}
    sources = {}  # {model key: its name in the file}, for the keys the file supplies
    for key, names in file_names.items():
        name = next((name for name in names if name in file_state), None)
        if name is not None:
            sources[key] = name
    missing = [key for key in model_state if key not in sources and not key.endswith(OPTIONAL_SUFFIX)]
    missing_backbone = [key for key in missing if layout.backbone_key.match(key)]
    if missing_backbone:
        examples = ", ".join(missing_backbone[:3])
        raise UserError(
            f"weights file {path} is missing {len(missing_backbone)} backbone tensors, e.g. "
            f"{examples}: not a {layout.description} checkpoint"
        )
    mismatched = [key for key, name in sources.items() if file_state[name].shape != model_state[key].shape]
    if mismatched:
        name, expected = sources[mismatched[0]], model_state[mismatched[0]]
        more = f" (and {len(mismatched) - 1} more mismatches)" if len(mismatched) > 1 else ""
        raise UserError(
            f"weights file {path}: {name} has shape {tuple(file_state[name].shape)} but the model "
            f"expects {tuple(expected.shape)}{more}"
            f"{_head_hint(name, file_state[name], expected)}"
        )
    matched = {key: file_state[name] for key, name in sources.items()}
    # Every model key is supplied (file tensor, or the model's own for the rest), so the
    # load itself is strict.
    model.load_state_dict({**model_state, **matched}, strict=True)
    claimed = {name for names in file_names.values() for name in names}
    return WeightsReport(
        path=path,
        loaded=list(matched),
        from_scratch=missing,
        unexpected=[key for key in file_state if key not in claimed],
    )


def _check_width(file_found: tuple[str, int] | None, model_found: tuple[str, int], path: Path) -> None:
    """UserError where the file's width (`state_width`) is not the model's; a file without a first convolution
    is left to the backbone check."""
    if file_found is None or file_found[1] == model_found[1]:
        return
    (name, file_width), model_width = file_found, model_found[1]
    fix = f"pass --width {file_width} to start from it"
    if file_width == 1:
        fix += "; ImageNet and the reference's weights are width 1: a narrow network starts from --weights none"
    raise UserError(
        f"weights file {path} holds a width-{file_width} network ({name} has {FIRST_CONV_CHANNELS // file_width} "
        f"output channels), but the network is width {model_width}; {fix}"
    )


CLASS_HEADS = ("fc8.", "cls_conv.")  # CAM nets' (SPEC §2) and DeepLab's (SPEC_SEG §1) per-class outputs


def _head_hint(key: str, file_value: torch.Tensor, model_value: torch.Tensor) -> str:
    """Why a class head can differ: the baseline CAM net has one output per foreground class, CPN one more
    (background, SPEC §2); and VOC heads have 20/21 outputs, COCO's 80/81."""
    if not key.startswith(CLASS_HEADS) or file_value.ndim == 0 or model_value.ndim == 0:
        return ""
    file_outputs, model_outputs = file_value.shape[0], model_value.shape[0]
    for spec in DATASETS.values() if key.startswith("fc8.") else ():
        if (file_outputs, model_outputs) == (spec.num_fg_classes, spec.num_classes):
            return (
                f"; fc8 has {file_outputs} vs {model_outputs} outputs: these are baseline CAM weights "
                "(network.resnet38_cls, no background output), not CPN weights, which train_cpn.py writes"
            )
        if (file_outputs, model_outputs) == (spec.num_classes, spec.num_fg_classes):
            return (
                f"; fc8 has {file_outputs} vs {model_outputs} outputs: these are CPN weights "
                "(network.resnet38_CPN, background output included), not the baseline's"
            )
    layer = key.partition(".")[0]
    for spec in DATASETS.values():
        if file_outputs in (spec.num_classes, spec.num_fg_classes):
            return (
                f"; {layer} has {file_outputs} outputs: these weights are for {spec.title}; pass --dataset {spec.name}"
            )
    return ""


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a `.pth` checkpoint or MXNet `.params` file, wrappers and prefixes removed."""
    if not path.is_file():
        raise UserError(f"weights file not found: {path}")
    with open(path, "rb") as handle:
        head = handle.read(8)
    if path.suffix == ".params" or head == LIST_MAGIC.to_bytes(8, "little"):
        return convert_mxnet_to_torch(path)
    return _unwrap(_torch_load(path), path)


def _torch_load(path: Path) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "global" in str(error):
            raise UserError(
                f"weights file {path} stores Python objects besides tensors, and loading them "
                "would run code from the file; if you trust it, re-save just its state_dict "
                "(torch.save(model.state_dict(), path))"
            ) from None
        raise UserError(f"weights file {path} is not a PyTorch checkpoint or MXNet .params file") from None
    except RuntimeError as error:
        # torch's first sentence says what failed (e.g. "failed finding central directory").
        raise UserError(
            f"cannot read weights file {path} ({str(error).split('. ')[0]}): it is truncated "
            "or not a PyTorch checkpoint; copy or download it again"
        ) from None
    except (EOFError, ValueError, KeyError, OSError, UnicodeDecodeError):
        raise UserError(
            f"cannot read weights file {path}: it is truncated or not a PyTorch checkpoint; copy or download it again"
        ) from None


def _unwrap(loaded: object, path: Path) -> dict[str, torch.Tensor]:
    while isinstance(loaded, Mapping) and any(isinstance(loaded.get(key), Mapping) for key in WRAPPER_KEYS):
        loaded = next(loaded[key] for key in WRAPPER_KEYS if isinstance(loaded.get(key), Mapping))
    if not isinstance(loaded, Mapping):
        raise UserError(f"weights file {path} holds a {type(loaded).__name__}, not a state dict of tensors")
    if not loaded:
        raise UserError(f"weights file {path} holds an empty state dict: not a checkpoint")
    for key, value in loaded.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise UserError(
                f"weights file {path} is not a state dict: its entry {key!r} holds {type(value).__name__}, not a tensor"
            )
    state_dict = dict(loaded)
    while prefix := next(
        (prefix for prefix in WRAPPER_PREFIXES if all(key.startswith(prefix) for key in state_dict)), None
    ):
        state_dict = {key.removeprefix(prefix): value for key, value in state_dict.items()}
    return state_dict


def save_irn_weights(model: resnet50_irn.Net, path: str | os.PathLike) -> None:
    """Write `model` atomically as IRN's own file (`resnet50_irn.irn_state_dict`): IRN's
    step/make_sem_seg_labels.py loads it into its `EdgeDisplacement` (SPEC-IRN §9), and so does `load_weights`."""
    with atomic_path(path) as tmp_path:
        torch.save(on_cpu(resnet50_irn.irn_state_dict(model)), tmp_path)
