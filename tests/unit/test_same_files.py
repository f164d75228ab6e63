"""refuse_same_files: outputs that are inputs or each other, and the checkpoint rotation's own hard link."""

from __future__ import annotations

import os

import pytest

from pgd.errors import InputError
from pgd.fileio import refuse_same_files
from pgd.outputs.checkpoint import ROTATION_LINKED, checkpoint_files


def test_a_rotation_link_is_not_two_outputs_in_one_file(tmp_path):
    """While a checkpoint rotates (or after a run was killed there), PATH and PATH.prev share an inode: a second
    run must then meet the lock, not a false 'same file' refusal."""
    data, ck = tmp_path / "d.h5", tmp_path / "ck.h5"
    data.write_bytes(b"x")
    ck.write_bytes(b"checkpoint")
    files = checkpoint_files(str(ck))
    os.link(ck, files["--checkpoint's previous file"])
    with pytest.raises(InputError, match="are the same file"):   # the check can fail: without the exemption
        refuse_same_files({"the data file": str(data)}, files)
    refuse_same_files({"the data file": str(data)}, files, linked_by_design=ROTATION_LINKED)


def test_the_exemption_is_by_inode_only(tmp_path):
    """The same path (a symbolic link) and a hard link to another output or an input are still refused."""
    data, ck, out = tmp_path / "d.h5", tmp_path / "ck.h5", tmp_path / "model.h5"
    data.write_bytes(b"x")
    ck.write_bytes(b"checkpoint")
    files = checkpoint_files(str(ck))
    os.symlink(ck, files["--checkpoint's previous file"])
    with pytest.raises(InputError, match="are the same file"):
        refuse_same_files({"the data file": str(data)}, files, linked_by_design=ROTATION_LINKED)
    os.remove(files["--checkpoint's previous file"])
    os.link(data, out)
    with pytest.raises(InputError, match="never writes over its inputs"):
        refuse_same_files({"the data file": str(data)}, {"--out": str(out), **files},
                          linked_by_design=ROTATION_LINKED)
