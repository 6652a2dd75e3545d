"""Class labels and the training / inference datasets (SPEC §3, §5; IRN's, SPEC-IRN §5, §7) of any data set
described in engine/datasets.py (VOC 2012, COCO 2014), and VOC's XML class labels; the image lists
themselves are read by the torch-free voc12/lists.py.

Datasets return dicts with named fields (STYLE 4). Every training sample is a pure function
of (seed, epoch, index), so a resumed run, any worker count and any machine see the same
augmentations.
"""

from __future__ import annotations

import contextlib
import operator
import os
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from engine.datasets import IGNORE_INDEX, VOC12, DatasetSpec, DataSource
from engine.errors import UserError, and_more
from engine.fileio import load_npy_dict, read_label_png, read_rgb
from tool import aff
from tool.constants import CROP_SIZE, IMAGENET_MEAN, IMAGENET_STD, INFER_SCALES, RESIZE_LONG
from tool.imutils import (
    PATCH_STRATEGIES,
    Normalize,
    color_jitter,
    complementary_patch,
    random_crop,
    scale_image,
    torch_randrange,
    train_transform,
)
from tool.irn import TRAIN_RADIUS, quarter_label

# load_image_list is re-exported: the scripts read lists and build datasets from this one module.
from voc12.lists import load_image_list  # noqa: F401

ANNOTATION_FOLDER = "Annotations"
VOC_FG_CLASS_INDEX = {name: index for index, name in enumerate(VOC12.class_names[1:])}  # name -> 0..19


def make_labels_hint(dataset: DatasetSpec) -> str:
    return f"make one with: {dataset.make_labels_command}"


def as_source(source: DataSource | str | os.PathLike) -> DataSource:
    """A DataSource as it is; a bare folder is a VOC2012 root (the default data set), checked."""
    return source if isinstance(source, DataSource) else DataSource(VOC12, VOC12.check_root(source))


class ClsLabels(dict):
    """name -> float32[F] multi-hot, remembering the file it was read from (for error messages)."""

    def __init__(self, labels: Mapping[str, np.ndarray], path: Path):
        super().__init__(labels)
        self.path = path


def load_cls_labels(path: str | os.PathLike, dataset: DatasetSpec = VOC12) -> ClsLabels:
    """The reference's cls_labels.npy: a pickled dict name -> float32[F] multi-hot, F the data set's
    foreground classes in its class order. Files written by numpy 1 load under numpy 2 as well."""
    path, hint = Path(path), make_labels_hint(dataset)
    if not path.is_file():
        raise UserError(f"class-label file not found: {path}; {hint}")
    content = load_npy_dict(path, "class-label", f"expected a dict image name -> class vector; {hint}")
    labels = {}
    for name, vector in content.items():
        vector = np.asarray(vector, dtype=np.float32)
        if not isinstance(name, str) or vector.shape != (dataset.num_fg_classes,):
            raise UserError(
                f"{path}: entry {name!r} is not an image name with a {dataset.num_fg_classes}-class vector "
                f"(got shape {vector.shape}; --dataset is {dataset.name}); {hint}"
            )
        labels[name] = vector
    return ClsLabels(labels, path)


def cls_label_from_xml(xml_path: Path) -> np.ndarray:
    """Multi-hot float32[20] of the objects in one VOC annotation. Like the reference, every
    object counts (difficult and truncated ones too) and names outside the 20 classes are ignored."""
    if not xml_path.is_file():
        raise UserError(f"annotation not found: {xml_path}; the VOC2012 folder is incomplete")
    try:
        annotation = ET.parse(xml_path).getroot()
    except ET.ParseError as error:
        raise UserError(f"cannot parse annotation {xml_path}: {error}; replace the file") from None
    label = np.zeros(VOC12.num_fg_classes, np.float32)
    for element in annotation.iter("object"):
        class_index = VOC_FG_CLASS_INDEX.get((element.findtext("name") or "").strip())
        if class_index is not None:
            label[class_index] = 1.0
    return label


