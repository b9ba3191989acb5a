"""jaxsciml.ode."""

__all__: list[str] = []
