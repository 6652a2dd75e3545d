"""The one home of every shared constant of the method: ImageNet statistics, the training crop,
the inference scales, CPN's and the segmentation stage's. Each data set's classes, palette, sizes and
background-threshold sweep are in engine/datasets.py."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # SPEC §1, RGB in 0..1
IMAGENET_STD = (0.229, 0.224, 0.225)

CROP_SIZE = 448  # SPEC §3
RESIZE_LONG = (448, 768)  # SPEC §3: long side drawn from this closed range
INFER_SCALES = (0.5, 1.0, 1.5, 2.0)  # SPEC §5

SEG_CROP_SIZE = 448  # SPEC_SEG §2 step 5
SEG_TEST_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)  # SPEC_SEG §4, each with its flip
