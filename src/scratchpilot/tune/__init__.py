"""Hyper-parameter search and AutoML on Optuna: ``tune digits``, ``tune car``, ``automl digits``.

Optuna is imported by the modules here, never by ``cli``: ``pip install 'scratchpilot[tune]'``.
"""
