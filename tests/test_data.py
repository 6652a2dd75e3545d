"""voc12/data.py and voc12/make_cls_labels.py: labels, datasets, and the errors a user can cause
(list reading is tested in test_lists.py)."""

import io
import pickle
import shutil
import subprocess
import sys
from pathlib import Path
from xml.dom import minidom

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import default_collate

from engine.datasets import SBD_AUG_LABELS, VOC12, VOC_TRAIN_AUG_IMAGES, VOC_TRAIN_IMAGES, VOC_VAL_IMAGES
from engine.errors import UserError, run_main
from engine.fileio import read_label_png, read_rgb
from tests.tiny import write_label_pngs
from tool.constants import IMAGENET_MEAN, IMAGENET_STD
from tool.imutils import train_transform
from tool.irn import PathIndex, affinity_labels, quarter_label, search_dst
from voc12.data import (
    InferDataset,
    IrnCalibrationDataset,
    IrnTrainDataset,
    TrainDataset,
    cls_labels_from_xml,
    irn_augment,
    load_cls_labels,
    load_image_list,
    sample_seed,
)
from voc12.make_cls_labels import main as make_cls_labels_main
from voc12.make_cls_labels import make_cls_labels, train_aug_warning
from voc12.toy import make_toy_voc

REPO = Path(__file__).resolve().parent.parent
CROP = 48
SMALL_RESIZE = (40, 96)  # long side drawn from here: some images end up smaller than the crop


# ---------- slow, obviously-correct references written from the reference code / SPEC ----------


def reference_xml_label(xml_path: Path) -> np.ndarray:
    """The reference's label: every <name> element whose text is one of the 20 classes."""
    label = np.zeros(20, np.float32)
    for element in minidom.parse(str(xml_path)).getElementsByTagName("name"):
        if element.firstChild.data in VOC12.class_names[1:]:
            label[VOC12.class_names[1:].index(element.firstChild.data)] = 1.0
    return label


def reference_normalize(image: Image.Image) -> np.ndarray:
    """(x / 255 - mean) / std per channel, CHW float32."""
    pixels = np.asarray(image, np.float64) / 255.0
    channels = [(pixels[..., c] - IMAGENET_MEAN[c]) / IMAGENET_STD[c] for c in range(3)]
    return np.stack(channels).astype(np.float32)


def write_root(root: Path, images: dict[str, Image.Image], file_format: str = "JPEG") -> Path:
    """A minimal VOC2012 folder holding `images` (written in `file_format`, always named .jpg)."""
    (root / "JPEGImages").mkdir(parents=True)
    for name, image in images.items():
        image.save(root / "JPEGImages" / f"{name}.jpg", format=file_format)
    return root


def one_hot(*class_names: str) -> np.ndarray:
    label = np.zeros(20, np.float32)
    for class_name in class_names:
        label[VOC12.class_names.index(class_name) - 1] = 1.0
    return label


def random_image(seed: int, width: int, height: int, mode: str = "RGB") -> Image.Image:
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, channels), dtype=np.uint8)
    return Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels)


# ---------- class labels ----------


def test_make_cls_labels_on_the_toy_set(toy_voc, toy_lists):
    train = (toy_voc / "ImageSets/Segmentation/train.txt").read_text().split()
    val = (toy_voc / "ImageSets/Segmentation/val.txt").read_text().split()
    assert load_image_list(toy_lists["train"]) == sorted(train)
    assert load_image_list(toy_lists["val"]) == sorted(val)
    assert load_image_list(toy_lists["train_aug"]) == sorted(train), "no SegmentationClassAug: train_aug = train"
    labels = load_cls_labels(toy_lists["cls_labels"])
    assert sorted(labels) == sorted(train + val)
    for name, label in labels.items():
        assert label.dtype == np.float32 and label.shape == (20,)
        assert np.array_equal(label, reference_xml_label(toy_voc / "Annotations" / f"{name}.xml"))
        assert 1 <= label.sum() <= 3
    raw = np.load(toy_lists["cls_labels"], allow_pickle=True).item()  # the reference's own way of reading it
    assert isinstance(raw, dict) and raw.keys() == labels.keys()


