"""fmjax.train (in progress)."""

__all__: list[str] = []
