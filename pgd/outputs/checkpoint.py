"""Atomic HDF5 checkpoints: format, validation, data fingerprint, discovery with fallback, resume.

Layout
------
A checkpoint is an HDF5 file with root attributes ``pgd_checkpoint = 1``, ``iteration``, ``world_size``,
``config`` (the resolved configuration as JSON), ``fingerprint`` (JSON, see :func:`data_fingerprint`),
``random_state`` (JSON), ``sharded`` (0: one optimizer state for all ranks, 1: one group ``rank_R`` per
rank), ``pgd_version`` and ``checksum`` (SHA-256 over everything else, so a damaged file is recognised
even when HDF5 still opens it); ``/optimizer`` holds the optimizer's ``state_dict`` (arrays as datasets,
scalars as JSON attributes, nested dicts and lists as groups) and ``/history`` the per-iteration loss,
gradient norm and time.

``PATH`` is the newest checkpoint and ``PATH.prev`` the one before: a new checkpoint is written to a
temporary file in the same directory, flushed and fsynced, and only after every rank reported success is
the current ``PATH`` hard-linked to ``PATH.prev`` and the temporary file renamed onto ``PATH`` (so ``PATH``
exists at every moment).
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from contextlib import contextmanager

import h5py
import numpy as np

import pgd
from pgd.comm.host import collectively
from pgd.data.fingerprint import array_crc, combine_parts
from pgd.data.format import open_h5
from pgd.errors import InputError, PgdError
from pgd.fileio import LIBVER, PendingFile, write_failure
from pgd.outputs.runlock import RunLock, lock_path

CHECKPOINT_FORMAT = 1
PREVIOUS_SUFFIX = ".prev"
_LIST_MARK = "__list__"
FINGERPRINT_FORMAT = 2

#: Options that may differ between the run that wrote a checkpoint and the run that resumes it (run
#: control, outputs, where and how fast the arithmetic happens); any other difference is refused.
RESUMABLE_CHANGES = frozenset({
    "data", "max_iter", "tol", "rtol", "out", "metrics", "quiet", "log_every", "dry_run", "checkpoint",
    "checkpoint_every", "checkpoint_seconds", "resume", "max_time", "hdf5_locking", "device", "comm",
    "block_bytes", "updates"})


class CheckpointError(PgdError):
    """A checkpoint that cannot be used (damaged, or written for other data or options)."""


def previous_path(path: str) -> str:
    """Where the checkpoint before the newest one is kept."""
    return path + PREVIOUS_SUFFIX


# ---------------------------------------------------------------------------------------------------
# data fingerprint


def _layout(blocks: list, n: int, d: int) -> str:
    """``"rows"`` when the non-empty blocks are whole rows, contiguous in rank order, covering all rows."""
    parts = [block for block in blocks if block[0] < block[1]]
    expected = 0
    for start, stop, col_start, col_stop in parts:
        if start != expected or (col_start, col_stop) != (0, d):
            return "blocks " + ",".join(f"{a}:{b}x{c}:{e}" for a, b, c, e in parts)
        expected = stop
    return "rows" if expected == n else "blocks"


def data_fingerprint(world, meta, X, y, *, rows: tuple[int, int], cols: tuple[int, int]) -> dict:
    """Shapes, dtypes and the CRC-32 of every byte the ranks loaded, combined in rank order (collective).

    When every rank holds whole rows, contiguous in rank order (layout ``"rows"``), the CRC-32s are those
    of the whole ``X`` and ``y`` in row-major order, so they do not depend on the number of ranks. Other
    layouts (the blocks of the feature and hybrid grids) are named in the fingerprint, which then holds for
    that layout only.

    Parameters
    ----------
    meta : pgd.data.DatasetMeta
        The dataset's shape and stored dtype.
    X, y : array
        This rank's loaded rows, on the host or a device (empty or None on ranks without data).
    rows, cols : tuple of int
        The global row and column ranges of ``X``.
    """
    sparse = bool(getattr(meta, "sparse", False))
    if sparse:   # a CSR slab: its values, column indices and row lengths, each a stream in row order
        part = (array_crc(X.data), array_crc(y), str(X.dtype), (*rows, *cols), array_crc(X.indices),
                array_crc(np.diff(X.indptr).astype(np.int64)))
    else:
        part = (array_crc(X), array_crc(y), str(getattr(X, "dtype", "")), (*rows, *cols))
    parts = world.gather(part, root=0)
    fingerprint = None
    if world.Get_rank() == 0:
        x_crc, _ = combine_parts(p[0] for p in parts)
        y_crc, _ = combine_parts(p[1] for p in parts)
        fingerprint = {"format": FINGERPRINT_FORMAT, "x_shape": [meta.n, meta.d], "x_dtype": str(meta.dtype),
                       "y_shape": [meta.n] if meta.y_key else None, "loaded_dtype": parts[-1][2],
                       "layout": _layout([p[3] for p in parts], meta.n, meta.d),
                       "x_crc32": f"{x_crc:08x}", "y_crc32": f"{y_crc:08x}"}
        if sparse:
            fingerprint["x_nnz"] = int(meta.nnz)
            fingerprint["x_indices_crc32"] = f"{combine_parts(p[4] for p in parts)[0]:08x}"
            fingerprint["x_row_nnz_crc32"] = f"{combine_parts(p[5] for p in parts)[0]:08x}"
    return world.bcast(fingerprint, root=0)


# ---------------------------------------------------------------------------------------------------
# generic state (optimizer state_dict) <-> HDF5


def _write_state(group: h5py.Group, state) -> None:
    """Arrays as datasets, scalars as JSON attributes, dicts as groups, lists as numbered groups."""
    items = enumerate(state) if isinstance(state, (list, tuple)) else state.items()
    if isinstance(state, (list, tuple)):
        group.attrs[_LIST_MARK] = len(state)
    for key, value in items:
        key = str(key)
        if isinstance(value, dict | list | tuple):
            _write_state(group.create_group(key), value)
        elif isinstance(value, np.ndarray) or (hasattr(value, "__array__") and not np.isscalar(value)):
            group.create_dataset(key, data=np.asarray(value))
        else:
            if isinstance(value, np.generic):
                value = value.item()
            group.attrs[key] = json.dumps(value)


def _read_state(group: h5py.Group):
    state = {key: json.loads(value) for key, value in group.attrs.items() if key != _LIST_MARK}
    for key, item in group.items():
        state[key] = _read_state(item) if isinstance(item, h5py.Group) else item[()]
    if _LIST_MARK in group.attrs:
        return [state[str(index)] for index in range(int(group.attrs[_LIST_MARK]))]
    return state


def _checksum(handle: h5py.File) -> str:
    """SHA-256 over every attribute (except the checksum) and every dataset's bytes, in name order."""
    digest = hashlib.sha256()

    def visit(name: str, item) -> None:
        digest.update(name.encode())
        for key in sorted(item.attrs):
            if key != "checksum":
                digest.update(key.encode() + repr(item.attrs[key]).encode())
        if isinstance(item, h5py.Dataset):
            digest.update(np.ascontiguousarray(item[()]).tobytes())

    visit("/", handle)
    names = []
    handle.visit(names.append)
    for name in sorted(names):
        visit(name, handle[name])
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------------
# writing


