"""jaxsciml.optim."""

__all__: list[str] = []
