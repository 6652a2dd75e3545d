"""Train AffinityNet (SPEC_AFF §1–3), SEAM's train_aff.py: CRF label files → confident labels → affinity labels →
the pixel affinities of network.resnet38_aff → poly-SGD → the weights the random walk (infer_aff.py) follows.

One GPU:   python train_aff.py --voc12_root VOC2012 --weights ilsvrc-cls_rna-a1_cls1000_ep-0001.params \
               --la_crf_dir out_crf/alpha_4 --ha_crf_dir out_crf/alpha_24
           (the folders of infer_cam.py --out_crf out_crf --crf_scores on train_aug)
COCO 2014: python train_aff.py --dataset coco14 --data_root COCO ... (the same flags; SEAM has no COCO run)
Several:   torchrun --nproc_per_node=N train_aff.py ... (--batch_size stays the batch of one step, split over the
           processes, as the reference's DataParallel splits its 8 over 4 GPUs)
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from engine.datasets import DataSource, add_dataset_arguments, data_source, fill_list_defaults
from engine.errors import UserError, run_main
from engine.manifest import InputManifest
from engine.runtime import ProcessGroup, autocast
from engine.training import (
    Trainer,
    add_training_arguments,
    sampler_over_processes,
    save_weights,
    training_loader,
)
from network import add_width_argument, build_network
from network.weights import load_weights
from tool.aff import affinity_labels, affinity_loss
from tool.optim import GROUP_SETTINGS, PolyOptimizer, cpn_param_groups, estimate_batchnorm_statistics
from voc12.data import AFF_CROP_SIZE, CRF_FILE_HINT, AffTrainDataset, load_image_list

NETWORK = "network.resnet38_aff"
PSA_LR = 0.1  # SPEC_AFF §7: PSA's train_aff.py learning rate (SEAM's is 0.01)
BN_CALIBRATION_IMAGES = 16  # --weights none: crops whose statistics the frozen BNs take


def parse_args(argv=None) -> argparse.Namespace:
    here = Path(__file__).resolve().parent
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # SEAM's flags, with its defaults (SPEC_AFF §2-3); PSA's values where they differ (SPEC_AFF §7) in the help.
    parser.add_argument("--batch_size", type=int, default=8, help="images per step, over all processes")
    parser.add_argument("--max_epoches", type=int, default=8)
    parser.add_argument("--lr", type=float, default=0.01, help=f"SEAM's 0.01; PSA's is {PSA_LR}")
    parser.add_argument("--wt_dec", type=float, default=5e-4)
    parser.add_argument("--crop_size", type=int, default=AFF_CROP_SIZE, help="a multiple of 8, at least 88")
    parser.add_argument(
        "--la_crf_dir", required=True, help="low-alpha CRF label files <name>.npy (infer_cam.py --out_crf's alpha_4)"
    )
    parser.add_argument(
        "--ha_crf_dir", required=True, help="high-alpha CRF label files <name>.npy (infer_cam.py --out_crf's alpha_24)"
    )
    add_dataset_arguments(parser)  # --dataset, --data_root and the reference's --voc12_root
    add_width_argument(parser)
    # SEAM's --weights, --train_list, --num_workers, --session_name; our --momentum, --seed, --resume, ...
    add_training_arguments(
        parser,
        weights_help="an ImageNet ResNet-38 (.params or .pth: the backbone, the head from its initialisation), an "
        "AffinityNet .pth (train_aff.py's or SEAM's), or 'none' (a random start, for --width > 1)",
        momentum=None,
        momentum_help="SGD momentum; by default the weight decay (5e-4), the reference's quirk (SPEC_AFF §3: its "
        "PolyOptimizer hands wt_dec to SGD as the momentum); 0.9 is the usual value",
        save_every=1000,
        out_dir=here / "AFF",
        session_name="resnet38_aff",
    )
    return fill_list_defaults(parser.parse_args(argv), here, train_list="train")


def momentum_of(args) -> float:
    """SPEC_AFF §3 quirk (§6.3): SEAM's PolyOptimizer hands its weight decay to SGD as the momentum."""
    return args.wt_dec if args.momentum is None else args.momentum


def crf_inputs(args, group: ProcessGroup) -> dict:
    """The manifests of --la_crf_dir and --ha_crf_dir (what made their files, for the run record); UserError when
    they name different CAM weights (SPEC_AFF §6.4: the labels compare dict positions of one CAM dict)."""
    remedy = CRF_FILE_HINT
    flags = ("la_crf_dir", "ha_crf_dir")
    manifests = {flag: InputManifest.read(getattr(args, flag), remedy, warn=group.is_main) for flag in flags}
    la, ha = manifests["la_crf_dir"], manifests["ha_crf_dir"]
    if la is not None and ha is not None and la.weights_sha256 != ha.weights_sha256:
        raise UserError(
            f"--la_crf_dir {args.la_crf_dir} and --ha_crf_dir {args.ha_crf_dir} were made from different CAM weights "
            f"({la.weights} vs {ha.weights}); {remedy} in one run"
        )
    return {flag: None if manifest is None else vars(manifest) for flag, manifest in manifests.items()}