def _write_file(target, payload: dict) -> None:
    """Write a checkpoint into ``target`` (a path or a binary file object)."""
    with h5py.File(target, "w", libver=LIBVER) as handle:
        handle.attrs["pgd_checkpoint"] = CHECKPOINT_FORMAT
        handle.attrs["pgd_version"] = pgd.__version__
        for key in ("iteration", "world_size", "sharded"):
            handle.attrs[key] = int(payload[key])
        for key in ("config", "fingerprint", "random_state"):
            handle.attrs[key] = json.dumps(payload[key], sort_keys=True, default=str)
        _write_state(handle.create_group("optimizer"), payload["optimizer"])
        for key, values in payload["history"].items():
            handle.create_dataset(f"history/{key}", data=np.asarray(values, dtype=np.float64))
        handle.attrs["checksum"] = _checksum(handle)


def _keep_previous(path: str) -> None:
    """Make ``path.prev`` the current ``path`` while ``path`` itself stays in place (a hard link)."""
    if not os.path.exists(path):
        return
    link = previous_path(path) + ".tmp"
    try:
        if os.path.lexists(link):
            os.unlink(link)
        os.link(path, link)
        os.replace(link, previous_path(path))
    except OSError:  # no hard links on this file system: a short window without ``path``
        os.replace(path, previous_path(path))


