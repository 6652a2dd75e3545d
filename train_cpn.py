"""Train CPN (SPEC §3–4): data → three views → losses → poly-SGD step.

One GPU:   python train_cpn.py --voc12_root VOC2012 --weights ilsvrc-cls_rna-a1_cls1000_ep-0001.pth
COCO 2014: python train_cpn.py --dataset coco14 --data_root COCO --weights ilsvrc-cls_rna-a1_cls1000_ep-0001.pth
Several:   torchrun --nproc_per_node=N train_cpn.py ... (--batch_size is per process)
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from engine.datasets import add_dataset_arguments, data_source, fill_list_defaults, list_default_help
from engine.errors import UserError, run_main
from engine.runtime import ProcessGroup, autocast
from engine.training import ResumableSampler, Trainer, add_training_arguments, save_weights, training_loader
from network import add_width_argument, build_network
from network.weights import load_weights
from tool.constants import CROP_SIZE, RESIZE_LONG
from tool.imutils import PATCH_STRATEGIES
from tool.losses import OHEM_RATIO, cpn_loss
from tool.optim import REFERENCE_MOMENTUM, PolyOptimizer, cpn_param_groups, estimate_batchnorm_statistics
from voc12.data import TrainDataset, load_cls_labels, load_image_list

VIEWS = ("img", "img_kept", "img_hidden")  # SPEC §4: the image, its kept patches, its hidden patches


def parse_args(argv=None) -> argparse.Namespace:
    here = Path(__file__).resolve().parent
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # The reference's flags, with its defaults (SPEC §4).
    parser.add_argument("--batch_size", type=int, default=4, help="images per step and process")
    parser.add_argument("--max_epoches", type=int, default=8)
    parser.add_argument(
        "--network",
        choices=("network.resnet38_CPN", "resnet38_CPN"),
        default="network.resnet38_CPN",
        help="the network trained (the reference's flag; this script trains CPN only)",
    )
    add_width_argument(parser)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--wt_dec", type=float, default=5e-4)
    parser.add_argument(
        "--val_list", help="accepted for compatibility; training does not use it (neither does the reference)"
    )
    parser.add_argument("--crop_size", type=int, default=CROP_SIZE)
    add_dataset_arguments(parser)  # --dataset, --data_root and the reference's --voc12_root
    # The reference's --weights, --train_list, --num_workers, --session_name; our --seed, --resume, ...
    add_training_arguments(
        parser,
        weights_help="ImageNet ResNet-38 (.params or .pth), a CPN .pth, or 'none' for a random start",
        momentum=REFERENCE_MOMENTUM,
        momentum_help="SGD momentum; the default 5e-4 is the reference's quirk (SPEC §4), 0.9 is the usual value",
        save_every=1000,
        out_dir=here / "CPN",
        session_name="resnet38_CPN",
    )
    # Ours.
    parser.add_argument("--cls_labels", help=list_default_help("cls_labels"))
    parser.add_argument(
        "--resize_long",
        type=int,
        nargs=2,
        default=RESIZE_LONG,
        metavar=("LOW", "HIGH"),
        help="range of the random long side before cropping (SPEC §3)",
    )
    parser.add_argument("--patch_strategy", choices=PATCH_STRATEGIES, default="superpixel")
    parser.add_argument("--no_tcp", action="store_true", help="ablation: drop L_tcp")
    parser.add_argument("--no_cpcr", action="store_true", help="ablation: drop L_cpcr")
    parser.add_argument("--ohem", type=float, default=OHEM_RATIO, help="OHEM ratio of L_cpcr (SPEC §4)")
    parser.add_argument(
        "--freeze_backbone",
        action="store_true",
        help="train the CPN head alone (fc8, f8_3, f8_4, f9, f10); not in the reference",
    )
    parser.add_argument(
        "--three_pass",
        action="store_true",
        help="run the three views as three forwards, as the reference does (slower, same result)",
    )
    return fill_list_defaults(parser.parse_args(argv), here, train_list="train", cls_labels="cls_labels")


def load_data(args, group: ProcessGroup, device: torch.device) -> DataLoader:
    """SPEC §3 augmentation, then the complementary patch pair, in a resumable order."""
    source = data_source(args)
    dataset = TrainDataset(
        source,
        load_image_list(args.train_list),
        load_cls_labels(args.cls_labels, source.spec),
        crop_size=args.crop_size,
        resize_long=tuple(args.resize_long),
        patch_strategy=args.patch_strategy,
        seed=args.seed,
    )
    sampler = ResumableSampler(len(dataset), args.batch_size, args.seed, group)
    if sampler.batches_per_epoch == 0:
        raise UserError(
            f"{args.train_list} has {len(dataset)} images, fewer than one batch of "
            f"{args.batch_size}×{group.world_size}; lower --batch_size"
        )
    return training_loader(dataset, sampler, args.num_workers, device)


def build_model(args, dataset: TrainDataset, group: ProcessGroup) -> nn.Module:
    """SPEC §2's network from --weights, in training mode with BN and the early layers frozen (SPEC §1)."""
    model = build_network(args.network, dataset.source.spec, args.width)
    if args.weights.lower() != "none":
        report = load_weights(model, args.weights)
        if group.is_main:
            print(report.summary())
    else:
        calibration = torch.stack([dataset.augmented_image(0, index) for index in range(min(len(dataset), 16))])
        estimate_batchnorm_statistics(model, calibration)
    if args.freeze_backbone:
        model.freeze_backbone()
    model.train()
    return model