def cls_labels_from_xml(voc_root: str | os.PathLike, names: Sequence[str]) -> dict[str, np.ndarray]:
    annotation_dir = Path(voc_root) / ANNOTATION_FOLDER
    return {name: cls_label_from_xml(annotation_dir / f"{name}.xml") for name in names}


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one training sample: the same (seed, epoch, index) always gives the same augmentation."""
    return int(np.random.SeedSequence((seed, epoch, index)).generate_state(1)[0])


@contextlib.contextmanager
def seeded_cpu_rng(seed: int) -> Iterator[None]:
    """torch's CPU generator seeded with `seed` inside the block, its state restored after it; the CUDA
    generators untouched (`torch.manual_seed` would reseed every one of them, lazily when CUDA is not
    initialised, and `fork_rng(devices=[])` would not restore them: in a `--num_workers 0` run every DDP
    rank would then share one CUDA seed). The CPU stream is `torch.manual_seed(seed)`'s."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        yield


def _labels_of(
    names: Sequence[str], cls_labels: Mapping[str, np.ndarray] | str | os.PathLike, dataset: DatasetSpec
) -> list[np.ndarray]:
    """The label of each name, from a loaded dict or a cls_labels.npy path."""
    if isinstance(cls_labels, (str, os.PathLike)):
        cls_labels = load_cls_labels(cls_labels, dataset)
    source = f"class-label file {cls_labels.path}" if isinstance(cls_labels, ClsLabels) else "the class labels given"
    missing = [name for name in names if name not in cls_labels]
    if missing:
        raise UserError(
            f"image {and_more(missing)} of the list has no class label in {source}; "
            f"regenerate the labels for this dataset ({make_labels_hint(dataset)}) or fix the list"
        )
    return [np.asarray(cls_labels[name], dtype=np.float32) for name in names]


def checked_index(index: int, length: int) -> int:
    """`index` in 0…length−1 (negative indices count from the end); IndexError outside."""
    index = operator.index(index)
    if not -length <= index < length:
        raise IndexError(f"index {index} out of range for {length} images")
    return index % length


def image_paths(source: DataSource, names: Sequence[str]) -> list[Path]:
    """Checked up front so a missing file stops the run before training, not hours into it."""
    paths = [source.image_path(name) for name in names]
    missing = [path for path in paths if not path.is_file()]
    if missing:
        raise UserError(f"image not found: {and_more(missing)}; the list does not match {source.root}")
    return paths


class _LabelledDataset(Dataset):
    def __init__(
        self,
        source: DataSource | str | os.PathLike,
        names: Sequence[str],
        cls_labels: Mapping[str, np.ndarray] | str | os.PathLike,
    ):
        self.source = as_source(source)
        self.names = list(names)
        self.labels = _labels_of(self.names, cls_labels, self.source.spec)
        self.image_paths = image_paths(self.source, self.names)

    def __len__(self) -> int:
        return len(self.names)

    def _checked_index(self, index: int) -> int:
        return checked_index(index, len(self))


class TrainDataset(_LabelledDataset):
    """SPEC §3: the augmented crop, its complementary patch pair and the class vector.

    `dataset[index]` is epoch 0; `dataset[epoch, index]` gives that epoch's augmentation.
    """

    def __init__(
        self,
        source: DataSource | str | os.PathLike,
        names: Sequence[str],
        cls_labels: Mapping[str, np.ndarray] | str | os.PathLike,
        crop_size: int = CROP_SIZE,
        resize_long: tuple[int, int] = RESIZE_LONG,
        patch_strategy: str = "superpixel",
        seed: int = 0,
    ):
        if patch_strategy not in PATCH_STRATEGIES:
            raise UserError(f"unknown patch strategy {patch_strategy!r}; choose one of {', '.join(PATCH_STRATEGIES)}")
        super().__init__(source, names, cls_labels)
        self.crop_size = crop_size
        self.resize_long = resize_long
        self.patch_strategy = patch_strategy
        self.seed = seed

    def augmented_image(self, epoch: int, index: int) -> torch.Tensor:
        """The SPEC §3 crop alone (3×C×C), without the patch pair's superpixels."""
        index = self._checked_index(index)
        image = read_rgb(self.image_paths[index])
        with seeded_cpu_rng(sample_seed(self.seed, epoch, index)):
            return train_transform(image, crop_size=self.crop_size, resize_long=self.resize_long)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        index = self._checked_index(index)
        img = self.augmented_image(epoch, index)
        # The patches draw only from this numpy generator, so they are seeded apart from torch.
        img_kept, img_hidden, kept_fraction, hidden_fraction = complementary_patch(
            img, self.patch_strategy, np.random.default_rng(sample_seed(self.seed, epoch, index))
        )
        return {
            "name": self.names[index],
            "img": img,
            "img_kept": img_kept,
            "img_hidden": img_hidden,
            "label": torch.from_numpy(self.labels[index].copy()),
            "kept_fraction": torch.tensor(kept_fraction, dtype=torch.float32),
            "hidden_fraction": torch.tensor(hidden_fraction, dtype=torch.float32),
        }


