from datekit import days_between, parse


def test_parse_iso_date():
    d = parse("2024-03-15")
    assert (d.year, d.month, d.day) == (2024, 3, 15)


def test_days_between_same_month():
    assert days_between("2024-03-01", "2024-03-11") == 10


def test_days_between_is_symmetric():
    assert days_between("2024-03-11", "2024-03-01") == 10
