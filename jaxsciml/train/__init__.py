"""jaxsciml.train."""

__all__: list[str] = []
