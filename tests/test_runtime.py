"""engine/runtime.py: the device, precision and kernel policy a script decides once (`Runtime`), the devices
under torchrun, native bf16, and the CPU copies weights files and checkpoints hold."""

from __future__ import annotations

import argparse

import pytest
import torch

from engine import runtime
from engine.errors import UserError
from engine.runtime import ProcessGroup, Runtime, add_runtime_arguments, on_cpu, resolve_amp, resolve_device

TWO_PROCESSES = ProcessGroup(rank=1, world_size=2, local_rank=1)


@pytest.fixture
def kernel_policy():
    """Put torch's global kernel switches back as they were."""
    before = (
        torch.are_deterministic_algorithms_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    yield
    torch.use_deterministic_algorithms(before[0])
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before[1:]


def runtime_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_runtime_arguments(parser)
    return parser.parse_args(["--device", "cpu", *argv])


def kernel_switches() -> tuple[bool, bool, bool]:
    return (
        torch.are_deterministic_algorithms_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )


def test_deterministic_sets_every_switch_and_the_next_stage_inherits_none(kernel_policy, monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    chosen = Runtime.decide(runtime_args("--deterministic"), ProcessGroup(), fixed_input_size=True)
    assert kernel_switches() == (True, True, False)  # no autotuning: it picks kernels by timing
    assert chosen.precision == "fp32, deterministic" and chosen.device == torch.device("cpu")
    assert runtime.os.environ["CUBLAS_WORKSPACE_CONFIG"] == runtime.CUBLAS_WORKSPACE
    # a later stage in the same process (run_pipeline.py) sets every switch again
    assert Runtime.decide(runtime_args(), ProcessGroup(), fixed_input_size=False).precision == "fp32"
    assert kernel_switches() == (False, False, False)


def test_cudnn_autotunes_fixed_sizes_on_cuda_only(kernel_policy):
    runtime.set_kernel_policy(deterministic=False, autotune=True)
    assert kernel_switches() == (False, False, True)
    Runtime.decide(runtime_args(), ProcessGroup(), fixed_input_size=True)  # on the CPU
    assert kernel_switches() == (False, False, False)


def test_under_torchrun_each_process_takes_its_local_gpu_and_an_explicit_index_is_refused(monkeypatch):
    with pytest.raises(UserError, match="--device cuda:0 under torchrun would put all 2 processes on one GPU"):
        resolve_device("cuda:0", TWO_PROCESSES)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("cuda", TWO_PROCESSES) == torch.device("cuda", 1)
    assert resolve_device(None, TWO_PROCESSES) == torch.device("cuda", 1)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)  # one process: any GPU
    assert resolve_device("cpu", TWO_PROCESSES) == torch.device("cpu")


@pytest.mark.parametrize("capability, auto", [((7, 0), None), ((8, 0), torch.bfloat16), ((9, 0), torch.bfloat16)])
def test_bf16_only_where_the_gpu_has_it_natively(monkeypatch, capability, auto):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)  # a V100 says yes
    gpu = torch.device("cuda", 0)
    assert resolve_amp("auto", gpu) is auto
    if auto is None:
        with pytest.raises(UserError, match="no native bf16 .*use --amp fp16 or --amp off"):
            resolve_amp("bf16", gpu)
    else:
        assert resolve_amp("bf16", gpu) is torch.bfloat16
    assert resolve_amp("fp16", gpu) is torch.float16 and resolve_amp("off", gpu) is None


def test_cpu_copies_keep_aliases_structure_and_the_state_dicts_versions():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
    state = model.state_dict()
    shared = state["0.weight"]
    tree = {"model": state, "alias": {"again": shared}, "steps": [1, (shared, None)], "note": "x"}
    copied = on_cpu(tree)
    assert copied["model"]._metadata == state._metadata  # what load_state_dict reads module versions from
    assert copied["alias"]["again"] is copied["model"]["0.weight"] is copied["steps"][1][0]
    assert copied["steps"][0] == 1 and copied["steps"][1][1] is None and copied["note"] == "x"
    assert all(torch.equal(copied["model"][key], value) for key, value in state.items())
    assert not any(value.requires_grad for value in copied["model"].values())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_weights_trained_on_a_gpu_load_with_a_plain_torch_load(tmp_path):
    from engine.training import save_weights

    path = save_weights(torch.nn.Linear(2, 3).cuda(), tmp_path / "w.pth")
    storages = torch.load(path, weights_only=True)
    assert {value.device.type for value in storages.values()} == {"cpu"}
