"""Device, precision and process-group decisions, made once per script (STYLE 7)."""

from __future__ import annotations

import contextlib
import os
import platform
from dataclasses import dataclass

import torch
import torch.distributed as dist

from engine.errors import UserError

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def add_runtime_arguments(parser) -> None:
    """`--device`, `--amp` and `--no_tf32`, shared by the training and inference scripts.

    The default is the reference's precision: it ran fp32 on Ampere GPUs with torch 1.7, whose
    defaults let cuBLAS and cuDNN use TF32 there. AMP is an opt-in speed switch: its effect on
    the paper's CAM mIoU has not been measured."""
    parser.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda when available, else cpu)")
    parser.add_argument(
        "--amp",
        choices=("off", "auto", "bf16", "fp16"),
        default="off",
        help="mixed precision on CUDA (default off: fp32 as the reference; auto: bf16 where "
        "the GPU supports it; always off on the CPU)",
    )
    parser.add_argument(
        "--no_tf32",
        action="store_true",
        help="full-precision fp32 matmuls and convolutions on CUDA; by default TF32 is allowed "
        "where the GPU has it, as on the reference's stack",
    )


def set_fp32_precision(allow_tf32: bool) -> None:
    """Let cuBLAS matmuls and cuDNN convolutions use TF32 on GPUs that have it (torch 1.7's
    default, the reference's stack), or forbid it. No effect on the CPU."""
    torch.set_float32_matmul_precision("high" if allow_tf32 else "highest")
    if hasattr(torch.backends.cudnn, "conv"):  # torch >= 2.9; mixing in the old flag is an error there
        torch.backends.cudnn.conv.fp32_precision = "tf32" if allow_tf32 else "ieee"
    else:
        torch.backends.cudnn.allow_tf32 = allow_tf32


def precision_name(device: torch.device, amp_dtype: torch.dtype | None, allow_tf32: bool) -> str:
    """What the logs and manifests say: "bf16 autocast", "fp32 (TF32 allowed)" or "fp32"."""
    if amp_dtype is not None:
        return next(f"{name} autocast" for name, dtype in AMP_DTYPES.items() if dtype == amp_dtype)
    tf32_capable = device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 0)
    return "fp32 (TF32 allowed)" if allow_tf32 and tf32_capable else "fp32"


def resolve_device(requested: str | None, local_rank: int = 0) -> torch.device:
    if requested is None:
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise UserError(f"unknown --device {requested!r}; use cuda, cuda:N or cpu") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError("--device cuda was asked for but PyTorch sees no CUDA GPU; use --device cpu")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    elif device.type != "cpu":
        raise UserError(f"unsupported --device {requested!r}; use cuda, cuda:N or cpu")
    return device


def device_name(device: torch.device) -> str:
    """What run records say the device is: the GPU's name, else the processor's."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"


def resolve_amp(requested: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for full fp32."""
    if device.type != "cuda":
        if requested in AMP_DTYPES:
            raise UserError(f"--amp {requested} needs a CUDA device; use --amp off on the CPU")
        return None
    if requested == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    if requested == "bf16" and not torch.cuda.is_bf16_supported():
        raise UserError("this GPU has no bf16 support; use --amp fp16 or --amp off")
    return AMP_DTYPES.get(requested)


def apply_precision(args, device: torch.device) -> tuple[torch.dtype | None, str]:
    """The precision flags of `add_runtime_arguments`, decided once per script: sets the fp32 matmul and
    convolution precision and returns (the autocast dtype or None, its name for logs and manifests)."""
    amp_dtype = resolve_amp(args.amp, device)
    set_fp32_precision(allow_tf32=not args.no_tf32)
    return amp_dtype, precision_name(device, amp_dtype, not args.no_tf32)


def autocast(device: torch.device, amp_dtype: torch.dtype | None):
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype)


def memory_format_for(device: torch.device) -> torch.memory_format:
    """channels_last lets cuDNN use its fastest (NHWC) convolutions on tensor cores."""
    return torch.channels_last if device.type == "cuda" else torch.contiguous_format


@dataclass(frozen=True)
class ProcessGroup:
    """This process's place among the `torchrun` processes (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> ProcessGroup:
        return cls(
            rank=int(os.environ.get("RANK", "0")),
            world_size=int(os.environ.get("WORLD_SIZE", "1")),
            local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        )

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_process_group(device_request: str | None) -> ProcessGroup:
    """Join the torchrun job described by the environment: nccl on CUDA, gloo on the CPU."""
    group = ProcessGroup.from_env()
    if not group.distributed:
        return group
    wants_cuda = (device_request or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    if wants_cuda:
        torch.cuda.set_device(group.local_rank)
    dist.init_process_group(backend="nccl" if wants_cuda else "gloo")
    return group
