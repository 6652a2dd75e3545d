"""Settings shared by the tests that run the training script: a 32-px crop, batch 2, no loader
workers, a random start (BN statistics from the toy images), a log line every step."""

TINY_TRAIN_ARGS = ["--crop_size", "32", "--resize_long", "32", "48", "--batch_size", "2", "--num_workers", "0"]
TINY_TRAIN_ARGS += ["--weights", "none", "--log_every", "1"]
