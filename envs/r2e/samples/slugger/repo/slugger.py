"""URL slugs from titles."""


def slugify(title: str) -> str:
    return title.lower().replace(" ", "-")
