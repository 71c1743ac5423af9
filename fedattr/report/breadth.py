"""The breadth study's results page: every cell's tables, the cheap estimators' error and the verdicts.

``fedattr report --breadth CELL_DIR [CELL_DIR ...] --to docs/results/breadth.md`` calls
:func:`write_breadth_page`. The numbers come from :mod:`~fedattr.report.breadth_stats`; this module
only lays them out. The reference cell is the one whose scenario is named ``*claim`` (the claim
regime); without one, each cell's factor is named against :data:`CLAIM_REGIME` (its other
differences are then unknown), and the clauses that need the reference stay not settled.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path

from fedattr.core.errors import UserError
from fedattr.report.breadth_stats import (ACCURACY_MARGIN, ATTACK_METRICS, CHEAP_ESTIMATORS, EXACT, EXTENDED_SEEDS,
                                          MIN_SEEDS, RULES, WITHIN, Cell, Clause, equivalent, factor_of,
                                          flatten_settings, load_cell, significant, verdict_table)
from fedattr.report.markdown import generated_lines, provenance_line, wilcoxon_floor_note
from fedattr.report.render import md_table
from fedattr.report.stats import MeanCI, PairedStats, fmt_ci, fmt_num, fmt_p
from fedattr.results.store import atomic_write_text
from fedattr.scenario import dump_resolved

__all__ = ["CLAIM_REGIME", "load_cells", "breadth_markdown", "write_breadth_page"]

#: the claim regime's factors: what a cell's factor is named against when no reference cell is given
CLAIM_REGIME = {"data.dataset": "mnist5k", "model": "cnn", "aggregation.strategy": "fedavg"}


def _is_reference(cell: Cell) -> bool:
    return cell.res.scenario.name == "claim" or cell.res.scenario.name.endswith("_claim")


def load_cells(dirs: Sequence[str | Path]) -> tuple[list[Cell], Cell | None]:
    """Read every cell directory and name each one's factor; returns (cells, the reference cell or None).

    UserError naming the first directory that is missing or not a scenario results directory.
    """
    if not dirs:
        raise UserError("--breadth needs at least one cell results directory")
    for d in dirs:
        if not Path(d).is_dir():
            raise UserError(f"results directory not found: {d}")
    cells = [load_cell(d) for d in dirs]
    flat = {id(c): flatten_settings(dump_resolved(c.res.scenario)) for c in cells}
    reference = next((c for c in cells if _is_reference(c)), None)

    def base(c: Cell) -> dict:
        if reference is not None:
            return flat[id(reference)]
        # only the factors can be named: the cell's own settings with the claim regime's factors
        own = {k: v for k, v in flat[id(c)].items() if not k.startswith("aggregation.params.")}
        return {**own, **CLAIM_REGIME}

    for c in cells:
        c.factor, c.value, c.other = factor_of(flat[id(c)], base(c))
        if c is reference:
            c.factor, c.value = "reference", "the claim regime"
    return cells, reference


def _ci(st: PairedStats) -> str:
    return f"{fmt_num(st.mean)} [{fmt_num(st.t_low)}, {fmt_num(st.t_high)}]" if st.n else "—"


def _boot(ci: MeanCI, signed: bool = True) -> str:
    return f"{fmt_num(ci.mean, signed)} [{fmt_num(ci.low, signed)}, {fmt_num(ci.high, signed)}]" if ci.n else "—"


def _header(cells: Sequence[Cell], page: Path, command: str | None) -> list[str]:
    cmd = command or ("fedattr report --breadth " + " ".join(shlex.quote(str(c.path)) for c in cells)
                      + f" --to {shlex.quote(str(page))}")
    return generated_lines(cmd, page) + [f"- {provenance_line(c.res)}" for c in cells] + [""]


def _cells_section(cells: Sequence[Cell], reference: Cell | None) -> list[str]:
    md = ["## Cells", ""]
    md.append(f"Reference cell: `{reference.name}`." if reference is not None else
              "**No reference cell** (a scenario named `*claim`) among the cells given: each cell's factor is "
              "named against the claim regime (mnist5k, cnn, FedAvg), its other differences are not listed, and "
              "the clauses that need the reference are not settled.")
    md += ["", f"Seeds: those whose honest and attack jobs both finished; needed: the scenario's, at least "
           f"{MIN_SEEDS}, and {EXTENDED_SEEDS} while the cell's exact-Shapley inflation interval includes 0; a cell "
           "with fewer is marked **short**.", ""]
    rows = []
    for c in cells:
        sc = c.res.scenario
        rows.append([c.name, c.factor, c.value or "—", "; ".join(c.other) or "—",
                     f"{sc.data.dataset}, {sc.model}, {c.aggregator}, {sc.num_clients} clients, {sc.rounds} rounds",
                     f"{len(c.seeds)} of {c.required}" + (" **short**" if c.short else "")])
    return md + md_table(["cell", "factor", "value", "other differences (reference's value)", "regime", "seeds"], rows)


def _verdict_section(clauses: Sequence[Clause], cells: Sequence[Cell]) -> list[str]:
    md = ["## Verdicts", "", "Rules (their margins are constants of "
          "`fedattr/report/breadth_stats.py`):", ""]
    md += [f"- {r}" for r in RULES] + [""]
    md += md_table(["clause", "verdict", "figures"], [[c.clause, f"**{c.verdict}**", "<br>".join(c.figures)]
                                                     for c in clauses])
    md += ["Per cell:", ""]
    md += md_table(["cell", "factor", "inflates (exact Shapley)", "reshapes benign", "accuracy preserved",
                    "evades detection"],
                   [[c.name + (" (short)" if c.short else ""), f"{c.factor} {c.value}".strip(), c.verdict("inflates"),
                     c.verdict("reshapes"), c.verdict("accuracy"), c.verdict("evades")] for c in cells])
    return md


def _cell_section(c: Cell) -> list[str]:
    md = [f"## Cell `{c.name}`: {c.factor} {c.value}".rstrip(), ""]
    if not c.seeds:
        return md + ["No seed with both arms finished yet.", ""]
    md += [f"Attack arm `{c.attack_arm}`, attacker {c.attacker}, {len(c.seeds)} paired seeds "
           f"({', '.join(map(str, c.seeds))})" + (" — **short**" if c.short else "") + ".", ""]
    note = wilcoxon_floor_note(len(c.seeds))
    md += [note, ""] if note else []
    md += ["### Inflation per evaluator", "",
           "Counterfactual: the attacker's value minus its honest update's value in the same round game, summed "
           "over rounds; paired: its cumulative value in the attack arm minus in the honest arm, same seed. "
           "Mean [95% t-CI], bootstrap CI, Wilcoxon p, positive seeds. Benign tau: Kendall tau of the benign "
           "clients' values between the real and the counterfactual game (mean over rounds, then seeds; "
           "bootstrap CI); benign change: sum_b (v_b - v_b^cf) summed over rounds (t-CI).", ""]
    rows = []
    for ev, st in c.evaluators.items():
        cf, pa = st.counterfactual, st.paired
        rows.append([ev, _ci(cf), f"[{fmt_num(cf.boot_low)}, {fmt_num(cf.boot_high)}]", fmt_p(cf.wilcoxon_p),
                     f"{cf.positive}/{cf.n}", _ci(pa), f"[{fmt_num(pa.boot_low)}, {fmt_num(pa.boot_high)}]",
                     fmt_p(pa.wilcoxon_p), f"{pa.positive}/{pa.n}",
                     _boot(st.benign_tau), _ci(st.benign_change), st.verdict])
    md += md_table(["evaluator", "counterfactual", "bootstrap CI", "p", "pos", "paired", "bootstrap CI", "p", "pos",
                    "benign tau",
                    "benign change", "inflates"], rows)
    a = c.accuracy
    if a is not None and a.n:
        h = [c.res.jobs[(c.res.honest_arm, s)].final_accuracy() for s in c.seeds]
        t = [c.res.jobs[(c.attack_arm, s)].final_accuracy() for s in c.seeds]
        eq = (f"equivalent within {ACCURACY_MARGIN * 100:.0f} points" if equivalent(a)
              else f"not shown equivalent within {ACCURACY_MARGIN * 100:.0f} points")
        md += ["### Final accuracy", "",
               f"Honest {fmt_num(sum(h) / len(h), False)}, attack {fmt_num(sum(t) / len(t), False)}; "
               f"attack - honest {_ci(a)} (95% t-CI), bootstrap [{fmt_num(a.boot_low)}, {fmt_num(a.boot_high)}], "
               f"Wilcoxon p {fmt_p(a.wilcoxon_p)}: **{eq}**; accuracy preserved: {c.verdict('accuracy')}.", ""]
    if c.detectors:
        md += ["### Detectors", "",
               "The attacker's flag rate (share of rounds flagged) in each arm (bootstrap CI), their paired "
               "difference attack - honest (t-CI, Wilcoxon p), and the AUC of the attacker's score against the "
               "benign clients' (pairs within a round, ties 0.5; 0.5 = no separation, 1 = always the most "
               "suspicious) in each arm.", ""]
        md += md_table(["detector", "flag rate attack", "flag rate honest", "difference", "p", "AUC attack",
                        "AUC honest", "verdict"],
                       [[d.detector, _boot(d.rate_attack, False), _boot(d.rate_honest, False), _ci(d.difference),
                         fmt_p(d.difference.wilcoxon_p), _boot(d.auc_attack, False), _boot(d.auc_honest, False),
                         d.verdict] for d in c.detectors.values()])
    return md


def _agree(v: bool | None) -> str:
    return "—" if v is None else ("yes" if v else "**no**")


def _estimator_section(cells: Sequence[Cell]) -> list[str]:
    md = ["## Cheap estimators against exact Shapley", "",
          f"Per round game (both arms; the counterfactual game too when it differs from the real one): "
          f"relative L1 error ||v_hat - v||_1 / ||v||_1 against exact Shapley on the same game. Median, share "
          f"of round games within {WITHIN:.0%}, worst. Agrees: the estimator's counterfactual inflation has "
          f"the sign of exact Shapley's and the same significance at 5% (t-CI excludes 0 and Wilcoxon p < 0.05).",
          ""]
    rows = []
    for c in cells:
        for est in CHEAP_ESTIMATORS:
            e = c.estimators.get(est)
            if e is None:
                continue
            sig = "significant" if significant(e.inflation) else "n.s."
            rows.append([c.name + (" (short)" if c.short else ""), est, e.games, fmt_num(e.median, False),
                         fmt_num(e.within, False), fmt_num(e.worst, False),
                         f"{fmt_num(e.inflation.mean)} ({sig})",
                         f"{fmt_num(e.exact_inflation.mean)} ({'significant' if significant(e.exact_inflation) else 'n.s.'})",
                         _agree(e.agrees)])
    if not rows:
        return md + ["No cell scored a cheap estimator next to exact Shapley.", ""]
    md += md_table(["cell", "estimator", "round games", "median error", f"within {WITHIN:.0%}", "worst",
                    "inflation", f"{EXACT} inflation", "agrees"], rows)
    missing = [c.name for c in cells if c.seeds and "logit_surrogate_shapley" not in c.estimators]
    if missing:
        md += [f"No logit surrogate in: {', '.join(missing)} (it and control-variate Shapley expand FedAvg's "
               "weighted mean and are not scored under another aggregation rule).", ""]
    return md


def _attack_section(cells: Sequence[Cell]) -> list[str]:
    md = ["## The attack in each cell", "",
          "The attacker's own round metrics: per seed the mean over the rounds it injected in (past its "
          "warm-up), then mean ± 95% t-CI over the cell's paired seeds. They say whether the attack did "
          "in a cell what it does where it inflates: right targets, images its generator's teacher reads "
          "as the targets, a synthetic batch whose gradient points along the proxy-validation gradient, "
          "an update that differs from the honest one.", ""]
    rows = [[c.name + (" (short)" if c.short else ""), *[fmt_ci(c.attack[m], signed=False) if m in c.attack else "—"
                                                         for m in ATTACK_METRICS]] for c in cells]
    return md + md_table(["cell", *ATTACK_METRICS.values()], rows)


def breadth_markdown(cells: Sequence[Cell], reference: Cell | None, header: Sequence[str] = ()) -> str:
    """The breadth page: cells, verdicts, each cell's tables, the cheap estimators' error."""
    md = ["# Breadth study: the claim across datasets, models, evaluators, aggregators and detectors", "", *header]
    md += _cells_section(cells, reference)
    md += _verdict_section(verdict_table(cells, reference), cells)
    md += _estimator_section(cells)
    md += _attack_section(cells)
    for c in cells:
        md += _cell_section(c)
    return "\n".join(md)


def write_breadth_page(dirs: Sequence[str | Path], page: str | Path, command: str | None = None) -> Path:
    """Write the breadth study's page ``page`` (a .md file) from the cell results directories ``dirs``."""
    page = Path(page)
    if page.suffix != ".md":
        raise UserError(f"--to must name a markdown file (….md): {page}")
    cells, reference = load_cells(dirs)
    atomic_write_text(page, breadth_markdown(cells, reference, _header(cells, page, command)) + "\n")
    return page
