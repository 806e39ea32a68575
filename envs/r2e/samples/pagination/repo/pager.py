"""Split a list of items into pages."""


def page_count(total: int, per_page: int) -> int:
    if per_page <= 0:
        raise ValueError("per_page must be positive")
    return total // per_page


def page_slice(items: list, page: int, per_page: int) -> list:
    """Items on `page` (pages are numbered from 1)."""
    start = page * per_page
    return items[start : start + per_page]
