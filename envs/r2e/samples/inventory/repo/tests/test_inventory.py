import pytest

from inventory import Inventory


def test_add_counts_up():
    inv = Inventory()
    inv.add("bolt", 3)
    inv.add("bolt")
    assert inv.items == {"bolt": 4}


def test_new_inventories_do_not_share_stock():
    first = Inventory()
    first.add("nut")
    assert Inventory().items == {}


def test_removing_more_than_in_stock_raises():
    inv = Inventory({"gear": 1})
    with pytest.raises(ValueError):
        inv.remove("gear", 2)
