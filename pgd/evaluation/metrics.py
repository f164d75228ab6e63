"""Evaluation metrics from local sums combined over MPI.

Conventions
-----------
- Inputs are *host* numpy arrays of one rank's rows: targets/labels ``y`` ``(n_local,)`` and raw
  predictions/scores ``z`` ``(n_local,)`` (float32 or float64); ``n_local`` may be 0.
- ``comm`` is an mpi4py communicator (``MPI.COMM_WORLD``, a sub-communicator or ``MPI.COMM_SELF``).
  Every rank must call every function (they are collective); only buffer-based calls are used.
- Sums are formed in float64 (counts in int64), combined with ``Allreduce`` and normalised once by the
  global row count (or the global sum of the sample weights ``s``, when given: every metric is then the
  weighted one, as scikit-learn's ``sample_weight``).  Results are Python floats/ints, identical on every
  rank.
- Binary classification labels are in {0, 1}; a row is positive where its label equals 1.  Multiclass
  labels are class indices ``0 .. K-1`` and the scores a ``(n_local, K)`` matrix.
- A metric that is undefined (no rows, no variance, one class only) is ``nan``.
"""

from __future__ import annotations

import math

import numpy as np
from mpi4py import MPI

from pgd.local.losses import LogisticLoss

__all__ = ["regression_metrics", "classification_metrics", "multiclass_metrics", "distributed_roc_auc"]


def _global_sums(local_values, comm, dtype=np.float64) -> np.ndarray:
    """Allreduce-sum a short vector of local values; returns the global sums (numpy array)."""
    send = np.asarray(local_values, dtype=dtype)
    recv = np.empty_like(send)
    comm.Allreduce(send, recv, op=MPI.SUM)
    return recv


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else math.nan


def _row_weights(y, weight) -> np.ndarray:
    """Float64 row weights (ones without sample weights)."""
    return np.ones(np.shape(y)) if weight is None else np.asarray(weight, dtype=np.float64)


def regression_metrics(y, z, comm, weight=None) -> dict:
    """Mean squared/absolute error and R^2 over all ranks.

    Parameters
    ----------
    y, z : numpy.ndarray, (n_local,)
        Targets and predictions of this rank's rows.
    comm : mpi4py.MPI.Comm
        Communicator over which the rows are spread.
    weight : numpy.ndarray, (n_local,), optional
        Sample weights (weighted means and a weighted R^2).

    Returns
    -------
    dict
        ``mse``, ``rmse``, ``mae``, ``r2`` (``1 - SSE/SST``, SST from a second pass around the global
        mean; ``nan`` when SST is 0) and ``n`` (global row count).
    """
    y = np.asarray(y, dtype=np.float64)
    s = _row_weights(y, weight)
    residual = np.asarray(z, dtype=np.float64) - y
    n, total, y_sum, sse, sae = _global_sums(
        [y.size, s.sum(), s @ y, s @ (residual * residual), s @ np.abs(residual)], comm
    )
    n = int(n)
    y_mean = _ratio(y_sum, total)
    centred = y - y_mean
    (sst,) = _global_sums([s @ (centred * centred)], comm)
    mse = _ratio(sse, total)
    return {
        "mse": mse,
        "rmse": math.sqrt(mse),
        "mae": _ratio(sae, total),
        "r2": 1.0 - sse / sst if sst > 0 else math.nan,
        "n": n,
    }


def classification_metrics(y, z, comm, threshold: float = 0.5, weight=None) -> dict:
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
    weight : numpy.ndarray, (n_local,), optional
        Sample weights (every metric weighted, the ROC AUC over weighted pairs).

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
    s = _row_weights(y, weight)
    loss_sum = s @ LogisticLoss().pointwise(y.astype(np.float64), z.astype(np.float64), np)
    logit_threshold = math.log(threshold / (1.0 - threshold))
    predicted = z >= logit_threshold
    actual = y == 1
    n, total, loss_total, correct, positives, predicted_positives = _global_sums(
        [y.size, s.sum(), loss_sum, s[predicted == actual].sum(), s[actual].sum(), s[predicted].sum()],
        comm,
    )
    return {
        "log_loss": _ratio(loss_total, total),
        "accuracy": _ratio(correct, total),
        "positive_rate": _ratio(positives, total),
        "predicted_positive_rate": _ratio(predicted_positives, total),
        "roc_auc": distributed_roc_auc(z, y, comm, weight),
        "n": int(n),
    }


