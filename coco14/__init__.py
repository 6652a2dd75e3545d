"""MS COCO 2014: class labels and label PNGs from the annotations, the toy set.

Imports: coco14/, tool/ and engine/ only."""
