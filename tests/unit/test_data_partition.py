import pytest

from pgd.data import block_range


@pytest.mark.parametrize("size", range(1, 9))
def test_block_range_covers_rows_once_in_order(size):
    for n in range(51):
        ranges = [block_range(n, size, rank) for rank in range(size)]
        assert ranges[0][0] == 0 and ranges[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
        lengths = [stop - start for start, stop in ranges]
        assert max(lengths) - min(lengths) <= 1
        assert lengths == sorted(lengths, reverse=True)  # extra rows go to the first ranks


@pytest.mark.parametrize("n, size, rank", [(5, 0, 0), (5, 2, 2), (5, 2, -1), (-1, 2, 0)])
def test_block_range_rejects_bad_arguments(n, size, rank):
    with pytest.raises(ValueError):
        block_range(n, size, rank)
