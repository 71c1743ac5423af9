"""The markdown reports of a scenario and of a sweep: the result first, then how it was reached."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from fedattr.core.provenance import git_commit
from fedattr.report.claim_stats import format_table
from fedattr.report.detectors import detector_markdown
from fedattr.report.machine import machine
from fedattr.report.reader import Environment, ScenarioResults, SweepMeta
from fedattr.report.render import md_table
from fedattr.report.stats import PairedStats, fmt_ci, fmt_num, fmt_p, mean_ci, min_wilcoxon_p
from fedattr.report.summary import (SAMPLING_NOTE, ScenarioSummary, SweepSummary, failure_rows, participations,
                                    per_participation, reached_label, unfinished_rows)
from fedattr.scenario import HONEST_ATTACK, to_toml

__all__ = ["scenario_markdown", "sweep_markdown", "status_lines", "settings_rows", "wilcoxon_floor_note",
           "provenance_line", "generated_lines"]

#: below this many seeds the Wilcoxon floor 2/2^n is stated next to every p
FEW_SEEDS = 6


def _value(v: Any) -> str:
    """A setting as readable text: lists comma-separated, dicts as ``k = v`` pairs."""
    if isinstance(v, dict):
        return "; ".join(f"{k} = {_value(x)}" for k, x in v.items()) or "—"
    if isinstance(v, (list, tuple)):
        return ", ".join(_value(x) for x in v) or "—"
    return "—" if v is None else str(v)


def settings_rows(model: BaseModel, prefix: str = "") -> list[list[str]]:
    """A model's settings as (key, value) rows, nested models flattened to dotted keys."""
    rows = []
    for name in type(model).model_fields:
        v = getattr(model, name)
        if isinstance(v, BaseModel):
            rows += settings_rows(v, f"{prefix}{name}.")
        elif isinstance(v, list) and v and all(isinstance(x, BaseModel) for x in v):
            continue  # lists of specs (arms, evaluators, detectors) get their own tables
        else:
            rows.append([f"{prefix}{name}", _value(v)])
    return rows


def wilcoxon_floor_note(n: int) -> str:
    """The sentence on the smallest attainable two-sided Wilcoxon p at n seeds ("" from 6 seeds on)."""
    if n < 1 or n >= FEW_SEEDS:
        return ""
    return (f"With {n} seed(s) the smallest attainable two-sided Wilcoxon p is 2/2^{n} = "
            f"{min_wilcoxon_p(n):.4g}: no result can be significant below that, whatever the effect.")


def status_lines(summary: ScenarioSummary) -> list[str]:
    """Bold warnings for a directory in progress, unfinished jobs and failed jobs ([] when all finished)."""
    lines = []
    if summary.in_progress:
        lines.append("**In progress:** a live run holds this directory; every number below is provisional.")
    if summary.unfinished:
        lines.append(f"**Unfinished:** {len(summary.unfinished)} job(s) stopped before their last round; their "
                     "values are those of the last round reached, not final (see Jobs).")
    if summary.jobs.failed:
        lines.append(f"**Failed:** {summary.jobs.failed} job(s) failed and are left out of every statistic "
                     "(see Failures).")
    return [f"> {line}" for line in lines] + ([""] if lines else [])


def _paired_cells(st: PairedStats) -> list[str]:
    return [fmt_num(st.mean), f"[{fmt_num(st.t_low)}, {fmt_num(st.t_high)}]",
            f"[{fmt_num(st.boot_low)}, {fmt_num(st.boot_high)}]", fmt_p(st.wilcoxon_p), fmt_p(st.min_p),
            f"{st.positive}/{st.n}", fmt_num(st.detectable, False)]


_PAIRED_HEADERS = ["mean", "95% t-CI", "bootstrap CI", "Wilcoxon p", "min attainable p", "positive seeds", "MDE"]


