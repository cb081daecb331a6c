"""Fixed-size chunk boundaries."""

import pytest

from ckptsync.chunking import CHUNK_SIZE, chunk_spans


@pytest.mark.parametrize("size", [0, 1, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 3 * CHUNK_SIZE + 7])
def test_spans_cover_the_file_exactly_once_in_order(size):
    spans = list(chunk_spans(size))
    assert sum(n for _, n in spans) == size
    offset = 0
    for off, n in spans:
        assert off == offset and 0 < n <= CHUNK_SIZE
        offset += n


def test_invalid_chunk_size():
    with pytest.raises(ValueError):
        list(chunk_spans(10, 0))
