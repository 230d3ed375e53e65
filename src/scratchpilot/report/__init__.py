"""scratchpilot.report: CRISP-DM data and model reports as self-contained HTML pages.

- :func:`scratchpilot.report.data.load_split`, :func:`~scratchpilot.report.data.build_data_report`:
  describe, explore and verify an image dataset (``scratchpilot report data``);
- :func:`scratchpilot.report.driving.build_driving_report`: the same for a folder of driving sessions;
- :func:`scratchpilot.report.model.build_model_report`: assess a digits model or a pilot
  (``scratchpilot report model``);
- :mod:`scratchpilot.report.quality`: the checks (duplicates, leakage, constant pixels, imbalance, label
  suspects), :mod:`scratchpilot.report.lenient_csv`: a CSV reader that lists problems instead of failing.

Submodules are imported on demand; matplotlib and Pillow load only when a page is drawn.
"""