def _result_section(summary: ScenarioSummary) -> list[str]:
    """The claim statistics: counterfactual and paired inflation of every attacker in every attack arm."""
    md = ["## Result: attacker inflation", "",
          "Per seed (one observation each): counterfactual inflation = sum over rounds of the attacker's value "
          "minus the value its honest update would have had in the same round game; paired inflation = its "
          f"cumulative value in the arm minus in the honest arm (`{summary.honest_arm}`), same seed. "
          "MDE: the smallest mean these seeds detect (80% power, 5% two-sided).", ""]
    rows = []
    for arm in summary.arms:
        if summary.attacks[arm] == HONEST_ATTACK:
            continue
        label = reached_label(summary.unfinished_in(arm))
        for ev in summary.evaluators:
            for pid, st in summary.attacker[arm][ev].items():
                for kind, ps in (("counterfactual", st.counterfactual_inflation), ("paired", st.paired_inflation)):
                    if ps.n:
                        rows.append([arm + (f" ({label})" if label else ""), ev, pid, kind] + _paired_cells(ps))
    if not rows:
        return md + ["No attack arm with an attacker value.", ""]
    md += md_table(["arm", "evaluator", "attacker", "inflation"] + _PAIRED_HEADERS, rows)
    note = wilcoxon_floor_note(len(summary.seeds))
    return md + ([note, ""] if note else [])


def _rounds(k: int) -> str:
    return f"{k} round" + ("" if k == 1 else "s")


def _sampling_section(res: ScenarioResults, summary: ScenarioSummary) -> list[str]:
    """Client sampling: participation counts, and the clients highest by total and per participation."""
    sc = res.scenario
    md = ["## Client sampling", "",
          f"Each round sampled {sc.sampling.sample_size(sc.num_clients)} of {sc.num_clients} clients "
          f"(fraction_train = {sc.sampling.fraction_train:g}); each round's game had only its sampled clients as "
          "players. Cumulative values are given as totals and per participation. " + SAMPLING_NOTE, ""]
    rows = []
    for arm in res.arms:
        for ev in res.evaluators:
            for job in res.runs(arm):
                counts = participations(job, ev)
                if not counts:
                    continue
                totals, rates = job.cumulative(ev), per_participation(job, ev)
                top_total = max(totals, key=lambda p: totals[p]) if totals else None
                top_rate = max(rates, key=lambda p: rates[p]) if rates else None
                n = list(counts.values())
                rows.append([arm, ev, job.seed, len(counts), f"{min(n)} / {sum(n) / len(n):.2f} / {max(n)}",
                             "—" if top_total is None else f"{top_total} ({fmt_num(totals[top_total])}, "
                             f"{_rounds(counts.get(top_total, 0))})",
                             "—" if top_rate is None else f"{top_rate} ({fmt_num(rates[top_rate])}, "
                             f"{_rounds(counts.get(top_rate, 0))})"])
    md += md_table(["arm", "evaluator", "seed", "clients scored", "participations min / mean / max",
                    "highest total", "highest per participation"], rows) if rows else ["No scored round.", ""]
    if res.attacker_ids:
        md += ["Attackers: rounds taken part in and cumulative value per participation (mean over seeds).", ""]
        md += md_table(["attacker", "arm", "evaluator", "rounds", "per participation"],
                       [[pid, arm, ev, fmt_num(st.participations.mean, False) if st.participations else "—",
                         fmt_ci(st.per_participation) if st.per_participation else "—"]
                        for pid in res.attacker_ids for arm in res.arms for ev in res.evaluators
                        for st in [summary.attacker[arm][ev][pid]]])
    return md


def generated_lines(command: str, page: Path) -> list[str]:
    """The first lines of a generated results page: when and by which command it was written, the
    commit of the checkout it is written into, and the machine that wrote it."""
    where = page.parent if page.parent.exists() else Path.cwd()
    return [f"- generated {datetime.now(timezone.utc).isoformat(timespec='seconds')} by `{command}`",
            f"- page written at commit {git_commit(where)}",
            f"- {machine().line()} (the machine that wrote this page)"]


