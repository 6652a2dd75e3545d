"""From the data to the paper's table in one command: class lists → CPN → CAMs → sweep → IRN's confident labels →
IRNet → pseudo masks → DeepLab-v1 → val predictions, each stage calls of its scripts' main(argv), each scored
where the paper scores it, then W/report.md and W/report.json for a person to read. `--refine aff` makes the
pseudo masks by SEAM's AffinityNet route instead: CRF label files → AffinityNet → its random walk.

    python run_pipeline.py --voc12_root VOCdevkit/VOC2012 --weights ilsvrc-cls_rna-a1_cls1000_ep-0001.pth \\
        --r50_weights resnet50-19c8e357.pth --work_dir runs/voc
    python run_pipeline.py --toy --work_dir demo_out      # make demo: the toy set and the demo's settings
    python run_pipeline.py ... --from irn --until sem_seg_score
    python run_pipeline.py ... --refine aff       # the pseudo masks by AffinityNet's random walk (SEAM's chain)

Each stage writes under W/<stage>/; a finished stage whose settings and inputs are unchanged is skipped, a
changed one reruns with every stage after it (engine/pipeline.py). Without --toy the scripts' defaults
(the paper's recipe) apply; --cpn_steps, --irn_steps, --aff_steps and --seg_steps cut a schedule short.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import platform
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from coco14.toy import TOY_CLASSES as COCO_TOY_CLASSES
from engine.datasets import (
    COCO14,
    DATASETS,
    PAPER_CAM_MIOU,
    PAPER_SEG_TEST_MIOU,
    PAPER_SEG_VAL_MIOU,
    SEGMENTATION_FOLDER,
    VOC12,
    DatasetSpec,
    add_dataset_arguments,
)
from engine.errors import UserError, run_main
from engine.fileio import load_npy_dict, read_label_png, read_rgb
from engine.manifest import git_commit
from engine.pipeline import Call, Stage, run_stages, write_if_changed
from engine.runtime import device_name, resolve_device
from evaluation_cam import protocol_lines
from tool.visualization import colorize_label, heatmap_overlay, picture_panel
from voc12.lists import load_image_list
from voc12.toy import TOY_CLASSES as VOC_TOY_CLASSES

TOY_IMAGES = (32, 12)  # train, val: the demo's toy set (its CPU run fits in 15 minutes on 2 cores)
TOY_WIDTH = 8  # every network's channels divided by this in the demo (issue 22)
# IRN's confident-foreground, confident-background and walk background scores for the toy CAMs: theirs
# (0.30/0.05/0.25) suit IRN's CAMs, whose best background score is ~0.15; the toy CAMs are broad (best 0.9 of
# the map's maximum), and at 0.05 almost no pixel is confident background.
TOY_IRN_THRESHOLDS = (0.9, 0.3, 0.7)
TOY_CAM_SCALES = "1.0,1.5,2.0"  # the demo's CAM scales, each flipped (the paper's are in infer_cam.py)
TOY_SEG_SCALES = ("0.5", "1.0")  # the demo's DeepLab test scales (the paper's are in infer_seg.py)
PICTURED_IMAGES = 3  # the report's side-by-side pictures, the first images of the scored list
CPN_WEIGHTS, IRN_WEIGHTS, SEG_WEIGHTS = "resnet38_CPN.pth", "res50_irn.pth", "deeplab.pth"
AFF_WEIGHTS = "resnet38_aff.pth"
LA_CRF, HA_CRF = "alpha_4", "alpha_24"  # infer_cam.py --out_crf's folders at SEAM's alphas, train_aff.py's la and ha


# ---- settings: the paper's recipe (the scripts' defaults) or the demo's ----


@dataclass(frozen=True)
class Recipe:
    """What the run adds to the stages' calls, by stage name; its name says which recipe it is."""

    name: str
    flags: dict[str, list[str]]

    def of(self, stage: str) -> list[str]:
        return self.flags.get(stage, [])


def steps_flags(steps: int | None) -> list[str]:
    return [] if steps is None else ["--max_steps", str(steps)]


def paper_recipe(args: argparse.Namespace) -> Recipe:
    steps = {"cpn": args.cpn_steps, "irn": args.irn_steps, "aff": args.aff_steps, "seg": args.seg_steps}
    return Recipe("the paper's (the scripts' defaults)", {stage: steps_flags(count) for stage, count in steps.items()})