def remove_stale_temporaries(path: str) -> list[str]:
    """Delete temporary files that killed runs left next to checkpoint ``path``; returns their names.

    Only safe while holding the checkpoint's lock (:mod:`pgd.outputs.runlock`): no other run writes them then.
    """
    directory, name = os.path.split(os.path.abspath(path))
    stale = glob.glob(os.path.join(glob.escape(directory), f".{glob.escape(name)}.*.tmp"))
    stale += [p for p in (previous_path(path) + ".tmp",) if os.path.lexists(p)]
    for leftover in stale:
        try:
            os.unlink(leftover)
        except FileNotFoundError:
            pass
    return stale


def save_checkpoint(world, path: str, payload: dict) -> None:
    """Write ``payload`` as the newest checkpoint at ``path``; a collective call.

    Rank 0 writes an (unnamed where possible) temporary file next to ``path`` and fsyncs it; the checkpoint
    counts (``path`` becomes ``path.prev`` and the temporary file becomes ``path``) only after every rank
    reported success.
    """
    pending = None
    with collectively(world):
        if world.Get_rank() == 0:
            try:
                pending = PendingFile(path)
                _write_file(pending.file, payload)
                pending.sync()
            except (OSError, InputError) as error:
                if pending is not None:
                    pending.close()
                reason = write_failure(error) or str(error)
                raise CheckpointError(f"cannot write checkpoint {path}: {reason}") from None
    if world.Get_rank() == 0:
        _keep_previous(path)
        pending.commit()


# ---------------------------------------------------------------------------------------------------
# reading, validation, discovery


def _read_payload(handle: h5py.File, path: str) -> dict:
    if "pgd_checkpoint" not in handle.attrs:
        raise CheckpointError(f"{path} is not a pgd checkpoint")
    if handle.attrs.get("checksum") != _checksum(handle):
        raise CheckpointError(f"{path} is damaged (checksum mismatch)")
    payload = {key: int(handle.attrs[key]) for key in ("iteration", "world_size", "sharded")}
    for key in ("config", "fingerprint", "random_state"):
        payload[key] = json.loads(handle.attrs[key])
    payload["optimizer"] = _read_state(handle["optimizer"])
    payload["history"] = {key: handle["history"][key][()].tolist() for key in handle["history"]}
    return payload


def read_checkpoint(path: str) -> dict:
    """Read and verify one checkpoint file; raises :class:`CheckpointError` saying what is wrong."""
    try:
        with open_h5(path) as handle:
            return _read_payload(handle, path)
    except CheckpointError:
        raise
    except InputError as error:  # missing, unreadable, not HDF5 (a truncated file)
        raise CheckpointError(f"{path} is damaged or unreadable ({error})") from None
    except Exception as error:  # noqa: BLE001 - any other inconsistency means a damaged file
        raise CheckpointError(f"{path} is damaged ({type(error).__name__}: {error})") from None