def test_labels_from_npy_xml_and_png_agree(toy_voc, toy_lists):
    names = load_image_list(toy_lists["train"]) + load_image_list(toy_lists["val"])
    from_npy = load_cls_labels(toy_lists["cls_labels"])
    from_xml = cls_labels_from_xml(toy_voc, names)
    for name in names:
        # The classes painted in the ground truth, background (0) and void (255) left out.
        painted = set(np.unique(read_label_png(toy_voc / "SegmentationClass" / f"{name}.png")).tolist()) - {0, 255}
        assert np.array_equal(from_npy[name], from_xml[name])
        assert np.array_equal(from_xml[name], one_hot(*(VOC12.class_names[index] for index in painted)))


def test_xml_labels_count_difficult_objects_and_skip_part_names(tmp_path):
    (tmp_path / "Annotations").mkdir()
    xml = """<annotation><object><name>person</name><difficult>0</difficult>
        <part><name>head</name></part></object>
        <object><name> dog </name><difficult>1</difficult></object>
        <object><name>unicorn</name></object></annotation>"""
    (tmp_path / "Annotations" / "x.xml").write_text(xml)
    assert np.array_equal(cls_labels_from_xml(tmp_path, ["x"])["x"], one_hot("person", "dog"))
    (tmp_path / "Annotations" / "broken.xml").write_text("<annotation><object>")
    with pytest.raises(UserError, match="broken.xml"):
        cls_labels_from_xml(tmp_path, ["broken"])
    with pytest.raises(UserError, match="absent.xml"):
        cls_labels_from_xml(tmp_path, ["absent"])


def test_make_cls_labels_with_augmented_set(tmp_path):
    root = make_toy_voc(tmp_path / "VOC2012", num_train=4, num_val=2)
    names = sorted(path.stem for path in (root / "JPEGImages").glob("*.jpg"))
    split_dir = root / "ImageSets" / "Segmentation"
    split_dir.joinpath("train.txt").write_text(f"{names[3]}\n{names[0]}\n")
    split_dir.joinpath("val.txt").write_text(f"{names[4]}\n{names[5]}\n")
    (root / "SegmentationClassAug").mkdir()
    for name in (names[1], names[2], names[4]):  # one val image is in the aug set too
        shutil.copy(root / "SegmentationClass" / f"{name}.png", root / "SegmentationClassAug" / f"{name}.png")
    written = make_cls_labels(root, tmp_path / "out")
    paths = written.paths
    assert written.warning is None  # not VOC 2012's official lists: nothing to compare with
    assert load_image_list(paths["train_aug"]) == [names[0], names[1], names[2], names[3]]
    assert load_image_list(paths["train"]) == [names[0], names[3]]
    assert load_image_list(paths["val"]) == [names[4], names[5]]
    assert sorted(load_cls_labels(paths["cls_labels"])) == names


def test_unknown_patch_strategy_is_a_user_error(toy_voc, toy_lists):
    names = load_image_list(toy_lists["train"])[:2]
    with pytest.raises(UserError, match="unknown patch strategy 'pixel'; choose one of superpixel, grid"):
        TrainDataset(toy_voc, names, toy_lists["cls_labels"], patch_strategy="pixel")


def official_splits(num_train_aug: int) -> dict[str, list[str]]:
    return {
        "train": [f"t{index}" for index in range(VOC_TRAIN_IMAGES)],
        "val": [f"v{index}" for index in range(VOC_VAL_IMAGES)],
        "train_aug": [f"a{index}" for index in range(num_train_aug)],
    }


def test_train_aug_warning_names_what_is_missing():
    assert train_aug_warning(official_splits(VOC_TRAIN_AUG_IMAGES), SBD_AUG_LABELS) is None
    assert train_aug_warning(official_splits(VOC_TRAIN_IMAGES), None) == (
        "train_aug has 1,464 images, not the paper's 10,582: there is no SegmentationClassAug folder (SBD's "
        "masks; README, step 1); the reference schedule on it is 2,928 steps instead of 21,160"
    )
    assert train_aug_warning(official_splits(9000), 10449) == (
        "train_aug has 9,000 images, not the paper's 10,582: SegmentationClassAug holds 10,449 PNGs, the usual "
        "download 12,031; the reference schedule on it is 18,000 steps instead of 21,160"
    )
    other_data = official_splits(100)
    other_data["val"] = other_data["val"][:16]
    assert train_aug_warning(other_data, None) is None