def toy_recipe(args: argparse.Namespace, device: str) -> Recipe:
    """`make demo`'s settings (README, The demo): every network at width TOY_WIDTH from a random start, trained
    whole (IRNet's backbone too, `--train_backbone`), momentum 0.9 (a random start needs it), crop 64–96, one
    loader worker; DeepLab's backbone from the CPN stage (`train_deeplab`); IRN's thresholds for the toy CAMs
    (TOY_IRN_THRESHOLDS). Each poly schedule ends with the last step."""
    on_cpu = device == "cpu"
    num_train = args.toy_images[0]
    cpn_steps = args.cpn_steps or (1500 if on_cpu else 4000)
    irn_steps = args.irn_steps or (400 if on_cpu else 1500)
    seg_steps = args.seg_steps or (500 if on_cpu else 1500)
    # IRNet drops the last partial batch and COCO the images without objects: half the list at most.
    cpn_batch, irn_batch, seg_batch = min(num_train, 4), max(1, min(num_train // 2, 8)), min(num_train, 4)
    narrow = ["--width", str(TOY_WIDTH), "--momentum", "0.9"]
    cpn = ["--crop_size", "64", "--resize_long", "64", "96", "--batch_size", str(cpn_batch), "--lr", "0.01"]
    cpn += ["--max_epoches", str(math.ceil(cpn_steps * cpn_batch / num_train)), "--max_steps", str(cpn_steps)]
    irn = ["--irn_crop_size", "96", "--irn_batch_size", str(irn_batch), "--max_steps", str(irn_steps)]
    irn += ["--irn_num_epoches", str(math.ceil(irn_steps * irn_batch / num_train)), "--train_backbone"]
    seg = ["--crop_size", "64", "--batch_size", str(seg_batch), "--num_iters", str(seg_steps), "--lr", "0.01"]
    quiet = ["--num_workers", "1", "--log_every", "100"]
    fg, bg, walk_bg = TOY_IRN_THRESHOLDS
    aff_steps, aff = toy_aff_training(args, on_cpu)
    recipe = "CPU" if on_cpu else "GPU"
    refiner = f"{irn_steps} IRNet" if args.refine == "irn" else f"{aff_steps} AffinityNet"
    walk = ", the walk on SEAM's CAM scale" if args.refine == "aff" else ""
    thresholds = f"; IRN's thresholds {fg}/{bg}/{walk_bg}" if args.refine == "irn" else ""
    return Recipe(
        f"the demo's {recipe} recipe (toy set, width {TOY_WIDTH}, random start, {cpn_steps} CPN, {refiner} "
        f"and {seg_steps} DeepLab steps at crop 64–96{thresholds}{walk})",
        {
            "cpn": cpn + narrow + quiet,
            "cam": ["--num_workers", "1", "--scales", TOY_CAM_SCALES],
            "ir_label": ["--num_workers", "2", "--conf_fg_thres", str(fg), "--conf_bg_thres", str(bg)],
            "irn": irn + narrow + quiet,
            "sem_seg": ["--num_workers", "1", "--sem_seg_bg_thres", str(walk_bg)],
            "aff": aff + narrow + quiet,
            # infer_cam.py --out_cam halves the CAMs; the walk's background (1 − m)^alpha is tuned on SEAM's
            # un-halved maps, which the CRF label files are made from too (SPEC_AFF §5): restore that scale
            "aff_rw": ["--num_workers", "1", "--double_cams"],
            "seg": seg + narrow + quiet,
            "seg_pred": ["--scales", *TOY_SEG_SCALES],
        },
    )


def toy_aff_training(args: argparse.Namespace, on_cpu: bool) -> tuple[int, list[str]]:
    """(steps, train_aff.py's flags) of the demo's AffinityNet: crop 96 (train_aff.py refuses under 88), a
    batch of at most half the list (COCO's list leaves out the images without objects), the poly schedule
    over list // batch · epochs steps ending with the last step."""
    num_train = args.toy_images[0]
    steps = args.aff_steps or (300 if on_cpu else 1000)
    batch = max(1, min(num_train // 2, 4))
    epochs = math.ceil(steps / (num_train // batch))
    flags = ["--crop_size", "96", "--batch_size", str(batch), "--max_epoches", str(epochs), "--max_steps", str(steps)]
    return steps, flags


@dataclass(frozen=True)
class Run:
    """One pipeline run: its arguments, data set and root, device, recipe and where each stage writes."""

    args: argparse.Namespace
    spec: DatasetSpec
    data_root: Path
    device: str
    recipe: Recipe

    def path(self, stage: str, *parts: str) -> Path:
        return Path(self.args.work_dir) / stage / Path(*parts)

    def list_path(self, kind: str) -> Path:
        """The lists stage's file of `kind` ("train": what the networks train on, "infer": the list the
        paper scores CAMs and pseudo masks on, "val", "cls_labels")."""
        return self.path("lists", self.spec.list_files[kind])

    @property
    def gt_dir(self) -> Path:
        """VOC's own label PNGs; COCO's, painted by the lists stage."""
        return self.data_root / SEGMENTATION_FOLDER if self.spec is VOC12 else self.path("lists", SEGMENTATION_FOLDER)

    @property
    def data_flags(self) -> list[str]:
        deterministic = ["--deterministic"] if self.args.deterministic else []
        device = ["--device", self.device, *deterministic]
        return ["--dataset", self.spec.name, "--data_root", str(self.data_root), *device]

    @property
    def test_list(self) -> Path | None:
        """VOC's test list, when the data set has one (the submission's images)."""
        path = self.data_root / "ImageSets" / "Segmentation" / "test.txt"
        return path if self.spec is VOC12 and path.is_file() else None

    @property
    def labelled_flags(self) -> list[str]:
        """`data_flags` and the lists stage's class labels, which the CPN and IRN scripts read."""
        return self.data_flags + ["--cls_labels", str(self.list_path("cls_labels"))]

    def weights(self, path: str | None) -> str:
        return "none" if self.args.toy else path

    def weight_inputs(self, path: str | None) -> list[Path]:
        return [] if self.args.toy else [Path(path)]

    @property
    def pseudo_mask_dir(self) -> Path:
        """The route's pseudo masks of the training list, DeepLab's labels: IRN's walk or AffinityNet's."""
        stage = PSEUDO_MASK_STAGES[self.args.refine][0]
        return self.path(stage, stage)


# ---- the stages: each a few calls of the scripts, in order ----


def toy_set(run: Run) -> Stage:
    module = "voc12.toy" if run.spec is VOC12 else "coco14.toy"
    num_train, num_val = run.args.toy_images
    argv = [str(run.data_root), "--num_train", str(num_train), "--num_val", str(num_val)]
    return Stage("toy", [Call(module, argv)], outputs=[run.data_root])


def class_lists(run: Run) -> Stage:
    out = ["--out_dir", str(run.path("lists"))]
    if run.spec is VOC12:
        call = Call("voc12.make_cls_labels", ["--voc12_root", str(run.data_root), *out])
        inputs = [run.data_root / "ImageSets" / "Segmentation" / f"{split}.txt" for split in ("train", "val")]
    else:
        call = Call("coco14.make_cls_labels", ["--coco_root", str(run.data_root), "--seg_dir", str(run.gt_dir), *out])
        inputs = [run.data_root / "annotations" / f"instances_{split}2014.json" for split in ("train", "val")]
    lists = [run.list_path(kind) for kind in ("cls_labels", "train", "infer", "val")]
    return Stage("lists", [call], outputs=lists, inputs=[] if run.args.toy else inputs)


def train_cpn(run: Run) -> Stage:
    argv = run.labelled_flags + [
        "--train_list",
        str(run.list_path("train")),
    ]
    argv += ["--weights", run.weights(run.args.weights), "--out_dir", str(run.path("cpn")), "--resume", "auto"]
    argv += ["--session_name", Path(CPN_WEIGHTS).stem, *run.recipe.of("cpn")]
    weights = run.path("cpn", CPN_WEIGHTS)
    return Stage("cpn", [Call("train_cpn", argv)], outputs=[weights], inputs=run.weight_inputs(run.args.weights))


def cams(run: Run) -> Stage:
    """Reference-format CAMs of the scored list (for the sweep and the pictures) and, on the IRN route,
    IRN-format CAMs of it and of the training list (for IRN's labels and walk); on the AffinityNet route
    reference-format CAMs of the training list too (what infer_aff.py walks)."""
    argv = run.labelled_flags + [
        "--weights",
        str(run.path("cpn", CPN_WEIGHTS)),
    ]
    cam, cam_irn = run.path("cam", "cam"), run.path("cam", "cam_irn")
    on_irn = run.args.refine == "irn"
    argv += [*(["--out_cam_irn", str(cam_irn)] if on_irn else ["--out_cam", str(cam)]), *run.recipe.of("cam")]
    scored_only = ["--out_cam", str(cam)] if on_irn else []
    calls = [Call("infer_cam", argv + ["--infer_list", str(run.list_path("infer")), *scored_only])]
    if run.list_path("train") != run.list_path("infer"):
        calls.append(Call("infer_cam", argv + ["--infer_list", str(run.list_path("train"))]))
    return Stage("cam", calls, outputs=[cam, cam_irn] if on_irn else [cam])


def score_call(run: Run, stage: str, name: str, predict_dir: Path, image_list: Path, labels: list[str]) -> Call:
    """evaluation_cam.py of `predict_dir` on `image_list`, its JSON and log as W/<stage>/<name>.{json,txt}."""
    argv = ["--dataset", run.spec.name, "--list", str(image_list), "--predict_dir", str(predict_dir)]
    argv += ["--gt_dir", str(run.gt_dir), "--json", str(run.path(stage, f"{name}.json")), "--comment", name]
    return Call("evaluation_cam", argv + ["--logfile", str(run.path(stage, f"{name}.txt")), *labels])


def sweep(run: Run) -> Stage:
    plot = run.path("sweep", "sweep.png")
    call = score_call(run, "sweep", "cam", run.path("cam", "cam"), run.list_path("infer"), ["--plot", str(plot)])
    return Stage("sweep", [call], outputs=[plot], score_json=run.path("sweep", "cam.json"))


def ir_labels(run: Run) -> Stage:
    argv = run.labelled_flags + [
        "--train_list",
        str(run.list_path("train")),
    ]
    argv += [
        "--cam_out_dir",
        str(run.path("cam", "cam_irn")),
        "--ir_label_out_dir",
        str(run.path("ir_label", "ir_label")),
    ]
    return Stage(
        "ir_label", [Call("cam_to_ir_label", argv + run.recipe.of("ir_label"))], [run.path("ir_label", "ir_label")]
    )


def train_irnet(run: Run) -> Stage:
    argv = run.data_flags + ["--train_list", str(run.list_path("train")), "--infer_list", str(run.list_path("infer"))]
    argv += [
        "--ir_label_out_dir",
        str(run.path("ir_label", "ir_label")),
        "--weights",
        run.weights(run.args.r50_weights),
    ]
    argv += [
        "--irn_weights_name",
        str(run.path("irn", IRN_WEIGHTS)),
        "--out_dir",
        str(run.path("irn")),
        "--resume",
        "auto",
    ]
    return Stage(
        "irn",
        [Call("train_irn", argv + run.recipe.of("irn"))],
        outputs=[run.path("irn", IRN_WEIGHTS)],
        inputs=run.weight_inputs(run.args.r50_weights),
    )


def pseudo_masks(run: Run) -> Stage:
    """For the training list (DeepLab's labels), which holds the scored one."""
    argv = run.labelled_flags + [
        "--infer_list",
        str(run.list_path("train")),
    ]
    argv += ["--cam_out_dir", str(run.path("cam", "cam_irn")), "--irn_weights_name", str(run.path("irn", IRN_WEIGHTS))]
    argv += ["--sem_seg_out_dir", str(run.path("sem_seg", "sem_seg")), *run.recipe.of("sem_seg")]
    return Stage("sem_seg", [Call("make_sem_seg_labels", argv)], outputs=[run.path("sem_seg", "sem_seg")])


def pseudo_mask_score(run: Run) -> Stage:
    labels = ["--type", "png", "--prediction_void", "background"]  # IRN's rule (SPEC-IRN §10)
    call = score_call(run, "sem_seg_score", "sem_seg", run.path("sem_seg", "sem_seg"), run.list_path("infer"), labels)
    return Stage("sem_seg_score", [call], outputs=[], score_json=run.path("sem_seg_score", "sem_seg.json"))


def crf_label_files(run: Run) -> Stage:
    """SEAM's CRF label files of the training list (SPEC_AFF §5), from the cam stage's CAMs: the same
    weights and scales, the CRF on the un-halved maps."""
    argv = run.labelled_flags + ["--weights", str(run.path("cpn", CPN_WEIGHTS)), *run.recipe.of("cam")]
    argv += ["--infer_list", str(run.list_path("train")), "--out_crf", str(run.path("crf")), "--crf_scores"]
    outputs = [run.path("crf", LA_CRF), run.path("crf", HA_CRF)]
    return Stage("crf", [Call("infer_cam", argv + run.recipe.of("crf"))], outputs=outputs)


def train_affinitynet(run: Run) -> Stage:
    argv = run.data_flags + ["--train_list", str(run.list_path("train"))]
    argv += ["--la_crf_dir", str(run.path("crf", LA_CRF)), "--ha_crf_dir", str(run.path("crf", HA_CRF))]
    argv += ["--weights", run.weights(run.args.weights), "--out_dir", str(run.path("aff")), "--resume", "auto"]
    argv += ["--session_name", Path(AFF_WEIGHTS).stem, *run.recipe.of("aff")]
    return Stage(
        "aff",
        [Call("train_aff", argv)],
        outputs=[run.path("aff", AFF_WEIGHTS)],
        inputs=run.weight_inputs(run.args.weights),
    )


def affinity_walk(run: Run) -> Stage:
    """AffinityNet's random walk of the training list's CAMs (DeepLab's labels), which holds the scored one."""
    argv = run.data_flags + ["--weights", str(run.path("aff", AFF_WEIGHTS))]
    argv += ["--infer_list", str(run.list_path("train")), "--cam_dir", str(run.path("cam", "cam"))]
    argv += ["--out_rw", str(run.pseudo_mask_dir), *run.recipe.of("aff_rw")]
    return Stage("aff_rw", [Call("infer_aff", argv)], outputs=[run.pseudo_mask_dir])


def affinity_walk_score(run: Run) -> Stage:
    labels = ["--type", "png"]  # SEAM's evaluation.py of its walk's PNGs, no void (SPEC_AFF §4)
    call = score_call(run, "aff_rw_score", "aff_rw", run.path("aff_rw", "aff_rw"), run.list_path("infer"), labels)
    return Stage("aff_rw_score", [call], outputs=[], score_json=run.path("aff_rw_score", "aff_rw.json"))


def train_deeplab(run: Run) -> Stage:
    argv = run.data_flags + [
        "--train_list",
        str(run.list_path("train")),
        "--sem_seg_out_dir",
        str(run.pseudo_mask_dir),
    ]
    argv += ["--weights", run.weights(run.args.weights), "--out_dir", str(run.path("seg")), "--resume", "auto"]
    argv += ["--session_name", Path(SEG_WEIGHTS).stem, *run.recipe.of("seg")]
    # The demo's DeepLab starts from the CPN stage's backbone (trained on image labels only): the nearest a toy
    # run has to the ImageNet start of the real workflow.
    argv += ["--backbone_from", str(run.path("cpn", CPN_WEIGHTS))] if run.args.toy else []
    return Stage(
        "seg",
        [Call("train_seg", argv)],
        outputs=[run.path("seg", SEG_WEIGHTS)],
        inputs=run.weight_inputs(run.args.weights),
    )


def deeplab_predictions(run: Run) -> Stage:
    """Val (the paper's protocol), the scored training list (the chain's last link, and the pictures) and,
    when the data set has one, the test list as a submission."""
    argv = run.data_flags + ["--weights", str(run.path("seg", SEG_WEIGHTS)), *run.recipe.of("seg_pred")]
    lists = {"val": run.list_path("val"), "train": run.list_path("infer")}
    calls = [
        Call("infer_seg", argv + ["--infer_list", str(path), "--out_seg", str(run.path("seg_pred", split))])
        for split, path in lists.items()
    ]
    outputs = [run.path("seg_pred", split) for split in lists]
    if run.test_list is not None:
        calls.append(
            Call(
                "infer_seg",
                argv
                + ["--infer_list", str(run.test_list), "--out_submission", str(run.path("seg_pred", "submission"))],
            )
        )
        outputs.append(run.path("seg_pred", "submission"))
    return Stage("seg_pred", calls, outputs=outputs, inputs=[run.test_list] if run.test_list else [])


def deeplab_score(run: Run) -> Stage:
    calls = [
        score_call(run, "seg_score", split, run.path("seg_pred", split), run.list_path(kind), ["--type", "png"])
        for split, kind in (("val", "val"), ("train", "infer"))
    ]
    return Stage(
        "seg_score", calls, outputs=[run.path("seg_score", "train.json")], score_json=run.path("seg_score", "val.json")
    )


CAM_STAGES = {"toy": toy_set, "lists": class_lists, "cpn": train_cpn, "cam": cams, "sweep": sweep}
# --refine: the stages from the CAMs to the pseudo masks, each route's last two its pseudo masks and their score
REFINE_STAGES = {
    "irn": {"ir_label": ir_labels, "irn": train_irnet, "sem_seg": pseudo_masks, "sem_seg_score": pseudo_mask_score},
    "aff": {
        "crf": crf_label_files,
        "aff": train_affinitynet,
        "aff_rw": affinity_walk,
        "aff_rw_score": affinity_walk_score,
    },
}
SEG_STAGES = {"seg": train_deeplab, "seg_pred": deeplab_predictions, "seg_score": deeplab_score}
ROUTES = {refine: {**CAM_STAGES, **stages, **SEG_STAGES} for refine, stages in REFINE_STAGES.items()}
STAGES = ROUTES["irn"]  # the paper's route
ALL_STAGE_NAMES = tuple(dict.fromkeys(name for route in ROUTES.values() for name in route))
PSEUDO_MASK_STAGES = {refine: tuple(stages)[-2:] for refine, stages in REFINE_STAGES.items()}  # (masks, score)


def route_stages(run: Run) -> list[Stage]:
    """The stages of the run's route (--refine), the toy set's only with --toy; --from and --until must name
    one of them."""
    route = ROUTES[run.args.refine]
    for flag, name in (("--from", run.args.from_stage), ("--until", run.args.until)):
        if name is not None and name not in route:
            raise UserError(
                f"{flag} {name}: not a stage of --refine {run.args.refine}; choose one of {', '.join(route)}"
            )
    return [build(run) for name, build in route.items() if run.args.toy or name != "toy"]


# ---- the report ----

# Scored stages: what is scored, and the paper's figure where it publishes one (VOC only).
SCORED = {
    "sweep": ("CAMs", f"{PAPER_CAM_MIOU} % (VOC train)"),
    "sem_seg_score": ("pseudo masks (IRN's random walk)", "not published (IRN: 66.5 % from its own 48.3 % CAMs)"),
    "aff_rw_score": (
        "pseudo masks (AffinityNet's random walk)",
        "not published (SEAM: 63.61 % train from its own 55.41 % CAMs)",
    ),
    "seg_score": ("DeepLab-v1 predictions, val", f"{PAPER_SEG_VAL_MIOU} % (VOC val); test {PAPER_SEG_TEST_MIOU} %"),
}


def chain(run: Run) -> tuple[tuple[str, str, str], ...]:
    """The chain on the scored training list, (link, scored stage, score name): each link should beat the one
    before; the pseudo masks are the route's."""
    masks, score = PSEUDO_MASK_STAGES[run.args.refine]
    return (("CAMs", "sweep", "cam"), ("pseudo masks", score, masks), ("DeepLab", "seg_score", "train"))


# issue 22's goals for the demo, in points of the toy classes' mIoU: each link against the one before
CHAIN_GOALS = {"pseudo masks": 3.0, "DeepLab": -1.0}
VAL_GAP_GOAL = 5.0  # DeepLab on val within this many points of DeepLab on train
# The demo's CAMs from an untrained network (the CPN stage at 0 steps), over the toy classes: measured once
# on the VOC toy set with the demo's recipe (README, The demo); the trained CAMs should reach 3x this.
UNTRAINED_TOY_CAM_MIOU = {"voc12": 20.86, "coco14": None}


def toy_class_names(spec: DatasetSpec) -> tuple[str, ...]:
    """Background and the classes the toy set draws: the demo's readable mIoU is over these."""
    toy_classes = VOC_TOY_CLASSES if spec is VOC12 else COCO_TOY_CLASSES
    return (spec.class_names[0], *(toy_class.name for toy_class in toy_classes))


def toy_miou(run: Run, score: dict) -> float:
    """The mean IoU over the toy set's classes, at the scored stage's best threshold (the same threshold
    as the all-class mIoU: the classes the toy set lacks score 0 at every threshold)."""
    per_class = {entry["name"]: entry["iou"] for entry in score["per_class"]}
    return float(np.mean([per_class[name] for name in toy_class_names(run.spec)]))


def chain_scores(run: Run) -> list[tuple[str, float]]:
    """(link, mIoU) of each scored link of the chain: over the toy classes for the demo, else over all."""
    scores = [(what, score_of(run, stage, name)) for what, stage, name in chain(run)]
    figure = (lambda score: toy_miou(run, score)) if run.args.toy else (lambda score: score["best_miou"])
    return [(what, figure(score)) for what, score in scores if score is not None]


def score_of(run: Run, stage: str, name: str) -> dict | None:
    path = run.path(stage, f"{name}.json")
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def chain_verdicts(run: Run) -> list[str]:
    """One line per link of the chain: on the toy set against issue 22's goals, else whether it improves
    on the one before."""
    scores = chain_scores(run)
    lines = []
    for (earlier, earlier_miou), (later, later_miou) in zip(scores, scores[1:]):
        margin = CHAIN_GOALS[later] if run.args.toy else 0.0
        met = later_miou >= earlier_miou + margin if run.args.toy else later_miou > earlier_miou
        goal = f"goal ≥ {earlier} {margin:+g} points" if run.args.toy else f"should beat {earlier}"
        verdict = "met" if met else f"**not met**, by {earlier_miou + margin - later_miou:.2f} points"
        lines.append(f"- {later} {later_miou:.2f} % against {earlier} {earlier_miou:.2f} %: {goal}, {verdict}.")
    val, train = score_of(run, "seg_score", "val"), score_of(run, "seg_score", "train")
    if run.args.toy and val is not None and train is not None:
        gap = toy_miou(run, train) - toy_miou(run, val)
        verdict = "met" if abs(gap) <= VAL_GAP_GOAL else "**not met**"
        lines.append(
            f"- DeepLab on val {toy_miou(run, val):.2f} % against train {toy_miou(run, train):.2f} %: "
            f"goal within {VAL_GAP_GOAL:g} points, {verdict}."
        )
    untrained = UNTRAINED_TOY_CAM_MIOU[run.spec.name]
    if run.args.toy and untrained is not None and scores and scores[0][0] == "CAMs":
        verdict = "met" if scores[0][1] >= 3 * untrained else "**not met**"
        lines.append(
            f"- CAMs {scores[0][1]:.2f} % against an untrained network's {untrained:.2f} % (measured once): "
            f"goal ≥ 3×, {verdict}."
        )
    return lines


def picture(run: Run, name: str) -> bytes | None:
    """Photo, CAM (the highest class score), pseudo mask, DeepLab's prediction and ground truth of one
    image side by side, as PNG bytes; the pieces not made yet are left out."""
    photo = np.asarray(read_rgb(run.spec.image_path(run.data_root, name)))
    pictures, labels = [("image", photo)], set()
    cam_path = run.path("cam", "cam", f"{name}.npy")
    if cam_path.is_file():
        maps = list(load_npy_dict(cam_path, "CAM", "rerun the cam stage").values())
        highest = np.max(maps, axis=0) if maps else np.zeros(photo.shape[:2], np.float32)
        pictures.append(("CAM", heatmap_overlay(photo, highest / max(float(highest.max()), 1e-5))))
    for title, path in (
        ("pseudo mask", run.pseudo_mask_dir / f"{name}.png"),
        ("DeepLab", run.path("seg_pred", "train", f"{name}.png")),
        ("ground truth", run.gt_dir / f"{name}.png"),
    ):
        if path.is_file():
            label = read_label_png(path)
            pictures.append((title, colorize_label(label)))
            labels |= set(np.unique(label).tolist())
    buffer = io.BytesIO()
    picture_panel(pictures, sorted(labels), run.spec.class_names).save(buffer, format="PNG")
    return buffer.getvalue()


def report_markdown(run: Run, records: list[dict], settings: dict) -> str:
    title = f"{run.spec.title} at {run.data_root}"
    lines = ["# CPN pipeline report", "", f"Data: {title}. Recipe: {run.recipe.name}. Device: {settings['device']}."]
    if run.args.toy:
        lines += [
            "",
            "**Demo settings, not the paper's**: the mIoUs below show that the chain runs, not CPN's quality.",
        ]
    toy_column = ["toy classes"] if run.args.toy else []
    header = ["stage", "what", "mIoU", *toy_column, "paper", "protocol"]
    lines += ["", "## mIoU", "", "| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for record in records:
        if record["score_json"] is not None:
            what, paper = SCORED[record["name"]]
            score = json.loads(Path(record["score_json"]).read_text(encoding="utf-8"))
            toy = [f"{toy_miou(run, score):.2f} %"] if run.args.toy else []
            protocol_text = "<br>".join(protocol_lines(score["protocol"]))
            paper = paper if run.spec is VOC12 else "none published"
            cells = [record["name"], what, f"{record['miou']:.2f} %", *toy, paper, protocol_text]
            lines.append("| " + " | ".join(cells) + " |")
    shown = " → ".join(f"{what} {miou:.2f} %" for what, miou in chain_scores(run))
    over = f"over the toy set's classes ({', '.join(toy_class_names(run.spec))})" if run.args.toy else "mIoU"
    lines += ["", f"The chain on the scored training list ({run.list_path('infer')}), {over}: {shown}.", ""]
    lines += chain_verdicts(run)
    lines += ["", "## Time per stage", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {record['name']} | {record['seconds']:.0f} |" for record in records]
    lines += [f"| all | {sum(record['seconds'] for record in records):.0f} |", "", "## Pictures", ""]
    if run.path("sweep", "sweep.png").is_file():
        lines += ["The background sweep of the CAMs:", "", "![sweep](sweep/sweep.png)", ""]
    lines += [f"![{name}](report/{name}.png)" for name in pictured_names(run)]
    return "\n".join(lines) + "\n"


def pictured_names(run: Run) -> list[str]:
    path = run.list_path("infer")
    return load_image_list(path)[:PICTURED_IMAGES] if path.is_file() else []


def write_report(run: Run, records: list[dict]) -> None:
    """W/report.md, W/report.json and W/report/<name>.png, each rewritten only when its content changes."""
    work_dir = Path(run.args.work_dir)
    stages = [
        {"name": record["name"], "seconds": record["seconds"], "miou": record["miou"], "outputs": record["outputs"]}
        for record in records
    ]
    versions = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__}
    settings = {
        **{key: value for key, value in vars(run.args).items() if key not in ("from_stage", "until")},
        "data_root": str(run.data_root),
        "recipe": run.recipe.name,
        "device": device_name(torch.device(run.device)),
    }
    report = {"stages": stages, "settings": settings, "versions": {**versions, "git_commit": git_commit()}}
    report["device"] = settings["device"]
    write_if_changed(work_dir / "report.json", (json.dumps(report, indent=1) + "\n").encode())
    for name in pictured_names(run):
        write_if_changed(work_dir / "report" / f"{name}.png", picture(run, name))
    write_if_changed(work_dir / "report.md", report_markdown(run, records, settings).encode())
    print(f"report: {work_dir / 'report.md'}")


# ---- script ----


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataset_arguments(parser)  # --dataset, --data_root and VOC's --voc12_root
    parser.add_argument("--weights", help="ImageNet ResNet-38 (.params or .pth), for CPN and DeepLab")
    parser.add_argument("--r50_weights", help="ImageNet ResNet-50 for IRNet (resnet50-19c8e357.pth or 'torchvision')")
    parser.add_argument("--work_dir", required=True, help="every stage's files, W/<stage>/, and the report")
    parser.add_argument(
        "--refine",
        choices=tuple(ROUTES),
        default="irn",
        help="the CAMs' refinement into pseudo masks: irn (the paper's: IRN's labels, IRNet, its walk) or aff "
        "(SEAM's chain: CRF label files, AffinityNet, its walk) (default %(default)s)",
    )
    stages = ALL_STAGE_NAMES
    parser.add_argument("--from", dest="from_stage", choices=stages, help="rerun this stage and the ones after")
    parser.add_argument("--until", choices=stages, help="stop after this stage")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cuda, cuda:N or cpu")
    parser.add_argument(
        "--deterministic", action="store_true", help="every stage with deterministic kernels (see the stages' --help)"
    )
    parser.add_argument("--toy", action="store_true", help="make the toy set in W/toy and use the demo's settings")
    parser.add_argument("--toy_images", type=int, nargs=2, default=TOY_IMAGES, metavar=("TRAIN", "VAL"))
    for stage in ("cpn", "irn", "aff", "seg"):
        parser.add_argument(f"--{stage}_steps", type=int, default=None, help=f"stop the {stage} training after N steps")
    args = parser.parse_args(argv)
    root = args.data_root or args.voc12_root
    if args.toy and (root or args.weights or args.r50_weights):
        parser.error("--toy makes its own data set and starts from random weights; drop the data and weights flags")
    on_irn = args.refine == "irn"  # only IRNet starts from the ResNet-50
    if not args.toy and not (root and args.weights and (args.r50_weights or not on_irn)):
        weights = "--weights and --r50_weights" if on_irn else "--weights"
        parser.error(f"pass the data set's folder (--voc12_root or --data_root), {weights}, or --toy")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    requested = None if args.device == "auto" else args.device
    # Each stage's call names the device kind, not its index: under torchrun every process takes its own GPU.
    device = resolve_device(requested).type if requested in (None, "cuda") else requested
    spec = DATASETS[args.dataset]
    if args.toy:
        data_root = Path(args.work_dir) / "toy" / ("VOC2012" if spec is VOC12 else "coco")
    else:
        data_root = Path(args.data_root or args.voc12_root)
    if args.voc12_root and spec is COCO14:
        raise UserError("--voc12_root names a VOC folder but --dataset is coco14; pass --data_root")
    recipe = toy_recipe(args, device) if args.toy else paper_recipe(args)
    run = Run(args, spec, data_root, device, recipe)
    records = run_stages(route_stages(run), Path(args.work_dir), first=args.from_stage, last=args.until)
    write_report(run, records)


if __name__ == "__main__":
    run_main(main)
