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
    parser.add_argument(
        "--deterministic",
        action="store_true",
        help="the same outputs run after run on CUDA (deterministic kernels, no cuDNN autotuning; slower); "
        "the CPU is deterministic without it",
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


def resolve_device(requested: str | None, group: ProcessGroup | None = None) -> torch.device:
    """The device `--device` names (None: CUDA when present). Under torchrun each process takes the GPU of
    its LOCAL_RANK, so an explicit `cuda:N` there would put every process on one GPU: refused."""
    group = group or ProcessGroup()
    if requested is None:
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise UserError(f"unknown --device {requested!r}; use cuda, cuda:N or cpu") from None
    if device.type == "cuda":
        if device.index is not None and group.distributed:
            raise UserError(
                f"--device {requested} under torchrun would put all {group.world_size} processes on one GPU; "
                "pass --device cuda (each process takes the GPU of its LOCAL_RANK; CUDA_VISIBLE_DEVICES picks them)"
            )
        if not torch.cuda.is_available():
            raise UserError("--device cuda was asked for but PyTorch sees no CUDA GPU; use --device cpu")
        if device.index is None:
            device = torch.device("cuda", group.local_rank)
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
    native_bf16 = has_native_bf16(device)
    if requested == "auto":
        return torch.bfloat16 if native_bf16 else None
    if requested == "bf16" and not native_bf16:
        raise UserError("this GPU has no native bf16 (it needs compute capability 8.0); use --amp fp16 or --amp off")
    return AMP_DTYPES.get(requested)


def has_native_bf16(device: torch.device) -> bool:
    """bf16 in hardware (Ampere, compute capability 8.0, and later). `torch.cuda.is_bf16_supported()` also
    says yes where bf16 is only emulated (a V100), which is slower than fp32 there."""
    return torch.cuda.get_device_capability(device) >= (8, 0)


def apply_precision(args, device: torch.device) -> tuple[torch.dtype | None, str]:
    """The precision flags of `add_runtime_arguments`, decided once per script: sets the fp32 matmul and
    convolution precision and returns (the autocast dtype or None, its name for logs and manifests)."""
    amp_dtype = resolve_amp(args.amp, device)
    set_fp32_precision(allow_tf32=not args.no_tf32)
    return amp_dtype, precision_name(device, amp_dtype, not args.no_tf32)


CUBLAS_WORKSPACE = ":4096:8"  # what cuBLAS needs to be deterministic (CUDA >= 10.2), set before its first use


def set_kernel_policy(deterministic: bool, autotune: bool) -> None:
    """Set every global kernel switch a stage depends on, each time, so that no stage inherits another's
    (run_pipeline.py runs them all in one process): deterministic algorithms (cuDNN's and PyTorch's, cuBLAS's
    workspace) or the fastest ones; cuDNN autotuning, which pays for a fixed input size (training crops) but
    not for images of many sizes (inference), and never under `deterministic`."""
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = autotune and not deterministic


def on_cpu(tree):
    """A copy of `tree` (tensors in dicts, lists and tuples; anything else as it is) with every tensor on the
    CPU, aliases kept aliases: what a weights file or checkpoint holds, so that a plain `torch.load` reads it
    on a machine without CUDA, or with fewer GPUs than the one that wrote it."""
    copies: dict[int, torch.Tensor] = {}

    def moved(value):
        if isinstance(value, torch.Tensor):
            return copies.setdefault(id(value), value.detach().cpu())
        if isinstance(value, dict):
            copy = type(value)((key, moved(item)) for key, item in value.items())
            if hasattr(value, "_metadata"):  # a state dict's module versions, which loading reads
                copy._metadata = value._metadata
            return copy
        if isinstance(value, (list, tuple)):
            return type(value)(moved(item) for item in value)
        return value

    return moved(tree)


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


@dataclass(frozen=True)
class Runtime:
    """Where and how one script's process computes, decided once (STYLE 7) from `add_runtime_arguments`'
    flags: its place among the torchrun processes, its device, the autocast dtype (None: fp32) and the name
    logs and manifests give the numerics ("fp32 (TF32 allowed)", "bf16 autocast, deterministic", ...)."""

    group: ProcessGroup
    device: torch.device
    amp_dtype: torch.dtype | None
    precision: str

    @classmethod
    def decide(cls, args, group: ProcessGroup, *, fixed_input_size: bool) -> Runtime:
        """Resolve --device for this process, set the precision and the kernel policy (`set_kernel_policy`:
        cuDNN autotunes on CUDA when every input has one size)."""
        device = resolve_device(args.device, group)
        amp_dtype, precision = apply_precision(args, device)
        set_kernel_policy(args.deterministic, autotune=fixed_input_size and device.type == "cuda")
        return cls(group, device, amp_dtype, precision + (", deterministic" if args.deterministic else ""))

    @property
    def memory_format(self) -> torch.memory_format:
        return memory_format_for(self.device)