class InferDataset(_LabelledDataset):
    """SPEC §5: each scale of the original image, normalised, with its horizontal flip."""

    def __init__(
        self,
        source: DataSource | str | os.PathLike,
        names: Sequence[str],
        cls_labels: Mapping[str, np.ndarray] | str | os.PathLike,
        scales: Sequence[float] = INFER_SCALES,
    ):
        super().__init__(source, names, cls_labels)
        self.scales = tuple(scales)
        self.normalize = Normalize()

    def __getitem__(self, index: int) -> dict:
        index = self._checked_index(index)
        image = read_rgb(self.image_paths[index])
        inputs = []
        for scale in self.scales:
            scaled = self.normalize(np.asarray(scale_image(image, scale)))
            chw = torch.from_numpy(np.ascontiguousarray(scaled.transpose(2, 0, 1)))
            inputs.append(torch.stack([chw, chw.flip(-1)]))
        return {
            "name": self.names[index],
            "image": np.array(image),
            "label": torch.from_numpy(self.labels[index].copy()),
            "inputs": inputs,
        }


# ---------------------------------------------------------------- IRN (SPEC-IRN §5, §7)

IRN_CROP_SIZE = 512  # SPEC-IRN §7: training crop, and the top-left crop of the MeanShift calibration
IRN_SCALE_RANGE = (0.5, 1.5)  # SPEC-IRN §7: s = 0.5 + U[0, 1)·1.0
_normalize = Normalize()


def irn_label_grid(crop_size: int) -> int:
    """The side of the stride-4 grid of an IRN crop (SPEC-IRN §5); UserError for a crop the training
    path index (radius 10) does not fit, or whose quarter label and network output would differ in size."""
    grid = crop_size // 4
    radius_floor = int(np.ceil(TRAIN_RADIUS)) - 1
    if crop_size % 4 or grid <= 2 * radius_floor:
        smallest = 4 * (2 * radius_floor + 1)
        raise UserError(f"--irn_crop_size {crop_size}: use a multiple of 4 of at least {smallest} (IRN uses 512)")
    return grid


def irn_augment(
    image: Image.Image, label: np.ndarray, crop_size: int = IRN_CROP_SIZE
) -> tuple[torch.Tensor, np.ndarray]:
    """SPEC-IRN §7 on an RGB image and its H×W uint8 label map, drawing from torch's global RNG: one scale
    s = 0.5 + U[0, 1) for both (image bicubic, label nearest, sides round(side·s)), ImageNet normalisation,
    horizontal flip of both with p = 0.5, one random crop_size crop of both (SPEC §3's crop: image fill 0,
    label fill 255). → (3×C×C float32 image, C×C uint8 label)."""
    low, high = IRN_SCALE_RANGE
    scale = low + torch.rand(()).item() * (high - low)
    image = scale_image(image, scale)
    label = np.asarray(Image.fromarray(label).resize(image.size, resample=Image.Resampling.NEAREST))
    normalized = _normalize(np.asarray(image))
    if torch.rand(()).item() < 0.5:
        normalized, label = normalized[:, ::-1], label[:, ::-1]
    return crop_with_label(normalized, label, crop_size)


