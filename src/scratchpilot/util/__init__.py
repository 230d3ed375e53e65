"""The package's shared utilities, one of each: atomic files and JSON results (:mod:`.files`), progress
bars (:mod:`.progress`) and image decoding (:mod:`.images`). ``scratchpilot.nn`` imports none of them, so
that the engine needs NumPy alone."""
