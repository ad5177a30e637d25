"""Machine facts: the environment line of benchmark headers, process age, worker contexts."""

import time

import torch

from ptxseg import system


def test_environment_line_names_torch_cuda_cpu_and_gpu():
    line = system.environment_line()
    assert line.startswith(f"torch {torch.__version__}") and "CPU: " in line
    assert ("GPU: none" in line) is (not torch.cuda.is_available())


def test_process_age_grows():
    first = system.process_age_s()
    assert first is not None and first > 0
    time.sleep(0.05)
    assert system.process_age_s() >= first


def test_worker_context_never_forks_this_process():
    assert system.process_context().get_start_method() in ("forkserver", "spawn")