def load_newest(path: str) -> tuple[dict | None, list[str]]:
    """The newest valid checkpoint among ``path`` and ``path.prev``, and messages about damaged ones.

    Returns ``(None, [])`` when neither file exists; raises :class:`CheckpointError` when files exist but
    none is valid.
    """
    candidates = [p for p in (path, previous_path(path)) if os.path.exists(p)]
    if not candidates:
        return None, []
    valid, problems = [], []
    for candidate in candidates:
        try:
            valid.append((read_checkpoint(candidate), candidate))
        except CheckpointError as error:
            problems.append(str(error))
    if not valid:
        raise CheckpointError(f"no valid checkpoint to resume from: {'; '.join(problems)}")
    payload, chosen = max(valid, key=lambda item: item[0]["iteration"])
    notes = [f"{problem}; resuming from {chosen} (iteration {payload['iteration']}) instead"
             for problem in problems]
    payload["path"] = chosen
    return payload, notes


def check_compatible(payload: dict, cfg, fingerprint: dict) -> None:
    """Refuse a checkpoint written for other data or with options that change the problem."""
    where = payload.get("path", "checkpoint")
    recorded = payload["fingerprint"]
    if recorded.get("format") != fingerprint.get("format"):
        raise CheckpointError(f"{where} was written by an older pgd whose data fingerprint cannot be compared "
                              "with this one; use another --checkpoint path")
    if recorded.get("layout") != fingerprint.get("layout"):
        raise CheckpointError(f"{where} was written with the data laid out as {recorded.get('layout')} and "
                              f"this run has {fingerprint.get('layout')}; resume with the same ranks and --grid")
    if recorded != fingerprint:
        differs = ", ".join(key for key in sorted(set(recorded) | set(fingerprint))
                            if recorded.get(key) != fingerprint.get(key))
        raise CheckpointError(f"{where} was written for different data than {cfg.data} ({differs} differ); "
                              "use another --checkpoint path")
    saved = payload["config"].get("values", {})
    for name in sorted(set(saved) | set(cfg.values)):
        if name in RESUMABLE_CHANGES:
            continue
        old = json.dumps(saved.get(name), sort_keys=True, default=str)
        new = json.dumps(cfg.values.get(name), sort_keys=True, default=str)
        if old != new:
            raise CheckpointError(f"{where} was written with --{name.replace('_', '-')} {json.loads(old)} "
                                  f"but this run has {json.loads(new)}; use the same value or another "
                                  "--checkpoint path")


def resume(cfg, world, optimizer, fingerprint: dict, unit: str = "iteration") -> tuple[int, dict] | None:
    """Load the newest valid checkpoint into ``optimizer``; ``(iteration, history)`` or None to start anew.

    A collective call: rank 0 reads and checks the files, every rank gets the same state or the same
    error.  Messages (a damaged newest file, another rank count, no checkpoint yet) go to rank 0's stdout.
    """
    payload, notes = None, []
    with collectively(world):
        if world.Get_rank() == 0:
            payload, notes = load_newest(cfg.checkpoint)
            if payload is not None:
                check_compatible(payload, cfg, fingerprint)
    if world.Get_rank() == 0 and payload is not None and payload["sharded"]:
        states = [payload["optimizer"].get(f"rank_{rank}") for rank in range(world.Get_size())]
        payload["optimizer"] = None
    else:
        states = None
    payload = world.bcast(payload, root=0)
    if payload is not None and payload["sharded"]:
        if payload["world_size"] != world.Get_size():
            raise CheckpointError(f"{payload['path']} holds per-rank state of {payload['world_size']} ranks; "
                                  f"resume it with {payload['world_size']} ranks", collective=True)
        payload["optimizer"] = world.scatter(states, root=0)
    if world.Get_rank() == 0:
        for note in notes:
            print(f"pgd: warning: {note}", flush=True)
        if payload is None:
            print(f"pgd: no checkpoint at {cfg.checkpoint} yet; starting from the beginning", flush=True)
        else:
            print(f"pgd: resuming from {payload['path']} at {unit} {payload['iteration']}", flush=True)
            if payload["world_size"] != world.Get_size():
                print(f"pgd: note: the checkpoint was written by {payload['world_size']} ranks and this run "
                      f"has {world.Get_size()}; results match an uninterrupted run up to rounding only",
                      flush=True)
    if payload is None:
        return None
    optimizer.load_state_dict(payload["optimizer"])
    rng = getattr(optimizer, "rng", None)
    if rng is not None and payload["random_state"].get("bit_generator"):
        rng.bit_generator.state = payload["random_state"]["bit_generator"]
    return payload["iteration"], payload["history"]


