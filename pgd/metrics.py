"""Evaluation metrics from local sums combined over MPI.

Conventions
-----------
- Inputs are *host* numpy arrays of one rank's rows: targets/labels ``y`` ``(n_local,)`` and raw
  predictions/scores ``z`` ``(n_local,)`` (float32 or float64); ``n_local`` may be 0.
- ``comm`` is an mpi4py communicator (``MPI.COMM_WORLD``, a sub-communicator or ``MPI.COMM_SELF``).
  Every rank must call every function (they are collective); only buffer-based calls are used.
- Sums are formed in float64 (counts in int64), combined with ``Allreduce`` and normalised once by the
  global row count.  Results are Python floats/ints, identical on every rank.
- Classification labels are in {0, 1}; a row is positive where its label equals 1.
- A metric that is undefined (no rows, no variance, one class only) is ``nan``.
"""

from __future__ import annotations

import math

import numpy as np
from mpi4py import MPI

from pgd.losses import LogisticLoss

__all__ = ["regression_metrics", "classification_metrics", "distributed_roc_auc"]


def _global_sums(local_values, comm, dtype=np.float64) -> np.ndarray:
    """Allreduce-sum a short vector of local values; returns the global sums (numpy array)."""
    send = np.asarray(local_values, dtype=dtype)
    recv = np.empty_like(send)
    comm.Allreduce(send, recv, op=MPI.SUM)
    return recv


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else math.nan


def regression_metrics(y, z, comm) -> dict:
    """Mean squared/absolute error and R^2 over all ranks.

    Parameters
    ----------
    y, z : numpy.ndarray, (n_local,)
        Targets and predictions of this rank's rows.
    comm : mpi4py.MPI.Comm
        Communicator over which the rows are spread.

    Returns
    -------
    dict
        ``mse``, ``rmse``, ``mae``, ``r2`` (``1 - SSE/SST``, SST from a second pass around the global
        mean; ``nan`` when SST is 0) and ``n`` (global row count).
    """
    y = np.asarray(y, dtype=np.float64)
    residual = np.asarray(z, dtype=np.float64) - y
    n, y_sum, sse, sae = _global_sums(
        [y.size, y.sum(), np.dot(residual, residual), np.abs(residual).sum()], comm
    )
    n = int(n)
    y_mean = _ratio(y_sum, n)
    centred = y - y_mean
    (sst,) = _global_sums([np.dot(centred, centred)], comm)
    mse = _ratio(sse, n)
    return {
        "mse": mse,
        "rmse": math.sqrt(mse),
        "mae": _ratio(sae, n),
        "r2": 1.0 - sse / sst if sst > 0 else math.nan,
        "n": n,
    }


def classification_metrics(y, z, comm, threshold: float = 0.5) -> dict:
    """Log-loss, accuracy and ROC AUC of a binary classifier over all ranks.

    Parameters
    ----------
    y : numpy.ndarray, (n_local,)
        Labels in {0, 1}.
    z : numpy.ndarray, (n_local,)
        Raw scores (logits); probabilities are ``sigmoid(z)``.
    comm : mpi4py.MPI.Comm
        Communicator over which the rows are spread.
    threshold : float, optional
        A row is predicted positive when ``sigmoid(z) >= threshold``, in (0, 1).

    Returns
    -------
    dict
        ``log_loss`` (mean logistic loss, computed stably from ``z``), ``accuracy``,
        ``positive_rate`` (fraction of rows labelled 1), ``predicted_positive_rate``, ``roc_auc``
        (exact, see :func:`distributed_roc_auc`) and ``n``.
    """
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    y = np.asarray(y)
    z = np.asarray(z)
    loss_sum = LogisticLoss().pointwise(y.astype(np.float64), z.astype(np.float64), np).sum()
    logit_threshold = math.log(threshold / (1.0 - threshold))
    predicted = z >= logit_threshold
    actual = y == 1
    n, loss_total, correct, positives, predicted_positives = _global_sums(
        [y.size, loss_sum, np.count_nonzero(predicted == actual), np.count_nonzero(actual),
         np.count_nonzero(predicted)],
        comm,
    )
    return {
        "log_loss": _ratio(loss_total, n),
        "accuracy": _ratio(correct, n),
        "positive_rate": _ratio(positives, n),
        "predicted_positive_rate": _ratio(predicted_positives, n),
        "roc_auc": distributed_roc_auc(z, y, comm),
        "n": int(n),
    }


def distributed_roc_auc(scores, labels, comm) -> float:
    """Exact ROC AUC over all ranks without gathering the scores on one rank.

    AUC is the Mann-Whitney statistic: the fraction of (positive, negative) pairs where the positive
    scores higher, ties counting one half.  Each rank sorts its negatives' scores; these sorted arrays
    travel once around a ring of ranks (``Sendrecv``), and at every step each rank counts, for its
    positives, the visiting negatives that are strictly lower and equal (``searchsorted``).  The
    integer counts are summed with ``Allreduce`` in int64.  Memory per rank: two buffers of the
    largest negative count of any rank.

    Parameters
    ----------
    scores : numpy.ndarray, (n_local,)
        Scores (any monotone transform of the probability gives the same AUC); must not be NaN.
    labels : numpy.ndarray, (n_local,)
        Labels in {0, 1}.
    comm : mpi4py.MPI.Comm
        Communicator over which the rows are spread; ranks with no rows take part.

    Returns
    -------
    float
        The AUC, or ``nan`` when there are no positives or no negatives at all.
    """
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(labels) == 1
    positive_scores = np.sort(scores[positive])
    negative_scores = np.sort(scores[~positive])

    size, rank = comm.Get_size(), comm.Get_rank()
    negative_counts = np.empty(size, dtype=np.int64)
    comm.Allgather(np.array([negative_scores.size], dtype=np.int64), negative_counts)
    buffer_size = max(int(negative_counts.max()), 1)
    visiting = np.empty(buffer_size, dtype=np.float64)
    incoming = np.empty(buffer_size, dtype=np.float64)
    visiting[: negative_scores.size] = negative_scores

    lower = equal = 0
    right, left = (rank + 1) % size, (rank - 1) % size
    for step in range(size):
        origin = (rank - step) % size  # the rank whose negatives are visiting
        negatives = visiting[: negative_counts[origin]]
        below = np.searchsorted(negatives, positive_scores, side="left")
        below_or_equal = np.searchsorted(negatives, positive_scores, side="right")
        lower += int(below.sum(dtype=np.int64))
        equal += int((below_or_equal - below).sum(dtype=np.int64))
        if step < size - 1:
            incoming_count = int(negative_counts[(origin - 1) % size])
            comm.Sendrecv(
                [visiting, int(negative_counts[origin]), MPI.DOUBLE], dest=right,
                recvbuf=[incoming, incoming_count, MPI.DOUBLE], source=left,
            )
            visiting, incoming = incoming, visiting

    lower, equal, n_positive = (
        int(v) for v in _global_sums([lower, equal, positive_scores.size], comm, dtype=np.int64)
    )
    n_negative = int(negative_counts.sum())
    if n_positive == 0 or n_negative == 0:
        return math.nan
    # exact integer arithmetic, one rounding at the end
    return (2 * lower + equal) / (2 * n_positive * n_negative)
