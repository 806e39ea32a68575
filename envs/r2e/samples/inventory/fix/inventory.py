"""An in-memory stock list."""


class Inventory:
    def __init__(self, items: dict[str, int] | None = None):
        self.items = dict(items or {})

    def add(self, name: str, count: int = 1) -> None:
        self.items[name] = self.items.get(name, 0) + count

    def remove(self, name: str, count: int = 1) -> None:
        have = self.items.get(name, 0)
        if count > have:
            raise ValueError(f"only {have} {name} in stock")
        self.items[name] = have - count
