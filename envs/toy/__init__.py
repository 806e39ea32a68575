"""`toy`: answer with one target character."""