def provenance_line(res: ScenarioResults) -> str:
    """One line on where a results directory's numbers come from: commit, command, CPUs, and time.

    A re-run resumes a results directory and environment.json describes the last invocation
    only, so its wall time is given beside the finished jobs' own wall times summed (which count
    every invocation; with concurrent jobs they exceed the wall time).
    """
    env = res.environment
    cpus = f" on {env.cpu_count} CPUs" if env.cpu_count else ""
    times = []
    if env.wall_s is not None and math.isfinite(env.wall_s):
        times.append(f"wall time {env.wall_s:.0f} s (that invocation)")
    jobs = [j for arm in res.arms for j in res.runs(arm) if j.finished and j.summary.wall_s > 0]
    if jobs:
        times.append(f"{len(jobs)} finished jobs, {sum(j.summary.wall_s for j in jobs):.0f} s of job time in all")
    live = " (**in progress**: a live run holds it; its numbers are provisional)" if res.in_progress else ""
    return (f"`{res.path}`: results produced at commit {env.commit or 'not recorded'} by "
            f"`{env.command or 'not recorded'}`{cpus}" + "".join(f", {t}" for t in times) + live)


def _environment_lines(env: Environment) -> list[str]:
    """Software, machine, command and timing, from environment.json."""
    lines = []
    if env.python:
        lines.append(f"- python {env.python}; " + ", ".join(f"{k} {v}" for k, v in env.packages.items() if v))
    if env.platform or env.cpu_count:
        lines.append(f"- machine: {env.platform or '?'}, {env.cpu_count or '?'} CPUs")
    if env.wall_s is not None and math.isfinite(env.wall_s):
        share = f" ({env.startup_s / env.wall_s:.0%} of it start-up)" if env.startup_s is not None and env.wall_s > 0 else ""
        lines.append(f"- wall time {env.wall_s:.1f} s{share}")
    if env.started:
        lines.append(f"- started {env.started}, finished {env.finished or '?'}")
    if env.command:
        lines.append(f"- command: `{env.command}`")
    return (lines or ["No environment.json."]) + [""]


def _plots(plots: Sequence[tuple[str, Path]], base: Path) -> list[str]:
    md = ["## Plots", ""]
    for caption, p in plots:
        md += [f"### {caption}", "", f"![{caption}]({Path(p).resolve().relative_to(base.resolve()).as_posix()})", ""]
    return md


def _hyperparameters(res: ScenarioResults) -> list[str]:
    """Arms, evaluators, detectors and every other setting as readable tables; then the resolved TOML."""
    sc = res.scenario
    md = ["## Arms and hyper-parameters", ""]
    md += md_table(["arm", "attack", "start round", "counterfactual", "parameters"],
                   [[a.name, a.attack, a.start_round, a.counterfactual, _value(a.params)] for a in sc.arms])
    md += md_table(["evaluator", "parameters"], [[e.name, _value(e.params)] for e in sc.attribution.evaluators])
    if sc.detectors:
        md += md_table(["detector", "mode", "parameters"], [[d.name, d.mode, _value(d.params)] for d in sc.detectors])
    md += md_table(["setting", "value"], settings_rows(sc))
    return md + ["### Resolved scenario", "", "```toml", to_toml(sc).rstrip(), "```", ""]