def crop_with_label(
    normalized: np.ndarray, label: np.ndarray, crop_size: int, randrange: Callable[[int], int] = torch_randrange
) -> tuple[torch.Tensor, np.ndarray]:
    """One random crop box (SPEC §3's, offsets from `randrange`) for an H×W×3 float32 image and its H×W
    label: image fill 0, label fill 255. → (3×C×C float32 tensor, C×C uint8 label)."""
    # The label rides as a fourth channel shifted by −255, so the crop's zero fill is 255 once shifted
    # back (exact in float32).
    stacked = np.concatenate([normalized, label[..., None].astype(np.float32) - IGNORE_INDEX], axis=2)
    cropped = random_crop(stacked, crop_size, randrange)
    img = torch.from_numpy(np.ascontiguousarray(cropped[..., :3].transpose(2, 0, 1)))
    return img, (cropped[..., 3] + IGNORE_INDEX).astype(np.uint8)


class LabelKind(NamedTuple):
    """A kind of per-image label PNG (<name>.png in one folder) a dataset reads, for its error messages."""

    description: str  # "confident label"
    hint: str  # how to make them


IR_LABELS = LabelKind("confident label", "make them with: python cam_to_ir_label.py --ir_label_out_dir <folder>")


def label_paths(label_dir: Path, names: Sequence[str], kind: LabelKind) -> list[Path]:
    """Checked up front, as the images are."""
    paths = [label_dir / f"{name}.png" for name in names]
    missing = [path.name for path in paths if not path.is_file()]
    if missing:
        raise UserError(f"{kind.description} {and_more(missing)} not found in {label_dir}; {kind.hint}")
    return paths


def read_labelled_image(
    image_path: Path, label_path: Path, num_classes: int, kind: LabelKind
) -> tuple[Image.Image, np.ndarray]:
    """The image and its label PNG of class indices (H×W uint8: 0 background, 1…num_classes−1, 255
    ignored, the image's size); else a UserError naming the label file and `kind`'s remedy."""
    image = read_rgb(image_path)
    label = read_label_png(label_path)
    values = np.unique(label)
    wrong = values[(values >= num_classes) & (values != IGNORE_INDEX)]
    if len(wrong):
        raise UserError(
            f"{kind.description} {label_path} holds values outside 0–{num_classes - 1}/{IGNORE_INDEX} "
            f"({and_more(wrong.tolist(), 3)}); {kind.hint}"
        )
    if label.shape != (image.height, image.width):
        raise UserError(
            f"{kind.description} {label_path} is {label.shape[1]}×{label.shape[0]}, its image "
            f"{image.width}×{image.height}; {kind.hint}"
        )
    return image, label


class IrnTrainDataset(Dataset):
    """SPEC-IRN §7: the augmented crop and its confident label reduced to the stride-4 grid.
    `dataset[index]` is epoch 0; `dataset[epoch, index]` gives that epoch's augmentation, a pure function of
    (seed, epoch, index).

    Sample: `name`; `img` 3×C×C float32; `label` (C/4)×(C/4) uint8 (the quarter label, 16 KB at C = 512).
    The SPEC-IRN §5 affinity labels (three D×M maps, 5.7 MB as bytes at C = 512) are made from it on the
    device, in train_irn.train_step: shipped per sample, a 16-worker loader would hold gigabytes in flight."""

    def __init__(
        self,
        source: DataSource | str | os.PathLike,
        names: Sequence[str],
        ir_label_dir: str | os.PathLike,
        crop_size: int = IRN_CROP_SIZE,
        seed: int = 0,
    ):
        irn_label_grid(crop_size)  # a crop the training path index fits, else a UserError now
        self.source = as_source(source)
        self.names = list(names)
        self.image_paths = image_paths(self.source, self.names)
        self.label_paths = label_paths(Path(ir_label_dir), self.names, IR_LABELS)
        self.crop_size, self.seed = crop_size, seed

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        index = checked_index(index, len(self))
        image, label = read_labelled_image(
            self.image_paths[index], self.label_paths[index], self.source.spec.num_classes, IR_LABELS
        )
        with seeded_cpu_rng(sample_seed(self.seed, epoch, index)):
            img, label = irn_augment(image, label, self.crop_size)
        return {
            "name": self.names[index],
            "img": img,
            "label": torch.from_numpy(np.ascontiguousarray(quarter_label(label))),
        }


