"""The engine every stage stands on, no method in it: the data sets' descriptions and `--dataset` flags
(datasets), one-line errors (errors), CPU cores (cores), device and precision (runtime), atomic file I/O
(fileio), folder manifests (manifest), per-image output tables (outputs), the per-image stages' share
of the list and input checks (stage), process-pool maps (parallel), the training loop and its
checkpoints (training), the toy sets' drawing (toy_drawing).

Imports: only engine/ (and third-party packages)."""
