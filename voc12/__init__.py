"""PASCAL VOC 2012: lists, class labels, the training/inference data sets, the toy set.

Imports: voc12/, tool/ and engine/ only."""
