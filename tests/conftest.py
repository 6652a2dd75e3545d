"""Shared fixtures. The toy VOC set is generated once per test session."""
import torch

torch.set_num_threads(2)