def multiclass_metrics(y, scores, comm, weight=None) -> dict:
    """Log-loss, accuracy, macro-F1 and the confusion matrix of a K-class model over all ranks (one Allreduce).

    Parameters
    ----------
    y : numpy.ndarray, (n_local,)
        Class indices ``0 .. K-1`` (as floats or integers).
    scores : numpy.ndarray, (n_local, K)
        Raw scores ``X W + b``; probabilities are their row-wise softmax.
    comm : mpi4py.MPI.Comm
        Communicator over which the rows are spread.
    weight : numpy.ndarray, (n_local,), optional
        Sample weights (every count is then a weighted count).

    Returns
    -------
    dict
        ``log_loss``, ``accuracy``, ``macro_f1``, ``confusion`` (K x K nested list, rows true classes,
        columns predicted classes; weighted counts) and ``n``.  Classes never true and never predicted are
        left out of the macro average (scikit-learn's ``f1_score(average="macro")`` over the labels present).
    """
    scores = np.asarray(scores, dtype=np.float64)
    n_classes = scores.shape[1]
    labels = np.asarray(y).astype(np.int64)
    s = _row_weights(labels, weight)
    rows = np.arange(len(labels))
    top = scores.max(axis=1) if len(labels) else np.zeros(0)
    row_loss = top + np.log(np.exp(scores - top[:, None]).sum(axis=1)) - scores[rows, labels]
    predicted = scores.argmax(axis=1) if len(labels) else labels
    local = np.zeros(n_classes * n_classes + 3)
    np.add.at(local, labels * n_classes + predicted, s)
    local[-3:] = (float(s @ row_loss), float(s.sum()), len(labels))
    total = _global_sums(local, comm)
    confusion = total[:-3].reshape(n_classes, n_classes)
    true_count, predicted_count, correct = confusion.sum(axis=1), confusion.sum(axis=0), np.diag(confusion)
    present = (true_count + predicted_count) > 0
    f1 = np.divide(2 * correct, true_count + predicted_count, out=np.zeros(n_classes), where=present)
    return {"log_loss": _ratio(total[-3], total[-2]),
            "accuracy": _ratio(float(correct.sum()), total[-2]),
            "macro_f1": float(f1[present].mean()) if present.any() else math.nan,
            "confusion": confusion.tolist(),
            "n": int(total[-1])}


def distributed_roc_auc(scores, labels, comm, weight=None) -> float:
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
    weight : numpy.ndarray, (n_local,), optional
        Sample weights: a pair counts ``s_i s_j`` (the negatives travel with the prefix sums of their
        weights, and the counts become float64 sums).

    Returns
    -------
    float
        The AUC, or ``nan`` when there are no positives or no negatives at all.
    """
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(labels) == 1
    if weight is not None:
        return _weighted_roc_auc(scores, positive, np.asarray(weight, dtype=np.float64), comm)
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


def _weighted_roc_auc(scores, positive, weight, comm) -> float:
    """:func:`distributed_roc_auc` with sample weights: the same ring, float64 weighted pair counts."""
    order = np.argsort(scores[~positive], kind="stable")
    negatives = np.empty((2, order.size + 1))
    negatives[0, :-1] = scores[~positive][order]
    negatives[1, 0] = 0.0
    np.cumsum(weight[~positive][order], out=negatives[1, 1:])   # exclusive prefix sums of the weights
    positive_scores, positive_weights = scores[positive], weight[positive]
    size, rank = comm.Get_size(), comm.Get_rank()
    counts = np.empty(size, dtype=np.int64)
    comm.Allgather(np.array([order.size], dtype=np.int64), counts)
    width = int(counts.max()) + 1
    visiting, incoming = np.zeros((2, width)), np.zeros((2, width))
    visiting[:, : order.size + 1] = negatives
    lower = equal = 0.0
    right, left = (rank + 1) % size, (rank - 1) % size
    for step in range(size):
        origin = (rank - step) % size
        count = int(counts[origin])
        below = np.searchsorted(visiting[0, :count], positive_scores, side="left")
        below_or_equal = np.searchsorted(visiting[0, :count], positive_scores, side="right")
        prefix = visiting[1, : count + 1]
        lower += float(positive_weights @ prefix[below])
        equal += float(positive_weights @ (prefix[below_or_equal] - prefix[below]))
        if step < size - 1:
            comm.Sendrecv(visiting, dest=right, recvbuf=incoming, source=left)
            visiting, incoming = incoming, visiting
    lower, equal, positive_total, negative_total = _global_sums(
        [lower, equal, positive_weights.sum(), weight[~positive].sum()], comm)
    if positive_total <= 0 or negative_total <= 0:
        return math.nan
    return (lower + 0.5 * equal) / (positive_total * negative_total)