def test_make_cls_labels_warns_on_the_official_lists_without_sbd(tmp_path, capsys):
    root = make_toy_voc(tmp_path / "VOC2012", num_train=2, num_val=1)
    split_dir = root / "ImageSets" / "Segmentation"
    # VOC 2012's list sizes, names without images: list making reads the lists, the XML of each name
    # is read for the labels, so give every name the first image's annotation.
    first_xml = next((root / "Annotations").glob("*.xml")).read_bytes()
    splits = official_splits(0)
    for split in ("train", "val"):
        split_dir.joinpath(f"{split}.txt").write_text("".join(f"{name}\n" for name in splits[split]))
        for name in splits[split]:
            (root / "Annotations" / f"{name}.xml").write_bytes(first_xml)
    make_cls_labels_main(["--voc12_root", str(root), "--out_dir", str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert "train_aug.txt (1464 images)" in captured.out
    assert captured.err.strip() == ("warning: " + train_aug_warning(official_splits(VOC_TRAIN_IMAGES), None))


@pytest.mark.slow  # the script in a new process
def test_make_cls_labels_as_a_script(toy_voc, tmp_path):
    result = subprocess.run(
        [sys.executable, "voc12/make_cls_labels.py", "--voc12_root", str(toy_voc), "--out_dir", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "train_aug.txt (48 images)" in result.stdout
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "cls_labels.npy",
        "train.txt",
        "train_aug.txt",
        "val.txt",
    ]


def test_make_cls_labels_main_and_its_error_line(toy_voc, tmp_path, capsys):
    make_cls_labels_main(["--voc12_root", str(toy_voc), "--out_dir", str(tmp_path)])
    assert "val.txt (16 images)" in capsys.readouterr().out
    assert (tmp_path / "cls_labels.npy").is_file()
    with pytest.raises(SystemExit) as exit_info:
        run_main(lambda: make_cls_labels_main(["--voc12_root", str(toy_voc.parent)]))
    assert exit_info.value.code == (
        f"error: {toy_voc.parent} is not the VOC2012 folder (it has no JPEGImages); pass {toy_voc}"
    )


def numpy1_pickled_npy(path: Path, value: dict) -> None:
    """An .npy as numpy 1 wrote it: protocol-2 pickle naming numpy.core (numpy 2 names numpy._core)."""
    holder = np.empty((), object)
    holder[()] = value
    raw = pickle.dumps(holder, protocol=2).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray" in raw
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|O", "fortran_order": False, "shape": ()})
    path.write_bytes(header.getvalue() + raw)


def test_load_cls_labels_reads_a_numpy1_file(tmp_path):
    path = tmp_path / "cls_labels.npy"
    numpy1_pickled_npy(path, {"2007_000032": one_hot("aeroplane", "person"), "2007_000039": one_hot("tvmonitor")})
    labels = load_cls_labels(path)
    assert sorted(labels) == ["2007_000032", "2007_000039"]
    assert np.array_equal(labels["2007_000039"], one_hot("tvmonitor")) and labels["2007_000039"].dtype == np.float32


@pytest.mark.parametrize("content", ["plain_array", "wrong_length", "not_npy", "int_keys"])
def test_load_cls_labels_rejects_wrong_content(tmp_path, content):
    path = tmp_path / "cls_labels.npy"
    if content == "plain_array":
        np.save(path, np.zeros((3, 20), np.float32))
    elif content == "wrong_length":
        np.save(path, {"a": np.zeros(21, np.float32)})
    elif content == "int_keys":
        np.save(path, {1: np.zeros(20, np.float32)})
    else:
        path.write_text("2007_000032\n")
    with pytest.raises(UserError, match="cls_labels.npy"):
        load_cls_labels(path)


def test_load_cls_labels_missing_file(tmp_path):
    with pytest.raises(UserError, match="absent.npy.*make_cls_labels"):
        load_cls_labels(tmp_path / "absent.npy")


# ---------- TrainDataset ----------


@pytest.fixture(scope="module")
def train_names(toy_lists):
    return load_image_list(toy_lists["train"])[:6]


@pytest.mark.parametrize("strategy", ["superpixel", "grid"])
def test_train_sample_fields(toy_voc, toy_lists, train_names, strategy):
    dataset = TrainDataset(
        toy_voc, train_names, toy_lists["cls_labels"], crop_size=CROP, resize_long=SMALL_RESIZE, patch_strategy=strategy
    )
    labels = load_cls_labels(toy_lists["cls_labels"])
    assert len(dataset) == len(train_names)
    for index in range(len(dataset)):
        sample = dataset[index]
        assert sample["name"] == train_names[index]
        for key in ("img", "img_kept", "img_hidden"):
            assert sample[key].shape == (3, CROP, CROP) and sample[key].dtype == torch.float32
        assert torch.equal(sample["img_kept"] + sample["img_hidden"], sample["img"])
        kept = (sample["img_kept"] != 0).any(0)
        hidden = (sample["img_hidden"] != 0).any(0)
        assert not (kept & hidden).any(), "a pixel is either kept or hidden"
        assert sample["label"].dtype == torch.float32 and sample["label"].shape == (20,)
        assert np.array_equal(sample["label"].numpy(), labels[train_names[index]])
        for key in ("kept_fraction", "hidden_fraction"):
            assert sample[key].dtype == torch.float32 and sample[key].shape == ()
            assert 0.0 <= sample[key] <= 1.0
        assert sample["kept_fraction"] + sample["hidden_fraction"] == pytest.approx(1.0)
        assert kept.float().mean() <= sample["kept_fraction"] + 1e-6  # zero-padded pixels count as kept
    batch = default_collate([dataset[0], dataset[1]])
    assert batch["img"].shape == (2, 3, CROP, CROP) and batch["kept_fraction"].dtype == torch.float32
    assert batch["label"].shape == (2, 20) and batch["name"] == train_names[:2]


def test_train_sample_is_a_pure_function_of_seed_epoch_index(toy_voc, toy_lists, train_names):
    def make(seed=0):
        return TrainDataset(
            toy_voc,
            train_names,
            load_cls_labels(toy_lists["cls_labels"]),
            crop_size=CROP,
            resize_long=SMALL_RESIZE,
            seed=seed,
        )

    def same(a, b):
        return all(torch.equal(a[key], b[key]) for key in ("img", "img_kept", "img_hidden", "kept_fraction"))

    first, second = make(), make()
    torch.manual_seed(123)
    np.random.seed(123)
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()[1].copy()
    reference = first[2, 4]
    assert torch.equal(torch.get_rng_state(), torch_state), "the global torch RNG must be left alone"
    assert np.array_equal(np.random.get_state()[1], numpy_state)
    second[0, 1], second[5, 4]  # other samples first: access order does not matter
    assert same(second[2, 4], reference)
    assert same(first[2, 4], reference)
    assert same(first[4], first[0, 4]), "a plain index is epoch 0"
    assert same(first[-1], first[0, len(first) - 1])
    assert not same(first[3, 4], reference), "another epoch draws another augmentation"
    assert not same(make(seed=1)[2, 4], reference)
    assert len({sample_seed(0, epoch, index) for epoch in range(20) for index in range(50)}) == 1000
    with pytest.raises(IndexError):
        first[len(first)]


def test_train_dataset_errors(toy_voc, toy_lists, train_names, tmp_path):
    labels = load_cls_labels(toy_lists["cls_labels"])
    with pytest.raises(UserError, match=f"no_such_image.*no class label in class-label file {toy_lists['cls_labels']}"):
        TrainDataset(toy_voc, [*train_names, "no_such_image"], toy_lists["cls_labels"])
    with pytest.raises(UserError, match=f"no_such_image.*no class label in class-label file {toy_lists['cls_labels']}"):
        TrainDataset(toy_voc, [*train_names, "no_such_image"], labels)
    with pytest.raises(UserError, match="no_such_image.*no class label in the class labels given"):
        InferDataset(toy_voc, [*train_names, "no_such_image"], dict(labels))
    with pytest.raises(UserError, match="image not found: .*ghost.jpg"):
        TrainDataset(toy_voc, ["ghost"], {"ghost": one_hot("cat")})
    with pytest.raises(UserError, match="patch strategy 'tiles'"):
        TrainDataset(toy_voc, train_names, labels, patch_strategy="tiles")
    with pytest.raises(UserError, match="pass"):
        TrainDataset(toy_voc.parent, train_names, labels)


# ---------- InferDataset ----------


def test_infer_inputs_scales_and_flips(tmp_path):
    image = random_image(0, 37, 23)
    root = write_root(tmp_path / "VOC2012", {"odd": image}, file_format="PNG")  # lossless, to compare pixels
    scales = (0.5, 1.0, 1.5, 0.7)
    sample = InferDataset(root, ["odd"], {"odd": one_hot("cow")}, scales=scales)[0]
    assert sample["name"] == "odd"
    assert sample["image"].dtype == np.uint8 and np.array_equal(sample["image"], np.asarray(image))
    assert np.array_equal(sample["label"].numpy(), one_hot("cow")) and sample["label"].dtype == torch.float32
    assert len(sample["inputs"]) == len(scales)
    expected_sizes = [(12, 18), (23, 37), (34, 56), (16, 26)]  # round(side·s), half to even: 11.5 -> 12, 18.5 -> 18
    for size, pair in zip(expected_sizes, sample["inputs"]):
        assert pair.shape == (2, 3, *size) and pair.dtype == torch.float32
        assert torch.equal(pair[1], pair[0].flip(-1))
        scaled = image.resize(size[::-1], resample=Image.Resampling.BICUBIC)
        np.testing.assert_allclose(pair[0].numpy(), reference_normalize(scaled), atol=1e-5)


def test_infer_default_scales_on_the_toy_set(toy_voc, toy_lists):
    names = load_image_list(toy_lists["val"])[:2]
    dataset = InferDataset(toy_voc, names, toy_lists["cls_labels"])
    sample = dataset[1]
    height, width, _ = sample["image"].shape
    assert [tuple(pair.shape) for pair in sample["inputs"]] == [
        (2, 3, round(height * scale), round(width * scale)) for scale in (0.5, 1.0, 1.5, 2.0)
    ]


@pytest.mark.parametrize("mode,file_format", [("L", "JPEG"), ("RGBA", "PNG"), ("P", "PNG"), ("L", "PNG")])
def test_images_of_other_modes_load_as_rgb(tmp_path, mode, file_format):
    image = random_image(1, 30, 20, "RGB").convert(mode) if mode == "P" else random_image(1, 30, 20, mode)
    root = write_root(tmp_path / "VOC2012", {"x": image}, file_format=file_format)
    sample = InferDataset(root, ["x"], {"x": one_hot("car")}, scales=(1.0,))[0]
    assert sample["image"].shape == (20, 30, 3) and sample["image"].dtype == np.uint8
    train_sample = TrainDataset(root, ["x"], {"x": one_hot("car")}, crop_size=16, resize_long=(24, 32))[0]
    assert train_sample["img"].shape == (3, 16, 16)


def test_truncated_jpeg_is_a_user_error(tmp_path):
    root = write_root(tmp_path / "VOC2012", {"cut": random_image(2, 40, 40)})
    path = root / "JPEGImages" / "cut.jpg"
    path.write_bytes(path.read_bytes()[:200])
    dataset = InferDataset(root, ["cut"], {"cut": one_hot("cat")}, scales=(1.0,))
    with pytest.raises(UserError, match="cut.jpg"):
        dataset[0]
    with pytest.raises(UserError, match="cut.jpg"):
        TrainDataset(root, ["cut"], {"cut": one_hot("cat")}, crop_size=16)[0]


# ---------- IRN datasets (SPEC-IRN §5, §7) ----------

IRN_CROP = 96  # the smallest sizes the radius-10 path index fits are multiples of 4 from 76


@pytest.fixture(scope="module")
def ir_labels(toy_label_pngs):
    """Confident labels as cam_to_ir_label.py writes them, here the toy ground truth."""
    return toy_label_pngs


def slow_affinity_labels(quarter: np.ndarray, radius: int = 10) -> dict[str, np.ndarray]:
    """SPEC-IRN §3, §5 by loops over directions and sources (source (y, rf + x), destination
    (y + dy, rf + x + dx), directions in search_dst order)."""
    rf = int(np.ceil(radius)) - 1
    height, width = quarter.shape
    ch, cw = height - rf, width - 2 * rf
    out = {key: np.zeros((len(search_dst(radius)), ch * cw), np.uint8) for key in ("bg_pos", "fg_pos", "neg")}
    for d, (dy, dx) in enumerate(search_dst(radius)):
        for y in range(ch):
            for x in range(cw):
                source, dest = int(quarter[y, rf + x]), int(quarter[y + dy, rf + x + dx])
                if source < 21 and dest < 21:
                    key = "neg" if source != dest else ("bg_pos" if source == 0 else "fg_pos")
                    out[key][d, y * cw + x] = 1
    return out


def test_irn_sample_fields_and_the_affinity_labels_of_its_batch(toy_voc, train_names, ir_labels):
    dataset = IrnTrainDataset(toy_voc, train_names, ir_labels, crop_size=IRN_CROP, seed=3)
    grid = IRN_CROP // 4
    for index in range(3):
        sample = dataset[1, index]
        assert set(sample) == {"name", "img", "label"}, "the affinity labels are made on the device, not shipped"
        assert sample["name"] == train_names[index]
        assert sample["img"].shape == (3, IRN_CROP, IRN_CROP) and sample["img"].dtype == torch.float32
        assert sample["label"].shape == (grid, grid) and sample["label"].dtype == torch.uint8
        # the same draws again: the quarter label is SPEC-IRN §5's reduction of the augmented label
        torch.manual_seed(sample_seed(3, 1, index))
        image = read_rgb(toy_voc / "JPEGImages" / f"{train_names[index]}.jpg")
        img, label = irn_augment(image, read_label_png(ir_labels / f"{train_names[index]}.png"), IRN_CROP)
        assert torch.equal(img, sample["img"])
        assert np.array_equal(sample["label"].numpy(), quarter_label(label))
    assert set(np.unique(sample["label"])) <= set(range(21)) | {255}
    # what train_irn.train_step makes of a batch: SPEC-IRN §5 per sample
    batch = default_collate([dataset[0], dataset[1]])
    labels = affinity_labels(batch["label"], PathIndex(10, (grid, grid)), VOC12.num_classes)
    for n in range(2):
        expected = slow_affinity_labels(batch["label"][n].numpy())
        for key in ("bg_pos", "fg_pos", "neg"):
            assert labels[key].shape == (2, len(search_dst(10)), (grid - 9) * (grid - 18))
            assert np.array_equal(labels[key][n].numpy(), expected[key]), key
    total = labels["bg_pos"] + labels["fg_pos"] + labels["neg"]
    assert total.max() <= 1, "the three labels are disjoint"


def test_irn_sample_is_a_pure_function_of_seed_epoch_index(toy_voc, train_names, ir_labels):
    dataset = IrnTrainDataset(toy_voc, train_names, ir_labels, crop_size=IRN_CROP)
    torch.manual_seed(5)
    state = torch.get_rng_state()
    reference = dataset[2, 4]
    assert torch.equal(torch.get_rng_state(), state), "the global torch RNG must be left alone"
    dataset[0, 1]
    assert torch.equal(dataset[2, 4]["img"], reference["img"])
    assert torch.equal(dataset[0, 4]["img"], dataset[4]["img"])
    assert not torch.equal(dataset[3, 4]["img"], reference["img"])
    other_seed = IrnTrainDataset(toy_voc, train_names, ir_labels, crop_size=IRN_CROP, seed=1)
    assert not torch.equal(other_seed[2, 4]["img"], reference["img"])
    with pytest.raises(IndexError):
        dataset[len(dataset)]


def test_per_sample_seeding_leaves_the_cuda_generators_alone(toy_voc, toy_lists, train_names, ir_labels, monkeypatch):
    # the streams torch.manual_seed gave before: the samples must not change
    image = read_rgb(toy_voc / "JPEGImages" / f"{train_names[1]}.jpg")
    torch.manual_seed(sample_seed(0, 2, 1))
    expected_crop = train_transform(image, crop_size=CROP, resize_long=SMALL_RESIZE)
    torch.manual_seed(sample_seed(0, 2, 1))
    expected_irn, _ = irn_augment(image, read_label_png(ir_labels / f"{train_names[1]}.png"), IRN_CROP)

    cuda_seeds = []  # simulated: no GPU here, so torch.manual_seed would queue them for CUDA's lazy init
    for name in ("manual_seed", "manual_seed_all"):
        monkeypatch.setattr(torch.cuda, name, lambda seed, name=name: cuda_seeds.append((name, seed)))
    queued = list(torch.cuda._lazy_seed_tracker.get_calls())
    train = TrainDataset(toy_voc, train_names, toy_lists["cls_labels"], crop_size=CROP, resize_long=SMALL_RESIZE)
    irn = IrnTrainDataset(toy_voc, train_names, ir_labels, crop_size=IRN_CROP)
    assert torch.equal(train[2, 1]["img"], expected_crop)
    assert torch.equal(irn[2, 1]["img"], expected_irn)
    assert cuda_seeds == [] and list(torch.cuda._lazy_seed_tracker.get_calls()) == queued


@pytest.mark.parametrize("seed", range(6))
def test_irn_augment_scale_flip_crop_and_fills(seed):
    # left half red with label 1, right half blue with label 2, on a 40×60 image: smaller than the crop
    # at every scale, so the crop pastes it and the fills show
    pixels = np.zeros((40, 60, 3), np.uint8)
    pixels[:, :30] = (230, 20, 20)
    pixels[:, 30:] = (20, 20, 230)
    label = np.ones((40, 60), np.uint8)
    label[:, 30:] = 2
    torch.manual_seed(seed)
    scale = 0.5 + torch.rand(()).item()
    torch.manual_seed(seed)
    img, out = irn_augment(Image.fromarray(pixels), label, 96)
    assert img.shape == (3, 96, 96) and out.shape == (96, 96) and out.dtype == np.uint8
    inside = out != 255
    assert inside.sum() == round(40 * scale) * round(60 * scale)  # SPEC-IRN §7: round(side·s), Python's round
    assert set(np.unique(out)) == {1, 2, 255}
    assert (img[:, torch.from_numpy(~inside)] == 0).all(), "image fill 0"
    red = img[0] - img[2]  # normalised red minus blue: > 0 on the red half, < 0 on the blue half
    assert (red[torch.from_numpy(out == 1)] > 0).float().mean() > 0.95
    assert (red[torch.from_numpy(out == 2)] < 0).float().mean() > 0.95


def test_irn_dataset_errors(toy_voc, train_names, ir_labels, tmp_path):
    with pytest.raises(UserError, match=f"{train_names[0]}.png.* not found in {tmp_path}.*cam_to_ir_label.py"):
        IrnTrainDataset(toy_voc, train_names, tmp_path, crop_size=IRN_CROP)
    with pytest.raises(UserError, match="--irn_crop_size 64: use a multiple of 4 of at least 76"):
        IrnTrainDataset(toy_voc, train_names, ir_labels, crop_size=64)
    with pytest.raises(UserError, match="--irn_crop_size 98"):
        IrnTrainDataset(toy_voc, train_names, ir_labels, crop_size=98)
    bad = write_label_pngs(toy_voc, train_names[:1], tmp_path / "bad")
    label = read_label_png(bad / f"{train_names[0]}.png").copy()
    label[0, :3] = (21, 37, 254)
    Image.fromarray(label, mode="L").save(bad / f"{train_names[0]}.png")
    dataset = IrnTrainDataset(toy_voc, train_names[:1], bad, crop_size=IRN_CROP)
    with pytest.raises(UserError, match=r"holds values outside 0–20/255 \(21, 37, 254\)"):
        dataset[0]
    Image.fromarray(read_label_png(ir_labels / f"{train_names[0]}.png")[:, :-1]).save(bad / f"{train_names[0]}.png")
    with pytest.raises(UserError, match="confident label .* is .*, its image"):
        dataset[0]


def test_irn_calibration_crops_top_left_with_zero_fill(toy_voc, train_names):
    dataset = IrnCalibrationDataset(toy_voc, train_names[:3], crop_size=IRN_CROP)
    for index in range(3):
        image = read_rgb(toy_voc / "JPEGImages" / f"{train_names[index]}.jpg")
        height, width = min(image.height, IRN_CROP), min(image.width, IRN_CROP)
        expected = torch.zeros(3, IRN_CROP, IRN_CROP)
        expected[:, :height, :width] = torch.from_numpy(reference_normalize(image))[:, :height, :width]
        torch.testing.assert_close(dataset[index]["img"], expected, rtol=0, atol=1e-5)
