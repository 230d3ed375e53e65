"""The study report: a self-contained HTML page (the report package's page, figures embedded).

Optimisation history, intermediate values with the pruned trials, parameter importances, parallel
coordinates, the best parameters against the hand-set defaults, and every trial. The figures are Optuna's
own matplotlib plots; extra sections (AutoML's model assessment) come from the caller.
"""

from __future__ import annotations

import warnings

import optuna
from optuna.trial import TrialState

from ..report.html import Raw, cards, esc, figure, figure_data_uri, key_values, page, table
from ..util.files import write_atomic
from .study import best_trial


def _plot(name: str, study: optuna.Study, **kwargs) -> str:
    """One of ``optuna.visualization.matplotlib``'s figures as HTML, or a note saying why there is none."""
    from ..report.plots import pyplot

    pyplot()  # the Agg backend and the report's look
    from optuna.visualization import matplotlib as optuna_plots

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
            axes = getattr(optuna_plots, name)(study, **kwargs)
    except (ValueError, RuntimeError, ZeroDivisionError) as exc:
        return f'<p class="muted">not drawn: {esc(exc)}</p>'
    fig = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
    fig.set_size_inches(9, 4.6)
    return figure(figure_data_uri(fig))


def _value(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _defaults_html(study: optuna.Study, fmt: str) -> str:
    """The best trial's parameters beside the defaults' trial (the study's first, queued by the command)."""
    best = best_trial(study)
    rows, shown = [], []
    for t in study.get_trials(deepcopy=False):
        family = t.user_attrs.get("defaults")
        if family and family not in shown:
            shown.append(family)
            names = sorted(set(t.params) | set(best.params))
            value = fmt.format(t.value) if t.value is not None else t.state.name.lower()
            rows.append((f"defaults ({family}), trial {t.number}", value, names, t.params))
    if not rows:
        return '<p class="muted">the study has no trial of the defaults</p>'
    parts = []
    for title, value, names, params in rows:
        body = [(n, _value(params.get(n, "–")), _value(best.params.get(n, "–")),
                 "" if params.get(n) == best.params.get(n) else "changed") for n in names]
        body.append(("value", value, fmt.format(best.value), ""))
        parts.append(f"<h3>{esc(title)} against the best, trial {best.number}</h3>"
                     + table(["parameter", "defaults", "best", ""], body))
    return "".join(parts)


def _trials_html(study: optuna.Study, fmt: str) -> str:
    rows = []
    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get("surplus"):
            continue
        note = ("defaults" if t.user_attrs.get("defaults") else "") + (" retried" if "failed_trial" in t.system_attrs
                                                                        else "")
        if t.user_attrs.get("cut"):
            note += " cut by the time budget"
        if t.user_attrs.get("diverged"):
            note += " diverged"
        value = fmt.format(t.value) if t.value is not None and t.state == TrialState.COMPLETE else "–"
        last = max(t.intermediate_values) if t.intermediate_values else None
        reached = fmt.format(t.intermediate_values[last]) if last is not None else "–"
        params = ", ".join(f"{k}={_value(v)}" for k, v in t.params.items())
        duration = f"{t.duration.total_seconds():.0f} s" if t.duration else "–"
        rows.append((t.number, t.state.name.lower(), value, reached, t.user_attrs.get("epochs", 0), duration,
                     note.strip(), params))
    return table(["trial", "state", "value", "last reported", "epochs", "time", "note", "parameters"], rows,
                 numeric=(0, 4), wrap=(7,))


def write_report(study: optuna.Study, path, result: dict, *, space: str, title: str | None = None,
                 extra_sections=(), value_name: str = "validation accuracy", value_format: str = "{:.2%}",
                 step_name: str = "epoch") -> None:
    """Write the study's report to ``path`` (atomically)."""
    trials = study.get_trials(deepcopy=False)
    pruned = sum(t.state == TrialState.PRUNED for t in trials)
    header = cards([(str(result.get("n_trials", "")), "trials"), (str(pruned), "pruned"),
                    (value_format.format(study.best_value), f"best {value_name}")]
                   + ([(f"{result['test_accuracy']:.2%}", "test accuracy")] if "test_accuracy" in result else []))
    summary = key_values([("study", result.get("study")), ("storage", result.get("storage")), ("space", space),
                          ("data", result.get("data", "")), ("pruner", result.get("pruner", "")),
                          ("epochs spent", result.get("epochs_spent", "")),
                          ("best trial", result.get("best_trial")), ("model", result.get("model", "")),
                          ("test", Raw(esc(f"{result['test_accuracy']:.2%} on {result['test_dataset']} (95% CI "
                                           f"{result['test_ci95'][0]:.2%}–{result['test_ci95'][1]:.2%}), "
                                           f"read once, by the best model") if "test_accuracy" in result else "–"))])
    params = list(best_trial(study).params)
    sections = [
        ("summary", "Summary", summary),
        ("history", "Optimisation history", _plot("plot_optimization_history", study)
         + f'<p class="muted">each trial\'s {esc(value_name)} and the best so far</p>'),
        ("intermediate", "Intermediate values",
         _plot("plot_intermediate_values", study)
         + f'<p class="muted">{esc(value_name)} after each {esc(step_name)}; the short lines are the trials the pruner '
           f'stopped ({pruned} of {len(trials)})</p>'),
        ("importance", "Parameter importances", _plot("plot_param_importances", study)
         + '<p class="muted">Optuna\'s default evaluator, over the parameters every complete trial has</p>'),
        ("parallel", "Parallel coordinates", _plot("plot_parallel_coordinate", study, params=params[:8])),
        ("defaults", "Best against the defaults", _defaults_html(study, value_format)),
        *extra_sections,
        ("trials", "Every trial", _trials_html(study, value_format)),
    ]
    html = page(title or f"Tuning: {result.get('study')}", esc(f"{result.get('n_trials')} trials on "
                                                               f"{result.get('data', '')}"), header, sections)
    write_atomic(path, html.encode("utf-8"))