def top_left_crop(img: np.ndarray, crop_size: int) -> np.ndarray:
    """The top-left crop_size×crop_size of an H×W×C array in a zero container (IRN's `top_left_crop`)."""
    container = np.zeros((crop_size, crop_size, img.shape[2]), img.dtype)
    kept = img[:crop_size, :crop_size]
    container[: kept.shape[0], : kept.shape[1]] = kept
    return container


class IrnCalibrationDataset(Dataset):
    """SPEC-IRN §7's MeanShift calibration input: each image normalised and cropped top-left to crop_size
    (fill 0). Sample: `name`, `img` 3×C×C float32."""

    def __init__(self, source: DataSource | str | os.PathLike, names: Sequence[str], crop_size: int = IRN_CROP_SIZE):
        self.source = as_source(source)
        self.names = list(names)
        self.image_paths = image_paths(self.source, self.names)
        self.crop_size = crop_size

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> dict:
        index = checked_index(index, len(self))
        cropped = top_left_crop(_normalize(np.asarray(read_rgb(self.image_paths[index]))), self.crop_size)
        return {"name": self.names[index], "img": torch.from_numpy(np.ascontiguousarray(cropped.transpose(2, 0, 1)))}


# ---------------------------------------------------------------- AffinityNet (SPEC_AFF §2)

AFF_CROP_SIZE = 448  # SPEC_AFF §2: SEAM's --crop_size
CRF_FILE_HINT = "make them with: python infer_cam.py --out_crf DIR --crf_scores (DIR/alpha_4 and DIR/alpha_24)"
_MEAN32, _STD32 = np.float32(IMAGENET_MEAN), np.float32(IMAGENET_STD)


def aff_label_grid(crop_size: int) -> int:
    """The side of the stride-8 label grid of an AffinityNet crop; UserError for a crop not a multiple of 8 (the
    8×8 blocks) or under 88 px, where the network's radius shrinks and the label's does not (SPEC_AFF §6.10:
    the reference's loss fails on the shape mismatch)."""
    smallest = aff.GRID_STRIDE * (2 * aff.RADIUS + 1)
    if crop_size % aff.GRID_STRIDE or crop_size < smallest:
        raise UserError(f"--crop_size {crop_size}: use a multiple of 8 of at least {smallest} (SEAM uses 448)")
    return crop_size // aff.GRID_STRIDE


def normalize_float32(crop: np.ndarray) -> np.ndarray:
    """SPEC_AFF §2 step 3 (§6.8): the reference's Normalize of a float32 crop, in float32 arithmetic."""
    return (crop / np.float32(255.0) - _MEAN32) / _STD32


def aff_augment(
    image: Image.Image, marginals: np.ndarray, crop_size: int = AFF_CROP_SIZE
) -> tuple[torch.Tensor, np.ndarray]:
    """SPEC_AFF §2 steps 1-4 on an RGB image and its H×W×C float32 CRF marginals (la's channels then ha's),
    drawing from torch's global RNG: ColorJitter(0.3, 0.3, 0.3, 0.1) of the image; one random crop of both (the
    width's offset first, zero container); the image normalised after the crop (black padding, §6.7); a
    horizontal flip of both with p = 0.5; the marginals' 8×8 block means.
    → (3×C×C float32 image, (C/8)×(C/8)×C float32 pooled marginals)."""
    jittered = np.asarray(color_jitter(image), dtype=np.float32)
    cropped = random_crop(np.concatenate([jittered, marginals], axis=2), crop_size)
    normalized, cropped_marginals = normalize_float32(cropped[..., :3]), cropped[..., 3:]
    if torch.rand(()).item() < 0.5:
        normalized, cropped_marginals = normalized[:, ::-1], cropped_marginals[:, ::-1]
    img = torch.from_numpy(np.ascontiguousarray(normalized.transpose(2, 0, 1)))
    return img, aff.block_means(np.ascontiguousarray(cropped_marginals))


def crf_paths(crf_dir: Path, names: Sequence[str], flag: str) -> list[Path]:
    """Each image's CRF label file <crf_dir>/<name>.npy, checked up front as the images are."""
    paths = [crf_dir / f"{name}.npy" for name in names]
    missing = [path for path in paths if not path.is_file()]
    if missing:
        raise UserError(f"CRF label file {and_more(missing)} of {flag} not found; {CRF_FILE_HINT}")
    return paths


