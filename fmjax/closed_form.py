"""fmjax.closed_form (in progress)."""

__all__: list[str] = []