def _state_digest(state) -> str:
    """SHA-256 of a state dict (arrays by their bytes), to tell replicated from per-rank state."""
    digest = hashlib.sha256()
    items = enumerate(state) if isinstance(state, (list, tuple)) else sorted(state.items())
    for key, value in items:
        digest.update(str(key).encode())
        if isinstance(value, dict | list | tuple):
            digest.update(_state_digest(value).encode())
        elif hasattr(value, "__array__") and not np.isscalar(value):
            digest.update(np.ascontiguousarray(value).tobytes())
        else:
            digest.update(repr(value).encode())
    return digest.hexdigest()


def checkpoint_payload(cfg, world, optimizer, iteration: int, history: dict, fingerprint: dict) -> dict:
    """Everything a checkpoint holds; a collective call, complete on rank 0.

    The optimizer state is stored once when every rank holds the same bits (data parallelism), and as
    one group per rank (``rank_0``, ``rank_1``, ...; ``sharded = 1``) when ranks hold different parts.
    """
    state = optimizer.state_dict()
    sharded = len(set(world.allgather(_state_digest(state)))) > 1
    if sharded:
        states = world.gather(state, root=0)
        state = {f"rank_{rank}": part for rank, part in enumerate(states or [])}
    rng = getattr(optimizer, "rng", None)
    return {"iteration": iteration, "world_size": world.Get_size(), "sharded": int(sharded),
            "config": json.loads(cfg.to_json()), "fingerprint": fingerprint,
            "random_state": {"seed": cfg.seed,
                             "bit_generator": rng.bit_generator.state if rng is not None else None},
            "optimizer": state, "history": history or {}}


def check_checkpoint_options(cfg) -> None:
    """Option combinations that make no sense, as one-line errors (same on every rank)."""
    if cfg.resume and not cfg.checkpoint:
        raise InputError("--resume needs --checkpoint PATH (where the checkpoints are)", collective=True)
    if (cfg.checkpoint_every or cfg.checkpoint_seconds) and not cfg.checkpoint:
        raise InputError("--checkpoint-every/--checkpoint-seconds need --checkpoint PATH", collective=True)


def checkpoint_files(path: str) -> dict:
    """The files a run with ``--checkpoint path`` writes, by what they are (for the same-file check)."""
    return {"--checkpoint": path, "--checkpoint's previous file": previous_path(path),
            "--checkpoint's lock file": lock_path(path)}


#: A checkpoint and its previous file share an inode for a moment while a checkpoint is rotated (the current file
#: is hard-linked to the previous name before the new one is renamed in), in a running run or one killed there.
ROTATION_LINKED = (("--checkpoint", "--checkpoint's previous file"),)


@contextmanager
def hold_checkpoint_lock(world, path: str | None):
    """Rank 0 holds ``path``'s lock (:mod:`pgd.outputs.runlock`) for the block; a collective call.

    Another run holding it is refused on every rank in one line. Once the lock is held, temporary files
    that killed runs left next to ``path`` are removed (no other run can be writing them).
    """
    lock = RunLock(path) if path and world.Get_rank() == 0 else None
    with collectively(world):
        if lock is not None:
            lock.acquire()
            remove_stale_temporaries(path)
    try:
        yield
    finally:
        if lock is not None:
            lock.release()
