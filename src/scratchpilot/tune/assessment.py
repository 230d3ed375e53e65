"""CRISP-DM's "assess model" for AutoML: the ranked candidates, why the winner won, its test accuracy with
a confidence interval beside the hand-set default's, and how the budget was spent."""

from __future__ import annotations

from ..report.html import esc, key_values, table


def _pct(value) -> str:
    return "–" if value is None else f"{value:.2%}"


def assessment_section(result: dict) -> tuple[str, str, str]:
    """``(anchor, title, html)`` of the model-assessment section of the AutoML report."""
    winner = result["winner_family"]
    candidates = result["candidates"]
    best_by_family = {}
    for c in candidates:
        best_by_family.setdefault(c["family"], c)
    defaults = {c["family"]: c for c in candidates if c["defaults"]}
    reasons = [result["selection"]] if result.get("selection") else []
    for family, best in best_by_family.items():
        if family != winner:
            reasons.append(f"{winner} was chosen as the family: its best trial's validation accuracy, "
                           f"{_pct(best_by_family[winner]['value'])}, is above the best {family}'s, "
                           f"{_pct(best['value'])} (trial {best['trial']})")
    if winner in defaults and defaults[winner]["trial"] != result["best_trial"]:
        d = defaults[winner]
        gap = result["best_value"] - d["value"]
        reasons.append(f"it is {gap * 100:+.2f} points on validation against the {winner} defaults "
                       f"(trial {d['trial']}, "
                       f"{_pct(d['value'])})")
    if result.get("skipped_families"):
        reasons.append(f"the budget fitted no trial of {', '.join(result['skipped_families'])}")
    low, high = result["test_ci95"]
    d_low, d_high = result["default_test_ci95"]
    verdict = ("at least as accurate as" if result["test_accuracy"] >= result["default_test_accuracy"]
               else "less accurate than")
    figures = key_values([
        ("winner", f"{winner}, trial {result['best_trial']} of study {result['study']}"),
        ("test accuracy (read once)", f"{_pct(result['test_accuracy'])}, 95% CI {_pct(low)}–{_pct(high)} "
                                      f"on {result['n_test']:,d} images of {result['test_dataset']}"),
        (f"{winner} defaults, same epochs and data", f"{_pct(result['default_test_accuracy'])}, 95% CI "
                                                     f"{_pct(d_low)}–{_pct(d_high)}"),
        ("verdict", f"the AutoML model is {verdict} the hand-set {winner} default"),
        ("budget", f"{result['seconds']:.0f} s of {result['budget_s']:.0f} s ({result['budget_kept']:.1%})"),
        ("data", f"search on {result['n_search_images']:,d} training images, retraining on "
                 f"{result['n_final_images']:,d} "
                 f"(training + validation), {result['epochs']} epochs"),
    ])
    phases = table(["phase", "family", "trials", "pruned", "time (s)", "best validation"],
                   [(p["phase"], p["family"], p["trials"], p["pruned"], f"{p['seconds']:.0f}", _pct(p["best_value"]))
                    for p in result["phases"]], numeric=(2, 3, 4))
    ranked = table(["rank", "family", "trial", "validation", "defaults", "parameters"],
                   [(i + 1, c["family"], c["trial"], _pct(c["value"]), "yes" if c["defaults"] else "",
                     ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in c["params"].items()))
                    for i, c in enumerate(candidates[:10])], numeric=(0, 2), wrap=(5,))
    why = "<ul>" + "".join(f"<li>{esc(r)}</li>" for r in reasons) + "</ul>"
    body = (figures + "<h3>Why the winner won</h3>" + why + "<h3>How the budget was spent</h3>" + phases
            + "<h3>Ranked candidates (validation)</h3>" + ranked)
    return ("assessment", "Model assessment", body)
