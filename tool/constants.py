"""The one home of every shared constant: VOC classes, palette and split sizes, ImageNet
statistics, the inference scales and the background-threshold sweep."""

import numpy as np

VOC_CLASSES = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
NUM_CLASSES = len(VOC_CLASSES)  # 21, background included
NUM_FG_CLASSES = NUM_CLASSES - 1  # 20
IGNORE_INDEX = 255  # VOC's "void" label (object borders)
VOC_TRAIN_IMAGES = 1464  # ImageSets/Segmentation/train.txt: the paper's CAM figures
VOC_VAL_IMAGES = 1449  # ImageSets/Segmentation/val.txt
VOC_TRAIN_AUG_IMAGES = 10582  # the paper's training list: (SBD ∪ train) − val
SBD_AUG_LABELS = 12031  # PNGs in the usual SegmentationClassAug download (train_aug + val)


def _voc_palette() -> np.ndarray:
    """The standard VOC colour map: the bits of the label index spread over R, G, B."""
    palette = np.zeros((256, 3), np.uint8)
    for index in range(256):
        value, red, green, blue = index, 0, 0, 0
        for bit in range(8):
            red |= ((value >> 0) & 1) << (7 - bit)
            green |= ((value >> 1) & 1) << (7 - bit)
            blue |= ((value >> 2) & 1) << (7 - bit)
            value >>= 3
        palette[index] = (red, green, blue)
    return palette


VOC_PALETTE = _voc_palette()  # 256×3 uint8; index 255 is (224, 224, 192)

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # SPEC §1, RGB in 0..1
IMAGENET_STD = (0.229, 0.224, 0.225)

CROP_SIZE = 448  # SPEC §3
RESIZE_LONG = (448, 768)  # SPEC §3: long side drawn from this closed range
INFER_SCALES = (0.5, 1.0, 1.5, 2.0)  # SPEC §5
SWEEP_THRESHOLDS = tuple(round(0.20 + 0.01 * i, 2) for i in range(40))  # SPEC §6: 0.20 … 0.59