def load_data(args, source: DataSource, group: ProcessGroup, device: torch.device) -> DataLoader:
    """SPEC_AFF §2's crops and confident labels in a resumable order (shuffle, drop_last); each step holds the
    same images whatever the process count."""
    dataset = AffTrainDataset(
        source,
        load_image_list(args.train_list),
        args.la_crf_dir,
        args.ha_crf_dir,
        crop_size=args.crop_size,
        seed=args.seed,
    )
    sampler = sampler_over_processes(len(dataset), args.batch_size, "--batch_size", args.seed, group, args.train_list)
    return training_loader(dataset, sampler, args.num_workers, device)


def build_model(args, dataset: AffTrainDataset, group: ProcessGroup) -> nn.Module:
    """SPEC_AFF §1's network from --weights (network/weights.py refuses CPN, IRN and DeepLab files), in the
    reference's training mode (SPEC_AFF §3, §6.1): BN frozen in eval, conv1a/b2* frozen, dropout on."""
    model = build_network(NETWORK, dataset.source.spec, args.width)
    if args.weights.lower() != "none":
        report = load_weights(model, args.weights)
        if group.is_main:
            print(report.summary())
    else:  # not in the reference: a random start's BNs normalise with its own crops' statistics
        count = min(len(dataset), BN_CALIBRATION_IMAGES)
        estimate_batchnorm_statistics(model, torch.stack([dataset[index]["img"] for index in range(count)]))
    model.train()
    return model


def aff_parameter_groups(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """SPEC_AFF §3's groups as the reference builds them, before `train()` freezes anything (§6.2): every Conv2d
    weight of the backbone (the 8 frozen ones included: no gradient, so SGD skips them), the backbone's biases
    (none), the head's weights, its biases (none); BatchNorm parameters in no group."""
    head = {module for name in model.new_layers for module in getattr(model, name).modules()}
    groups = {name: [] for name in GROUP_SETTINGS}
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            is_new = module in head
            groups["new_weights" if is_new else "pretrained_weights"].append(module.weight)
            if module.bias is not None:
                groups["new_biases" if is_new else "pretrained_biases"].append(module.bias)
    return groups


def build_optimizer(model: nn.Module, args, max_step: int) -> PolyOptimizer:
    """SPEC_AFF §3: poly SGD (power 0.9 over `max_step` steps) on (lr, wd), (2·lr, 0), (10·lr, wd), (20·lr, 0)
    (the empty bias groups left out), momentum `momentum_of(args)`."""
    return PolyOptimizer(
        cpn_param_groups(aff_parameter_groups(model), args.lr, args.wt_dec),
        lr=args.lr,
        weight_decay=args.wt_dec,
        max_step=max_step,
        momentum=momentum_of(args),
    )


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: Tensor,
    labels: tuple[Tensor, Tensor, Tensor],
    *,
    scaler: torch.amp.GradScaler | None = None,
    amp_dtype: torch.dtype | None = None,
) -> dict[str, Tensor]:
    """One SPEC_AFF §3 step: images (N×3×C×C) through the model, the loss of its affinities against `labels`
    (bg_pos, fg_pos, neg: N×34×M each, on the images' device), the poly-SGD update. → the loss terms (detached)."""
    scaler = scaler or torch.amp.GradScaler(images.device.type, enabled=False)
    with autocast(images.device, amp_dtype):
        aff = model(images)  # float32 whatever amp_dtype (network/resnet38_aff.py)
    losses = affinity_loss(aff, *labels)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(losses["loss"]).backward()
    scaler.step(optimizer)
    scaler.update()
    return {name: value.detach() for name, value in losses.items()}


@dataclass(frozen=True)
class StepOptions:
    """How `batch_step` runs: device and precision, decided once per script (STYLE 7)."""

    device: torch.device
    amp_dtype: torch.dtype | None = None
    memory_format: torch.memory_format = torch.contiguous_format


def batch_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, batch: dict, options: StepOptions
) -> dict[str, Tensor]:
    """The Trainer's step: the batch to the device, its affinity labels made there from the confident labels
    (SPEC_AFF §2), `train_step`."""
    device = options.device
    images = batch["img"].to(device, non_blocking=True).contiguous(memory_format=options.memory_format)
    labels = affinity_labels(batch["label"].to(device, non_blocking=True))
    return train_step(model, optimizer, images, labels, scaler=scaler, amp_dtype=options.amp_dtype)


def main(argv=None) -> None:
    args = parse_args(argv)
    trainer = Trainer.start(args)
    options = StepOptions(trainer.device, trainer.amp_dtype, trainer.memory_format)

    # ---- data: the CRF folders' manifests, then the crops and confident labels (SPEC_AFF §2) ----
    inputs = crf_inputs(args, trainer.group)
    source = data_source(args)
    loader = load_data(args, source, trainer.group, trainer.device)

    # ---- model and optimiser: poly SGD over SPEC_AFF §3's groups, max_step = list // batch · epochs ----
    model = build_model(args, loader.dataset, trainer.group)
    max_step = len(loader.dataset) // args.batch_size * args.max_epoches
    optimizer = build_optimizer(model, args, max_step)

    # ---- loop, then the weights with the reference's keys (SPEC_AFF §3) ----
    def save_the_weights(_log) -> None:
        if trainer.group.is_main:  # after_training runs on every process
            print(f"weights: {save_weights(model, trainer.out_dir / f'{args.session_name}.pth')}")

    trainer.run(
        loader,
        args.max_epoches,
        model,
        optimizer,
        batch_step,
        options,
        notes=[f"crop {args.crop_size}", f"width {args.width}", source.spec.title],
        after_training=save_the_weights,
        inputs=inputs,
    )


if __name__ == "__main__":
    run_main(main)
