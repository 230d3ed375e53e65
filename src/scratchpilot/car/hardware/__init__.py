"""See the package docstring of :mod:`scratchpilot.car`."""