def read_crf_marginals(path: Path, size: tuple[int, int]) -> tuple[list, np.ndarray]:
    """SPEC_AFF §2/§5: one CRF label file's dict {0: background, class + 1: H×W float32 marginals} → (its keys in
    dict order, H×W×(K+1) float32 values in that order); UserError naming the file when it is not such a dict
    of the image's `size` (H, W)."""
    content = load_npy_dict(path, "CRF label file", CRF_FILE_HINT)
    maps = [np.asarray(value, dtype=np.float32) for value in content.values()]
    if not maps or any(value.shape != size for value in maps):
        shapes = and_more(sorted({value.shape for value in maps}))
        raise UserError(
            f"CRF label file {path} holds maps of shape {shapes or 'none'}, its image is {size[1]}×{size[0]} "
            f"(H×W {size}): it was made for another image or size; {CRF_FILE_HINT}"
        )
    return list(content), np.stack(maps, axis=2)


class AffTrainDataset(Dataset):
    """SPEC_AFF §2: the augmented crop and its confident label from the low- and high-alpha CRF label files.
    `dataset[index]` is epoch 0; `dataset[epoch, index]` gives that epoch's augmentation, a pure function of
    (seed, epoch, index).

    Sample: `name`; `img` 3×C×C float32; `label` (C/8)×(C/8) uint8, `tool.aff.confident_label` (dict positions,
    255 not confident). The affinity labels (three 34×M maps, 1 MB at C = 448) are made from it on the device,
    in train_aff.batch_step, as IRN's are."""

    def __init__(
        self,
        source: DataSource | str | os.PathLike,
        names: Sequence[str],
        la_crf_dir: str | os.PathLike,
        ha_crf_dir: str | os.PathLike,
        crop_size: int = AFF_CROP_SIZE,
        seed: int = 0,
    ):
        aff_label_grid(crop_size)  # a crop whose labels and network pairs agree, else a UserError now
        self.source = as_source(source)
        self.names = list(names)
        self.image_paths = image_paths(self.source, self.names)
        self.la_paths = crf_paths(Path(la_crf_dir), self.names, "--la_crf_dir")
        self.ha_paths = crf_paths(Path(ha_crf_dir), self.names, "--ha_crf_dir")
        self.crop_size, self.seed = crop_size, seed

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        index = checked_index(index, len(self))
        image = read_rgb(self.image_paths[index])
        size = (image.height, image.width)
        la_keys, la = read_crf_marginals(self.la_paths[index], size)
        ha_keys, ha = read_crf_marginals(self.ha_paths[index], size)
        if la_keys != ha_keys:  # SPEC_AFF §6.4: the labels are dict positions, so both must list the same keys
            raise UserError(
                f"CRF label files {self.la_paths[index]} and {self.ha_paths[index]} hold other classes ({la_keys} "
                f"vs {ha_keys}): make both folders in one infer_cam.py run"
            )
        with seeded_cpu_rng(sample_seed(self.seed, epoch, index)):
            img, pooled = aff_augment(image, np.concatenate([la, ha], axis=2), self.crop_size)
        la_pooled, ha_pooled = np.split(pooled.transpose(2, 0, 1), 2)
        return {
            "name": self.names[index],
            "img": img,
            "label": torch.from_numpy(aff.confident_label(la_pooled, ha_pooled)),
        }


def load_labelled_list(
    list_path: str | os.PathLike, cls_labels_path: str | os.PathLike, dataset: DatasetSpec = VOC12
) -> tuple[list[str], ClsLabels]:
    """A list's names and the class labels, every name labelled (else one UserError naming both files)."""
    cls_labels = load_cls_labels(cls_labels_path, dataset)
    names = load_image_list(list_path)
    missing = [name for name in names if name not in cls_labels]
    if missing:
        raise UserError(
            f"image {and_more(missing)} of {list_path} has no class label in {cls_labels_path}; "
            f"use the labels made for this list ({dataset.make_labels_command}) or fix the list"
        )
    return names, cls_labels


def first_item(batch: list[dict]) -> dict:
    """DataLoader collate for batch size 1: the dataset's dict as it is (images differ in size)."""
    return batch[0]