def scenario_markdown(res: ScenarioResults, summary: ScenarioSummary, plots: Sequence[tuple[str, Path]],
                      base: Path, header: Sequence[str] = ()) -> str:
    """The markdown report of one scenario directory; plot links relative to ``base``.

    ``header``: lines put under the title (a results page's provenance).
    """
    sc = res.scenario
    md = [f"# fedattr report: {sc.name}", "", *header]
    if sc.description:
        md += [sc.description, ""]
    md += status_lines(summary)
    jobs = summary.jobs
    part = sc.partition
    md += [f"- dataset {sc.data.dataset}, model {sc.model}, {sc.num_clients} clients, partition {part.kind}"
           + (f" (alpha {part.alpha})" if part.kind == "dirichlet" else "") + f", {sc.rounds} rounds",
           f"- seeds {', '.join(map(str, res.seeds))}; attackers (partition ids): {', '.join(res.attacker_ids) or 'none'}; "
           f"honest reference arm: {res.honest_arm or 'none'}",
           f"- jobs: {jobs.finished} finished of {jobs.expected} planned"
           + (f"; {jobs.unfinished} unfinished (reported from their last round reached)" if jobs.unfinished else "")
           + (f"; **{jobs.failed} failed** (left out of every statistic; see Failures)" if jobs.failed else ""),
           "- intervals: 95%; t interval (`m ± h`) for values and inflation, bootstrap percentiles (`m [lo, hi]`) "
           "for accuracy, ranks and Kendall tau (inside their range); `(n=1)` marks a single seed; `—`: not available",
           ""]
    md += _result_section(summary)
    if summary.claim:
        md += ["### Same-game effects (finished seeds)", "",
               "Rank change, benign Kendall tau and benign change between the real and the counterfactual round "
               "game; LOO inflation; accuracy of the attack arm against the honest arm.", "",
               format_table(summary.claim), ""]
    if summary.unfinished:
        md += ["## Jobs", "", "Jobs without a summary (interrupted, or still running): their numbers are those of "
               "the last round they reached.", ""]
        md += md_table(*unfinished_rows(summary))
    md += ["## Environment", ""] + _environment_lines(res.environment)
    md += ["## Failures", "", "Replies the server rejected (never aggregated), nodes that sent no reply, and failed "
           "jobs (fewer valid clients than the scenario's minimum), with the rounds they happened in.", ""]
    headers, rows = failure_rows(summary)
    md += md_table(headers, rows) if rows else ["None: every client replied validly in every round.", ""]

    md += ["## Claimed and used weights", "", "A reply's example count is a claim: the server's weight policy caps "
           "it before aggregation and scoring. Clients whose claim was capped, per job:", ""]
    md += md_table(["arm", "seed", "client", "rounds", "largest claim", "largest weight used"],
                   [[c.arm, c.seed, c.partition_id, ", ".join(map(str, c.rounds)), f"{c.claimed:.6g}", f"{c.used:.6g}"]
                    for c in summary.capped_weights]) if summary.capped_weights else \
        ["None: every weight used is the count its client claimed.", ""]
    md += ["## Final test accuracy", "",
           f"Δ: the arm's final accuracy minus the honest arm's (`{res.honest_arm}`), same seed (t interval).", ""]
    md += md_table(["arm", "attack", "final accuracy", "Δ vs honest", "seeds"],
                   [[arm, summary.attacks[arm], fmt_ci(summary.final_accuracy[arm], signed=False)
                     + (f", {reached_label(summary.unfinished_in(arm))}" if summary.unfinished_in(arm) else ""),
                     fmt_ci(summary.accuracy_delta[arm].ci), summary.final_accuracy[arm].n] for arm in res.arms])

    md += ["## Attacker value", "", "Cumulative value at the end of the run, its normalised share and rank "
           "(1 = highest; tied clients share their mean rank).", ""]
    md += md_table(["attacker", "arm", "evaluator", "cumulative value", "normalised", "rank"],
                   [[pid, arm, ev, fmt_ci(st.value), fmt_ci(st.normalised), fmt_ci(st.rank, signed=False)]
                    for pid in res.attacker_ids for arm in res.arms for ev in res.evaluators
                    for st in [summary.attacker[arm][ev][pid]]])

    if summary.sampled:
        md += _sampling_section(res, summary)

    md += ["## Arm against arm", "", "Counterfactual inflation of the row arm minus that of the column arm, "
           "paired by seed: does the attack beat its controls?", ""]
    attack_arms = [a for a in res.arms if summary.attacks[a] != HONEST_ATTACK]
    rows = []
    for pid in res.attacker_ids:
        for ev in res.evaluators:
            for a in attack_arms:
                for b in attack_arms:
                    if a != b:
                        diffs = [res.jobs[(a, s)].counterfactual_inflation(ev).get(pid, math.nan)
                                 - res.jobs[(b, s)].counterfactual_inflation(ev).get(pid, math.nan)
                                 for s in res.seeds if (a, s) in res.jobs and (b, s) in res.jobs]
                        rows.append([pid, ev, a, b, fmt_ci(mean_ci(diffs))])
    md += md_table(["attacker", "evaluator", "arm", "minus arm", "difference"], rows) if rows else \
        ["Fewer than two attack arms.", ""]

    md += ["## Benign ranking change", "", "Kendall tau between the benign clients' cumulative-value rankings in "
           "the honest arm and in each arm, same seed (1 = unchanged; bootstrap interval inside [-1, 1]).", ""]
    rows = [[arm, ev, fmt_ci(summary.kendall_tau[arm][ev])] for arm in res.arms if arm != res.honest_arm
            for ev in res.evaluators]
    md += md_table(["arm", "evaluator", "Kendall tau"], rows) if rows and res.honest_arm else \
        ["No honest arm to compare with.", ""]
    md += detector_markdown(res)
    md += _plots(plots, base)
    md += _hyperparameters(res)
    return "\n".join(md)


