"""jaxsciml.pde."""

__all__: list[str] = []
