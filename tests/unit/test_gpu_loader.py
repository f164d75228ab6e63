"""The GPU loader's memory check and its bounded, pinned block loading (fake device on the CPU)."""

import numpy as np
import pytest

from pgd.data import inspect_dataset
from pgd.errors import InputError
from pgd.loader.device import RESERVE_BYTES, check_fits, device_bytes_needed, load_to_device
from support.files import write_dataset
from support.gpu_fakes import DeviceArray, FakeOps


def test_bytes_needed():
    assert device_bytes_needed(1000, 61, 4, reserve=0) == 1000 * 64 * 4
    assert device_bytes_needed(0, 10, 8) == RESERVE_BYTES


def test_check_fits_message():
    check_fits(rank=0, n_local=1000, d=10, dtype="float32", free=1 << 30, device_id=0, ranks=1)
    with pytest.raises(InputError) as caught:
        check_fits(rank=3, n_local=50_000_000, d=1024, dtype="float64", free=80 << 30, device_id=1, ranks=4)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("rank 3: its 50000000 x 1024 float64 slice needs 382.")
    assert "GPU 1 but only 80.0 GiB is free" in message
    assert "use about 20 ranks" in message and "--dtype float32, or --device cpu" in message
    with pytest.raises(InputError, match=r"use about 2 ranks \(more GPUs or nodes\), or --device cpu$"):
        check_fits(rank=0, n_local=10 ** 9, d=10, dtype="float32", free=30 << 30, device_id=0, ranks=1)


@pytest.mark.parametrize("block_bytes", [10 ** 9, 3 * 7 * 8, 7 * 8])
def test_blocked_load_matches_the_file(tmp_path, block_bytes):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((23, 7))
    y = rng.standard_normal(23)
    X[17, 3] = np.nan
    y[20] = np.inf
    meta = inspect_dataset(write_dataset(tmp_path / "d.h5", X, y), x_key="X", y_key="y")
    ops = FakeOps()
    X_dev, y_host, y_dev, (count, first) = load_to_device(meta, 4, 22, np.float32, ops=ops, locking="false",
                                                          block_bytes=block_bytes)
    assert isinstance(X_dev, DeviceArray) and X_dev.dtype == np.float32
    np.testing.assert_array_equal(X_dev.view(np.ndarray), X[4:22].astype(np.float32))
    np.testing.assert_array_equal(y_dev.view(np.ndarray), y[4:22].astype(np.float32))
    np.testing.assert_array_equal(y_host, y[4:22].astype(np.float32))
    assert (count, first) == (2, 13)
    block_rows = max(1, min(18, block_bytes // (7 * 4)))
    assert len(ops.pinned) == (1 if block_rows >= 18 else 2)        # double buffering at most
    assert all(buffer.shape[0] == block_rows for buffer in ops.pinned)  # host memory bounded by blocks
    assert ops.copies_to_device == -(-18 // block_rows) + 1 and ops.pending == 0