def sweep_markdown(summary: SweepSummary, meta: SweepMeta, plots: Sequence[tuple[str, Path]], base: Path,
                   point_reports: Mapping[str, Path], header: Sequence[str] = ()) -> str:
    """The markdown report of a sweep directory; links relative to ``base``."""
    pts = summary.points
    first = next((p.summary for p in pts if p.summary), None)
    keys = list(summary.grid)
    md = [f"# fedattr sweep report: {first.name if first else base.name}", "", *header,
          "- grid: " + "; ".join(f"`{k}` ∈ {{{', '.join(map(str, v))}}}" for k, v in summary.grid.items()),
          f"- {len(pts)} points; intervals: 95% t interval (`m ± h`) for inflation, bootstrap percentiles "
          "(`m [lo, hi]`) for accuracy and Kendall tau; `(n=1)` marks a single seed", ""]
    for p in pts:
        if p.summary and (p.summary.unfinished or p.summary.jobs.failed or p.summary.in_progress):
            md += [f"Point `{p.dir}`:", ""] + status_lines(p.summary)
    if meta.wall_s is not None:
        share = f" ({meta.startup_s / meta.wall_s:.0%} of it start-up)" if meta.startup_s and meta.wall_s > 0 else ""
        md += [f"- wall time {meta.wall_s:.1f} s{share}", ""]
    md += ["## Points", ""]
    md += md_table(["point"] + keys + ["report"],
                   [[p.dir] + [p.overrides.get(k, "") for k in keys]
                    + ([f"[report]({point_reports[p.dir].resolve().relative_to(base.resolve()).as_posix()})"]
                       if p.dir in point_reports else [p.error or "—"]) for p in pts])
    evs = list(dict.fromkeys(ev for p in pts if p.summary for ev in p.summary.evaluators))
    for ev in evs:
        md += [f"## {ev}", ""]
        rows = []
        for p in pts:
            s = p.summary
            if not s:
                continue
            for arm in s.arms:
                acc = fmt_ci(s.final_accuracy[arm], signed=False)
                tau = s.kendall_tau[arm].get(ev)
                for pid, st in s.attacker[arm].get(ev, {}).items():
                    rows.append([p.dir] + [p.overrides.get(k, "") for k in keys] + [
                        arm, pid, acc, fmt_ci(st.value), fmt_ci(st.counterfactual_inflation.ci),
                        fmt_p(st.counterfactual_inflation.wilcoxon_p), fmt_ci(st.paired_inflation.ci),
                        fmt_ci(tau) if tau else "—"])
        md += md_table(["point"] + keys + ["arm", "attacker", "final accuracy", "attacker value",
                                           "counterfactual inflation", "Wilcoxon p", "paired inflation",
                                           "Kendall tau"], rows)
    seeds = min((len(p.summary.seeds) for p in pts if p.summary), default=0)
    note = wilcoxon_floor_note(seeds)
    md += [note, ""] if note else []
    md += _plots(plots, base)
    return "\n".join(md)
