"""Device-buffer communicators driven on the CPU by a fake device (copies and synchronisations counted)."""

import numpy as np
import pytest

from pgd.comm.device import DeviceCommunicator, StagedCommunicator, make_device_communicator, shared_gpu_message
from pgd.comm.host import AllreduceCommunicator, ReduceBcastCommunicator
from pgd.device.backend import cpu_backend
from pgd.errors import PgdError
from support.gpu_fakes import DeviceArray, FakeMPIComm, FakeOps


def _device(ops, values):
    buf = ops.empty(len(values), np.float64)
    buf.view(np.ndarray)[...] = values
    return buf


@pytest.mark.parametrize("inner_type", [AllreduceCommunicator, ReduceBcastCommunicator])
def test_staged_allreduce_copies_through_one_pinned_buffer(inner_type):
    ops = FakeOps()
    mpi = FakeMPIComm(ops, size=3)
    comm = StagedCommunicator(inner_type(mpi), ops)
    buf = _device(ops, [1.0, 2.0, 3.0])
    for _ in range(4):
        ops.pending = 5  # device work queued before every combine (a kernel): must be waited for
        comm.allreduce(buf)
    np.testing.assert_array_equal(buf.view(np.ndarray), np.array([1.0, 2.0, 3.0]) * 3 ** 4)
    assert len(ops.pinned) == 1                  # allocated once, reused
    assert ops.copies_to_host == ops.copies_to_device == 4
    assert comm.calls == 4 and comm.bytes == 4 * buf.nbytes and comm.name == inner_type.name
    assert mpi.calls  # FakeMPIComm asserted "synchronised" and "host buffer" on every call


def test_staged_reduce_and_bcast():
    ops = FakeOps()
    root = StagedCommunicator(AllreduceCommunicator(FakeMPIComm(ops, size=2, rank=0)), ops)
    other = StagedCommunicator(AllreduceCommunicator(FakeMPIComm(ops, size=2, rank=1)), ops)
    a, b = _device(ops, [1.0, 2.0]), _device(ops, [5.0, 7.0])
    root.reduce(a)
    other.reduce(b)
    np.testing.assert_array_equal(a.view(np.ndarray), [2.0, 4.0])
    np.testing.assert_array_equal(b.view(np.ndarray), [5.0, 7.0])   # not the root: unchanged
    root.bcast(a)
    np.testing.assert_array_equal(a.view(np.ndarray), [2.0, 4.0])


def test_device_communicator_synchronises_and_passes_device_buffers():
    ops = FakeOps()
    mpi = FakeMPIComm(ops, size=2, device_ok=True)
    comm = DeviceCommunicator(AllreduceCommunicator(mpi), ops)
    buf = _device(ops, [1.5])
    ops.pending = 1
    comm.allreduce(buf)
    assert isinstance(buf, DeviceArray) and float(buf[0]) == 3.0
    assert ops.copies_to_host == ops.copies_to_device == 0 and ops.synchronizations == 1


def test_unsynchronised_call_is_caught_by_the_fake():
    ops = FakeOps()
    mpi = FakeMPIComm(ops, size=2)
    host = np.ones(2)
    ops.pending = 1
    with pytest.raises(AssertionError, match="synchronised"):
        AllreduceCommunicator(mpi).allreduce(host)


def test_shared_gpu_message():
    assert shared_gpu_message([("a", "0000:01"), ("a", "0000:02"), ("b", "0000:01")]) is None
    message = shared_gpu_message([("a", "0000:01"), ("b", "0000:01"), ("a", "0000:01")])
    assert "ranks 0 and 2 share GPU 0000:01 on a" in message and "\n" not in message


def test_cpu_communicator_and_nccl_refused_on_cpu():
    ops = FakeOps()
    comm = make_device_communicator("allreduce", FakeMPIComm(ops), cpu_backend(), "on")
    assert type(comm) is AllreduceCommunicator and comm.cuda_aware.startswith("no GPU")
    assert "no effect" in comm.cuda_aware
    with pytest.raises(PgdError, match="nccl needs the GPU"):
        make_device_communicator("nccl", FakeMPIComm(ops), cpu_backend())


def test_single_rank_staging_copies_nothing():
    ops = FakeOps()
    mpi = FakeMPIComm(ops, size=1)
    comm = StagedCommunicator(AllreduceCommunicator(mpi), ops)
    buf = _device(ops, [4.0])
    comm.allreduce(buf)
    comm.bcast(buf)
    assert float(buf[0]) == 4.0 and ops.copies_to_host == ops.copies_to_device == 0 and not ops.pinned
    assert comm.calls == 2 and mpi.calls == []
