"""The methods of the SPECs, as pure functions where they can be: CPN's losses (losses) and augmentation
(imutils), the optimiser (optim), CAM maths (cam), the dense CRF (crf), IRN's path index, affinities, loss
terms and random walk (irn), confident labels (ir_label), metrics, visualisation and shared constants.

Imports: tool/ and engine/ only."""
