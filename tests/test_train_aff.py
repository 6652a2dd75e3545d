"""train_aff.py (SPEC_AFF §1–3): its flags, optimiser groups and schedule, one step, the training data set on the
toy set, the inputs it refuses, and a whole run at width 8 (CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import train_aff
from engine.errors import UserError
from engine.fileio import read_label_png
from engine.manifest import MANIFEST_NAME
from engine.runtime import ProcessGroup
from network import build_network
from tool import aff
from tool.constants import IMAGENET_MEAN, IMAGENET_STD
from voc12.data import AffTrainDataset, load_image_list, normalize_float32

CROP = 96  # a 12×12 grid: the smallest crops are 88 px (SPEC_AFF §6.10)
WIDTH = 8
CAM_SHA = "a" * 64
TINY = ["--crop_size", str(CROP), "--batch_size", "2", "--num_workers", "0", "--weights", "none"]
TINY += ["--width", str(WIDTH), "--log_every", "1"]
LOSS_NAMES = ("loss", "bg", "fg", "neg")
ONE_PROCESS = ProcessGroup()


def crf_dict(gt: np.ndarray, background_weight: float) -> dict[int, np.ndarray]:
    """A CRF label file's dict {0: bg, class + 1: …} (float32 H×W marginals summing to 1) leaning towards the
    ground truth `gt` (0 background, classes, 255 border → background), `background_weight` extra on bg."""
    classes = sorted(set(np.unique(gt).tolist()) - {0, 255})
    keys = [0, *classes]
    scores = np.stack([(gt == key).astype(np.float32) + 0.2 for key in keys])
    scores[0] += background_weight + (gt == 255)
    scores /= scores.sum(axis=0, keepdims=True)
    return {key: score.astype(np.float32) for key, score in zip(keys, scores)}


def write_manifest(folder: Path, sha: str = CAM_SHA) -> None:
    content = {"weights": "cam.pth", "weights_sha256": sha, "settings": {"output": "out_crf"}}
    (folder / MANIFEST_NAME).write_text(json.dumps(content))


@pytest.fixture(scope="module")
def crf_dirs(toy_voc, toy_lists, tmp_path_factory) -> tuple[Path, Path]:
    """la (alpha 4) and ha (alpha 24) CRF label files of every toy training image, from its ground truth, with
    manifests naming one CAM file."""
    root = tmp_path_factory.mktemp("crf")
    la_dir, ha_dir = root / "alpha_4", root / "alpha_24"
    for folder in (la_dir, ha_dir):
        folder.mkdir()
        write_manifest(folder)
    for name in load_image_list(toy_lists["train"]):
        gt = read_label_png(toy_voc / "SegmentationClass" / f"{name}.png")
        np.save(la_dir / f"{name}.npy", crf_dict(gt, 0.0))
        np.save(ha_dir / f"{name}.npy", crf_dict(gt, 0.6))
    return la_dir, ha_dir


def run_args(toy_voc, toy_lists, crf_dirs, out_dir, *extra) -> list[str]:
    la_dir, ha_dir = crf_dirs
    return [
        *("--voc12_root", str(toy_voc), "--train_list", str(toy_lists["train"])),
        *("--la_crf_dir", str(la_dir), "--ha_crf_dir", str(ha_dir)),
        *("--out_dir", str(out_dir), "--session_name", "run"),
        *TINY,
        *extra,
    ]


@pytest.fixture(scope="module")
def narrow_model() -> nn.Module:
    torch.manual_seed(0)
    return build_network(train_aff.NETWORK, width=WIDTH).train()


# --- flags, groups, schedule ------------------------------------------------------------------


def test_defaults_are_seams():
    args = train_aff.parse_args(["--la_crf_dir", "la", "--ha_crf_dir", "ha", "--weights", "w.params"])
    assert (args.batch_size, args.max_epoches, args.lr, args.wt_dec, args.crop_size) == (8, 8, 0.01, 5e-4, 448)
    assert args.session_name == "resnet38_aff" and args.width == 1 and args.seed == 0
    assert train_aff.momentum_of(args) == 5e-4  # SPEC_AFF §3 quirk: momentum = wt_dec
    assert Path(args.train_list).name == "train_aug.txt"
    assert train_aff.PSA_LR == 0.1
    with pytest.raises(SystemExit):
        train_aff.parse_args(["--weights", "w.params"])  # the CRF folders are required


def test_optimizer_groups_and_schedule_are_the_references(narrow_model):
    args = train_aff.parse_args(["--la_crf_dir", "la", "--ha_crf_dir", "ha", "--weights", "none"])
    optimizer = train_aff.build_optimizer(narrow_model, args, max_step=4)
    backbone, head = optimizer.param_groups
    assert [(group["initial_lr"], group["weight_decay"], group["momentum"]) for group in (backbone, head)] == [
        (0.01, 5e-4, 5e-4),
        (0.1, 5e-4, 5e-4),
    ]
    convs = {id(module.weight): name for name, module in narrow_model.named_modules() if isinstance(module, nn.Conv2d)}
    backbone_names = [convs[id(param)] for param in backbone["params"]]
    head_names = [convs[id(param)] for param in head["params"]]
    assert head_names == ["f8_3", "f8_4", "f8_5", "f9"]
    assert len(backbone_names) == 43  # SPEC_AFF §3: every backbone conv weight, 8 of them frozen (§6.2)
    frozen = [name for name, param in zip(backbone_names, backbone["params"]) if not param.requires_grad]
    assert len(frozen) == 8 and all(name.split(".")[0] in ("conv1a", "b2", "b2_1", "b2_2") for name in frozen)
    norms = {id(p) for m in narrow_model.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters()}
    assert not norms & {id(param) for group in optimizer.param_groups for param in group["params"]}
    lrs = []
    for _ in range(4):
        optimizer.step()  # no gradients: only the schedule moves
        lrs.append([group["lr"] for group in optimizer.param_groups])
    expected = [base * (1 - step / 4) ** 0.9 for step in range(4) for base in (0.01, 0.1)]
    assert [lr for step in lrs for lr in step] == pytest.approx(expected)


def random_confident_labels(generator: torch.Generator, batch: int = 2) -> torch.Tensor:
    values = torch.tensor([0, 1, 2, aff.NOT_CONFIDENT], dtype=torch.uint8)
    grid = CROP // 8
    return values[torch.randint(0, 4, (batch, grid, grid), generator=generator)]


def test_train_step_is_one_sgd_step_on_the_loss_and_moves_only_trainable_parameters(narrow_model):
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(2, 3, CROP, CROP, generator=generator)
    labels = aff.affinity_labels(random_confident_labels(generator))
    assert all(label.shape == (2, 34, 32) for label in labels)
    model = narrow_model
    args = train_aff.parse_args(["--la_crf_dir", "la", "--ha_crf_dir", "ha", "--weights", "none"])
    optimizer = train_aff.build_optimizer(model, args, max_step=10)
    state = {key: value.clone() for key, value in model.state_dict().items()}
    torch.manual_seed(5)  # the same dropout masks for the expected loss and the step
    with torch.no_grad():
        expected = aff.affinity_loss(model(images), *labels)
    torch.manual_seed(5)
    losses = train_aff.train_step(model, optimizer, images, labels)
    assert tuple(losses) == LOSS_NAMES and not any(value.requires_grad for value in losses.values())
    for name in LOSS_NAMES:
        torch.testing.assert_close(losses[name], expected[name])
    trainable = {name for name, param in model.named_parameters() if param.requires_grad}
    changed = {key for key, value in model.state_dict().items() if not torch.equal(value, state[key])}
    assert changed == trainable  # BN (γ, β, statistics), conv1a and b2* stay
    model.load_state_dict(state)


# --- data -------------------------------------------------------------------------------------


def test_dataset_samples_are_crops_and_confident_labels(toy_voc, toy_lists, crf_dirs):
    names = load_image_list(toy_lists["train"])[:4]
    dataset = AffTrainDataset(toy_voc, names, *crf_dirs, crop_size=CROP, seed=3)
    sample = dataset[1, 2]
    assert sample["name"] == names[2]
    assert sample["img"].shape == (3, CROP, CROP) and sample["img"].dtype == torch.float32
    assert sample["label"].shape == (CROP // 8, CROP // 8) and sample["label"].dtype == torch.uint8
    again = dataset[1, 2]
    assert torch.equal(again["img"], sample["img"]) and torch.equal(again["label"], sample["label"])
    keys = len(np.load(crf_dirs[0] / f"{names[2]}.npy", allow_pickle=True).item())
    assert set(sample["label"].unique().tolist()) <= {*range(keys), aff.NOT_CONFIDENT}
    assert not torch.equal(dataset[0, 2]["img"], sample["img"])  # another epoch, another augmentation


def test_padding_is_black_and_not_confident(toy_voc, toy_lists, crf_dirs):
    """SPEC_AFF §6.7: crop, then normalise (black padding); blocks wholly in the padding are 255 (§2)."""
    names = load_image_list(toy_lists["train"])
    dataset = AffTrainDataset(toy_voc, names, *crf_dirs, crop_size=CROP)
    sizes = [dataset[index]["img"] for index in range(len(names))]
    black = torch.from_numpy(normalize_float32(np.zeros((1, 1, 3), np.float32))[0, 0])  # float32 (§6.8)
    torch.testing.assert_close(black, -torch.tensor(IMAGENET_MEAN) / torch.tensor(IMAGENET_STD))
    padded = next(index for index, img in enumerate(sizes) if (img == black[:, None, None]).all(dim=0).any())
    img, label = sizes[padded], dataset[padded]["label"]
    pad_blocks = (img == black[:, None, None]).all(dim=0).view(CROP // 8, 8, CROP // 8, 8).all(dim=3).all(dim=1)
    assert pad_blocks.any() and (label[pad_blocks] == aff.NOT_CONFIDENT).all()


def test_a_crop_the_labels_and_pairs_disagree_on_is_refused(toy_voc, toy_lists, crf_dirs):
    names = load_image_list(toy_lists["train"])[:2]
    with pytest.raises(UserError, match=r"^--crop_size 80: use a multiple of 8 of at least 88"):
        AffTrainDataset(toy_voc, names, *crf_dirs, crop_size=80)
    with pytest.raises(UserError, match=r"^--crop_size 100: use a multiple of 8"):
        AffTrainDataset(toy_voc, names, *crf_dirs, crop_size=100)


# --- bad inputs ----------------------------------------------------------------------------------


def copied_crf_dirs(crf_dirs, tmp_path: Path, names) -> tuple[Path, Path]:
    copies = []
    for source in crf_dirs:
        folder = tmp_path / source.name
        folder.mkdir()
        for name in names:
            (folder / f"{name}.npy").write_bytes((source / f"{name}.npy").read_bytes())
        (folder / MANIFEST_NAME).write_bytes((source / MANIFEST_NAME).read_bytes())
        copies.append(folder)
    return copies[0], copies[1]


def test_a_missing_crf_file_is_named(toy_voc, toy_lists, crf_dirs, tmp_path):
    names = load_image_list(toy_lists["train"])[:3]
    la_dir, ha_dir = copied_crf_dirs(crf_dirs, tmp_path, names)
    (ha_dir / f"{names[1]}.npy").unlink()
    with pytest.raises(UserError, match=rf"^CRF label file {ha_dir / names[1]}.npy of --ha_crf_dir not found; make"):
        AffTrainDataset(toy_voc, names, la_dir, ha_dir, crop_size=CROP)


def test_a_crf_file_of_another_image_size_is_named(toy_voc, toy_lists, crf_dirs, tmp_path):
    names = load_image_list(toy_lists["train"])[:2]
    la_dir, ha_dir = copied_crf_dirs(crf_dirs, tmp_path, names)
    content = np.load(la_dir / f"{names[0]}.npy", allow_pickle=True).item()
    np.save(la_dir / f"{names[0]}.npy", {key: value[:-8] for key, value in content.items()})
    dataset = AffTrainDataset(toy_voc, names, la_dir, ha_dir, crop_size=CROP)
    with pytest.raises(UserError, match=rf"^CRF label file {la_dir / names[0]}.npy holds maps of shape .*another"):
        dataset[0]
    content = np.load(ha_dir / f"{names[1]}.npy", allow_pickle=True).item()
    np.save(ha_dir / f"{names[1]}.npy", {**content, 99: content[0]})
    with pytest.raises(UserError, match=r"hold other classes .* make both folders in one infer_cam.py run$"):
        dataset[1]


def test_crf_folders_of_different_cams_are_refused(toy_voc, toy_lists, crf_dirs, tmp_path):
    names = load_image_list(toy_lists["train"])[:1]
    la_dir, ha_dir = copied_crf_dirs(crf_dirs, tmp_path, names)
    write_manifest(ha_dir, sha="b" * 64)
    args = train_aff.parse_args(["--la_crf_dir", str(la_dir), "--ha_crf_dir", str(ha_dir), "--weights", "none"])
    with pytest.raises(UserError, match=r"^--la_crf_dir .* and --ha_crf_dir .* were made from different CAM weights"):
        train_aff.crf_inputs(args, ONE_PROCESS)
    write_manifest(ha_dir)
    inputs = train_aff.crf_inputs(args, ONE_PROCESS)
    assert inputs["la_crf_dir"]["weights_sha256"] == inputs["ha_crf_dir"]["weights_sha256"] == CAM_SHA


@pytest.mark.parametrize(
    ("key", "what"),
    [
        ("layer1.0.conv1.weight", "ResNet-50 weights"),
        ("backbone.conv1a.weight", "DeepLab weights"),
        ("fc8.weight", "weights of a CAM network"),
    ],
)
def test_other_networks_weights_are_refused_in_one_line(toy_voc, toy_lists, crf_dirs, tmp_path, key, what):
    path = tmp_path / "other.pth"
    torch.save({key: torch.zeros(8, 3, 1, 1), "conv1a.weight": torch.zeros(8, 3, 3, 3)}, path)
    args = train_aff.parse_args(run_args(toy_voc, toy_lists, crf_dirs, tmp_path, "--weights", str(path)))
    dataset = AffTrainDataset(toy_voc, load_image_list(toy_lists["train"])[:1], *crf_dirs, crop_size=CROP)
    with pytest.raises(UserError, match=rf"^weights file {path} holds {what}.*not AffinityNet ResNet-38"):
        train_aff.build_model(args, dataset, ONE_PROCESS)


# --- a whole run ----------------------------------------------------------------------------------


def logged(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "run.jsonl").read_text().splitlines()]


@pytest.mark.slow  # two runs of the script (~15 s on the 2-core dev box)
def test_a_run_writes_loadable_weights_and_resumes(toy_voc, toy_lists, crf_dirs, tmp_path):
    train_aff.main(run_args(toy_voc, toy_lists, crf_dirs, tmp_path, "--max_steps", "2"))
    records = logged(tmp_path)
    assert [record["step"] for record in records] == [1, 2]
    assert all(np.isfinite([record[name] for name in LOSS_NAMES]).all() for record in records)
    assert records[0]["lr"] == pytest.approx(0.01) and records[1]["lr"] < records[0]["lr"]
    first_line = (tmp_path / "run.log").read_text().splitlines()[0]
    assert first_line.startswith(f"{toy_lists['train']}: 48 images, 24 steps/epoch × 8 epochs = 192 steps, batch 2×1")
    record = json.loads((tmp_path / "run.json").read_text())
    assert record["inputs"]["la_crf_dir"]["weights_sha256"] == CAM_SHA and record["args"]["width"] == WIDTH
    weights = torch.load(tmp_path / "run.pth", weights_only=True)
    build_network(train_aff.NETWORK, width=WIDTH).load_state_dict(weights, strict=True)
    checkpoint = torch.load(tmp_path / "run_checkpoints" / "step_0000002.pt", weights_only=True)
    assert checkpoint["optimizer"]["max_step"] == 48 // 2 * 8

    train_aff.main(run_args(toy_voc, toy_lists, crf_dirs, tmp_path, "--max_steps", "3", "--resume", "auto"))
    assert [record["step"] for record in logged(tmp_path)] == [1, 2, 3]
    assert "resumed from" in (tmp_path / "run.log").read_text()
