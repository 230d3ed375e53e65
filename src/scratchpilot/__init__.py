"""scratchpilot: a neural network from scratch in NumPy that reads digits and drives a car.

The engine lives in :mod:`scratchpilot.nn` (NumPy only); the applications (digits, car, web,
reports) build on it and import their optional dependencies lazily.
"""

__version__ = "0.1.0"