def forward_views(model: nn.Module, views: list[Tensor], three_pass: bool) -> list[tuple[Tensor, Tensor]]:
    """The model's (cam, cam_rv) for each view.

    By default one forward on the concatenated views, split back. This equals separate forwards
    because every BatchNorm is frozen in eval mode (SPEC §1) and the CPN head works per image
    (SPEC §2); only the dropout masks are drawn differently. three_pass: one forward per view,
    as the reference does."""
    if three_pass:
        return [tuple(model(view)) for view in views]
    sizes = [view.shape[0] for view in views]
    cam, cam_rv = model(torch.cat(views))
    return list(zip(cam.split(sizes), cam_rv.split(sizes)))


@dataclass(frozen=True)
class StepOptions:
    """How `train_step` runs: device and precision (decided once per script, STYLE 7), one forward or
    the reference's three, and the loss switches (SPEC §4)."""

    device: torch.device
    amp_dtype: torch.dtype | None = None
    memory_format: torch.memory_format = torch.contiguous_format
    three_pass: bool = False
    use_tcp: bool = True
    use_cpcr: bool = True
    ohem_ratio: float = OHEM_RATIO


def train_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, batch: dict, options: StepOptions
) -> dict[str, Tensor]:
    """One SPEC §4 step: the three views through the model, the loss, the poly-SGD update.
    → the loss terms (detached scalars)."""
    device = options.device
    views = [batch[key].to(device, non_blocking=True).contiguous(memory_format=options.memory_format) for key in VIEWS]
    label, kept_fraction, hidden_fraction = (
        batch[key].to(device, non_blocking=True) for key in ("label", "kept_fraction", "hidden_fraction")
    )
    with autocast(device, options.amp_dtype):
        outputs = forward_views(model, views, options.three_pass)
        losses = cpn_loss(
            outputs,
            label,
            kept_fraction,
            hidden_fraction,
            use_tcp=options.use_tcp,
            use_cpcr=options.use_cpcr,
            ohem_ratio=options.ohem_ratio,
        )
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(losses["loss"]).backward()
    scaler.step(optimizer)
    scaler.update()
    return {name: value.detach() for name, value in losses.items()}


def main(argv=None) -> None:
    args = parse_args(argv)
    trainer = Trainer.start(args)
    options = StepOptions(
        trainer.device,
        trainer.amp_dtype,
        trainer.memory_format,
        three_pass=args.three_pass,
        use_tcp=not args.no_tcp,
        use_cpcr=not args.no_cpcr,
        ohem_ratio=args.ohem,
    )

    # ---- data ----
    loader = load_data(args, trainer.group, trainer.device)

    # ---- model and optimiser: poly SGD over SPEC §2's parameter groups (SPEC §4) ----
    model = build_model(args, loader.dataset, trainer.group)
    optimizer = PolyOptimizer(
        cpn_param_groups(model.get_parameter_groups()._asdict(), args.lr, args.wt_dec),
        lr=args.lr,
        weight_decay=args.wt_dec,
        max_step=loader.sampler.batches_per_epoch * args.max_epoches,
        momentum=args.momentum,
    )

    # ---- loop, then the weights (SPEC §4) ----
    def save_the_weights(_log) -> None:
        if trainer.group.is_main:
            print(f"weights: {save_weights(model, trainer.out_dir / f'{args.session_name}.pth')}")

    trainer.run(
        loader,
        args.max_epoches,
        model,
        optimizer,
        train_step,
        options,
        notes=[loader.dataset.source.spec.title] + (["backbone frozen"] if args.freeze_backbone else []),
        after_training=save_the_weights,
    )


if __name__ == "__main__":
    run_main(main)
