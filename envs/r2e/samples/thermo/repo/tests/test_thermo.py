from thermo import is_freezing, phase


def test_cold_is_ice():
    assert phase(-5) == "ice"


def test_warm_is_water():
    assert phase(20) == "water"


def test_boiling_point_is_steam():
    assert phase(100) == "steam"


def test_freezing_point_counts_as_freezing():
    assert is_freezing(0)
