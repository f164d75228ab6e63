"""CUDA-aware MPI probes and the decision, as pure functions (no GPU, no MPI)."""

import numpy as np
import pytest

from pgd.comm import cuda_aware as ca

OMPI_LIB = "Open MPI v4.1.6, package: Debian OpenMPI, ident: 4.1.6, repo rev: v4.1.6, Sep 30, 2023"
MPICH_LIB = "MPICH Version:      4.1.2\nMPICH Release date: Wed Jun  7 15:22:45 CDT 2023"
CRAY_LIB = "MPI VERSION    : CRAY MPICH version 8.1.27.26 (ANL base 3.4a2)"
MVAPICH_LIB = "MVAPICH2 Version      :\t2.3.7\nMVAPICH2 Release date :\tWed March 02 22:00:00 EST 2022"


@pytest.mark.parametrize("library, vendor", [(OMPI_LIB, "open-mpi"), (MPICH_LIB, "mpich"),
                                             (CRAY_LIB, "cray-mpich"), (MVAPICH_LIB, "mvapich"),
                                             ("Intel(R) MPI Library 2021.10", "intel"), ("", "unknown")])
def test_vendor(library, vendor):
    assert ca.mpi_vendor(library) == vendor


@pytest.mark.parametrize("text, said", [
    ("mca:mpi:base:param:mpi_built_with_cuda_support:value:true\n", True),
    ("mca:mpi:base:param:mpi_built_with_cuda_support:value:false\n", False),
    ("          MPI extensions: affinity, cuda, pcollreq\n", True),
    ("          MPI extensions: affinity, pcollreq\n", False),
    ("", None),
])
def test_ompi_info(text, said):
    assert ca.probe_ompi_info(text) is said


def test_open_mpi_decisions():
    yes = "mca:mpi:base:param:mpi_built_with_cuda_support:value:true"
    no = "mca:mpi:base:param:mpi_built_with_cuda_support:value:false"
    assert ca.decide("auto", is_gpu=True, library=OMPI_LIB, ompi_info_text=yes, environ={})[0] == ca.AWARE
    decision, reason = ca.decide("auto", is_gpu=True, library=OMPI_LIB, ompi_info_text=no, environ={})
    assert decision == ca.STAGING and "without CUDA support" in reason
    decision, reason = ca.decide("auto", is_gpu=True, library=OMPI_LIB, ompi_info_text="", environ={})
    assert decision == ca.STAGING and "staging to be safe" in reason


@pytest.mark.parametrize("library", [MPICH_LIB, CRAY_LIB])
def test_mpich_and_cray_environment(library):
    on = ca.decide("auto", is_gpu=True, library=library, ompi_info_text="",
                   environ={"MPICH_GPU_SUPPORT_ENABLED": "1"})
    off = ca.decide("auto", is_gpu=True, library=library, ompi_info_text="", environ={})
    assert on[0] == ca.AWARE and "MPICH_GPU_SUPPORT_ENABLED=1" in on[1]
    assert off[0] == ca.STAGING and "(unset)" in off[1]


def test_mvapich_environment():
    on = ca.decide("auto", is_gpu=True, library=MVAPICH_LIB, ompi_info_text="", environ={"MV2_USE_CUDA": "1"})
    off = ca.decide("auto", is_gpu=True, library=MVAPICH_LIB, ompi_info_text="", environ={"MV2_USE_CUDA": "0"})
    assert on[0] == ca.AWARE and off[0] == ca.STAGING


def test_unknown_library_stages():
    decision, reason = ca.decide("auto", is_gpu=True, library="SomeMPI 1.0", ompi_info_text="", environ={})
    assert decision == ca.STAGING and "no CUDA-awareness probe" in reason


def test_forced_modes_and_cpu():
    yes_env = {"MPICH_GPU_SUPPORT_ENABLED": "1"}
    assert ca.decide("off", is_gpu=True, library=MPICH_LIB, ompi_info_text="", environ=yes_env) == (
        ca.STAGING, "--cuda-aware off")
    assert ca.decide("on", is_gpu=True, library="", ompi_info_text="", environ={})[0] == ca.AWARE
    decision, reason = ca.decide("on", is_gpu=False, library=OMPI_LIB, ompi_info_text="", environ={})
    assert decision == ca.NO_GPU and "no effect" in reason
    with pytest.raises(ValueError):
        ca.decide("maybe", is_gpu=True, library="", ompi_info_text="", environ={})


def test_checksum_sums():
    for size in (1, 2, 5):
        total = sum(ca.checksum_contribution(rank) for rank in range(size))
        np.testing.assert_array_equal(total, ca.checksum_expected(size))


def test_confirm_with_fake_device():
    from support.gpu_fakes import FakeMPIComm, FakeOps

    class SerialComm(FakeMPIComm):
        def allreduce(self, value, op=None):
            return value

    ops = FakeOps()
    assert ca.confirm_device_allreduce(SerialComm(ops, size=1, device_ok=True), ops)
    # a "CUDA-aware" MPI that returns wrong sums (here: as if 2 ranks held rank 0's data) is caught
    assert not ca.confirm_device_allreduce(SerialComm(ops, size=2, rank=1, device_ok=True), ops)
