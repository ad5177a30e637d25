"""Machine facts: CPU and instruction sets, process age, worker contexts."""

import time

import torch

from ptxseg.util import system


def test_cpu_info_reads_the_model_and_flags_once():
    info = system.cpu_info()
    assert info is system.cpu_info() and info.cores >= 1 and info.model
    bare = system.CpuInfo("x", 1, frozenset())
    assert not bare.native_bf16 and not bare.vnni and bare.isa().startswith("none of")
    amx = system.CpuInfo("y", 2, frozenset({"amx_bf16", "amx_int8", "avx2"}))
    assert amx.native_bf16 and amx.vnni and amx.isa() == "avx2 amx_bf16 amx_int8"


def test_gpu_description_names_the_card_or_none():
    text = system.gpu_description()
    assert (text == "none") is (not torch.cuda.is_available())


def test_process_age_grows():
    first = system.process_age_s()
    assert first is not None and first > 0
    time.sleep(0.05)
    assert system.process_age_s() >= first


def test_worker_context_never_forks_this_process():
    assert system.process_context().get_start_method() in ("forkserver", "spawn")
