"""Watching a deployed model (CRISP-DM's "plan monitoring and maintenance"): the reference profile a model
file carries (:mod:`.profile`), the log of what it answered (:mod:`.predlog`), and the drift statistics
that compare the two (:mod:`.drift`). NumPy and the standard library only; the server's metrics and the
HTML report live with the web app and the reports."""
