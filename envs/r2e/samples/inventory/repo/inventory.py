"""An in-memory stock list."""


class Inventory:
    def __init__(self, items: dict[str, int] = {}):
        self.items = items

    def add(self, name: str, count: int = 1) -> None:
        self.items[name] = self.items.get(name, 0) + count

    def remove(self, name: str, count: int = 1) -> None:
        self.items[name] = self.items.get(name, 0) - count
