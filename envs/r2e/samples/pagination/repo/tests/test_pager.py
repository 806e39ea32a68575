import pytest

from pager import page_count, page_slice


def test_page_count_exact():
    assert page_count(20, 10) == 2


def test_page_count_with_remainder():
    assert page_count(21, 10) == 3


def test_first_page():
    assert page_slice(list(range(25)), 1, 10) == list(range(10))


def test_last_page():
    assert page_slice(list(range(25)), 3, 10) == [20, 21, 22, 23, 24]


def test_rejects_zero_per_page():
    with pytest.raises(ValueError):
        page_count(5, 0)
