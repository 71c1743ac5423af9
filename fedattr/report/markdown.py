"""The markdown reports of a scenario and of a sweep."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fedattr.report.detectors import detector_markdown
from fedattr.report.reader import ScenarioResults
from fedattr.report.stats import as_float, ci_from, fmt_ci
from fedattr.report.summary import arm_attack, failure_rows, inflation_difference, paired_accuracy
from fedattr.scenario.schema import HONEST_ATTACK, ScenarioError, scenario_from_dict

__all__ = ["scenario_markdown", "sweep_markdown", "md_table"]


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """A markdown table."""
    def cell(x: Any) -> str:
        return str(x).replace("|", "\\|").replace("\n", " ")
    lines = ["| " + " | ".join(cell(h) for h in headers) + " |",
             "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return lines + [""]


def _inline(value: Any) -> str:
    """Compact JSON for a table cell."""
    return json.dumps(value, sort_keys=True) if value not in ({}, None) else "—"


def _resolved_text(scenario: Mapping[str, Any]) -> tuple[str, str]:
    """The resolved scenario as TOML (re-runnable) or, if it no longer validates, as JSON."""
    try:
        return "toml", scenario_from_dict(scenario).to_toml()
    except ScenarioError:
        return "json", json.dumps(scenario, indent=2)


def _environment_lines(env: Mapping[str, Any]) -> list[str]:
    """Environment and timing, from environment.json."""
    if not env:
        return ["No environment.json.", ""]
    lines = []
    pk = env.get("packages") or {}
    if env.get("python"):
        lines.append(f"- python {env['python']}; " + ", ".join(f"{k} {v}" for k, v in pk.items()))
    wall, start = as_float(env.get("wall_s")), as_float(env.get("startup_s"))
    if math.isfinite(wall):
        share = f" ({start / wall:.0%} of it start-up)" if math.isfinite(start) and wall > 0 else ""
        lines.append(f"- wall time {wall:.1f} s{share}")
    if env.get("started"):
        lines.append(f"- started {env['started']}, finished {env.get('finished', '?')}")
    if env.get("command"):
        lines.append(f"- command: `{env['command']}`")
    return lines + [""]


def scenario_markdown(res: ScenarioResults, summary: Mapping[str, Any],
                       plots: Sequence[tuple[str, Path]], base: Path) -> str:
    """The markdown report of one scenario directory."""
    sc = res.scenario
    data, part = sc.get("data") or {}, sc.get("partition") or {}
    md = [f"# fedattr report: {sc.get('name', res.path.name)}", ""]
    if sc.get("description"):
        md += [str(sc["description"]), ""]
    jobs = summary["jobs"]
    md += [f"- dataset {data.get('dataset')}, model {sc.get('model')}, "
           f"{sc.get('num_clients')} clients, partition {part.get('kind')}"
           + (f" (alpha {part.get('alpha')})" if part.get("kind") == "dirichlet" else "")
           + f", {sc.get('rounds')} rounds",
           f"- seeds {', '.join(map(str, res.seeds))}; attackers (partition ids): "
           f"{', '.join(res.attacker_ids) or 'none'}; "
           f"honest reference arm: {res.honest_arm or 'none'}",
           f"- jobs: {jobs['finished']} finished of {jobs['expected']} planned"
           + (f" ({jobs['found'] - jobs['finished']} unfinished, reported from their last round)"
              if jobs["found"] > jobs["finished"] else "")
           + (f"; **{jobs['failed']} failed** (left out of every statistic; see Failures)"
              if jobs.get("failed") else ""),
           "- every entry: mean ± 95% confidence half-width (t-distribution) over seeds; "
           "`(n=1)` marks a single seed; `—` means not available", ""]
    md += ["## Environment", ""] + _environment_lines(res.environment)

    md += ["## Failures", "",
           "Replies the server rejected (never aggregated), nodes that sent no reply, and failed jobs "
           "(fewer valid clients than the scenario's minimum), with the rounds they happened in.", ""]
    headers, rows = failure_rows(summary)
    md += md_table(headers, rows) if rows else ["None: every client replied validly in every round.", ""]

    md += ["## Final test accuracy", "",
           f"Δ: the arm's final accuracy minus the honest arm's (`{res.honest_arm}`), same seed.", ""]
    md += md_table(["arm", "attack", "final accuracy", "Δ vs honest", "seeds"],
                 [[arm, arm_attack(res, arm), fmt_ci(ci_from(summary["final_accuracy"][arm]), signed=False),
                   fmt_ci(paired_accuracy(res, arm)), summary["final_accuracy"][arm]["n"]]
                  for arm in res.arms])

    md += ["## Attacker value", "",
           "Cumulative value at the end of the run, its normalised share and rank (1 = highest).",
           ""]
    rows = []
    for pid in res.attacker_ids:
        for arm in res.arms:
            for ev in res.evaluators:
                st = summary["attacker"][arm][ev][pid]
                rows.append([pid, arm, ev, fmt_ci(ci_from(st["value"])),
                             fmt_ci(ci_from(st["normalised"])), fmt_ci(ci_from(st["rank"]), signed=False)])
    md += md_table(["attacker", "arm", "evaluator", "cumulative value", "normalised", "rank"], rows)

    md += ["## Inflation", "",
           "Counterfactual: sum over rounds of the attacker's value minus the value its honest "
           "update would have had in the same round game. Paired: attacker value in the arm minus "
           f"in the honest arm (`{res.honest_arm}`), same seed.", ""]
    rows = []
    for pid in res.attacker_ids:
        for arm in res.arms:
            if arm == res.honest_arm:
                continue
            for ev in res.evaluators:
                st = summary["attacker"][arm][ev][pid]
                rows.append([pid, arm, ev, fmt_ci(ci_from(st["counterfactual_inflation"])),
                             fmt_ci(ci_from(st["paired_inflation"]))])
    md += md_table(["attacker", "arm", "evaluator", "counterfactual inflation", "paired inflation"],
                 rows) if rows else ["No attack arm or no attacker.", ""]

    md += ["## Arm against arm", "",
           "Counterfactual inflation of the row arm minus that of the column arm, paired by seed: "
           "does the attack beat its controls?", ""]
    rows = []
    attack_arms = [a for a in res.arms if arm_attack(res, a) != HONEST_ATTACK]
    for pid in res.attacker_ids:
        for ev in res.evaluators:
            for a in attack_arms:
                for b in attack_arms:
                    if a != b:
                        rows.append([pid, ev, a, b, fmt_ci(inflation_difference(res, a, b, ev, pid))])
    md += md_table(["attacker", "evaluator", "arm", "minus arm", "difference"], rows) if rows else \
        ["Fewer than two attack arms.", ""]

    md += ["## Benign ranking change", "",
           "Kendall tau between the benign clients' cumulative-value rankings in the honest arm "
           "and in each arm, same seed (1 = unchanged).", ""]
    rows = [[arm, ev, fmt_ci(ci_from(summary["kendall_tau"][arm][ev]))]
            for arm in res.arms if arm != res.honest_arm for ev in res.evaluators]
    md += md_table(["arm", "evaluator", "Kendall tau"], rows) if rows and res.honest_arm else \
        ["No honest arm to compare with.", ""]

    md += detector_markdown(res)

    md += ["## Plots", ""]
    for caption, p in plots:
        md += [f"### {caption}", "", f"![{caption}]({p.relative_to(base).as_posix()})", ""]

    md += ["## Arms and hyper-parameters", ""]
    md += md_table(["arm", "attack", "start round", "counterfactual", "params"],
                 [[a.get("name"), a.get("attack"), a.get("start_round"), a.get("counterfactual"),
                   _inline(a.get("params"))] for a in sc.get("arms") or []])
    train, attr = sc.get("train") or {}, sc.get("attribution") or {}
    md += md_table(["section", "settings"],
                 [["train", _inline(train)], ["data", _inline(data)], ["partition", _inline(part)],
                  ["attribution", _inline({k: v for k, v in attr.items() if k != "evaluators"})],
                  ["evaluators", _inline(attr.get("evaluators"))],
                  ["aggregation", _inline(sc.get("aggregation"))]])
    lang, text = _resolved_text(sc)
    md += ["### Resolved scenario", "", f"```{lang}", text.rstrip(), "```", ""]
    return "\n".join(md)


def sweep_markdown(summary: Mapping[str, Any], meta: Mapping[str, Any],
                    plots: Sequence[tuple[str, Path]], base: Path,
                    point_reports: Mapping[str, Path]) -> str:
    """The markdown report of a sweep directory."""
    pts = summary["points"]
    first = next((p["summary"] for p in pts if p.get("summary")), None)
    name = first["name"] if first else base.name
    keys = list(summary["grid"])
    md = [f"# fedattr sweep report: {name}", "",
          "- grid: " + "; ".join(f"`{k}` ∈ {{{', '.join(map(str, v))}}}"
                                  for k, v in summary["grid"].items()),
          f"- {len(pts)} points; every entry: mean ± 95% confidence half-width (t-distribution) "
          "over seeds; `(n=1)` marks a single seed", ""]
    wall, start = as_float(meta.get("wall_s")), as_float(meta.get("startup_s"))
    if math.isfinite(wall):
        share = f" ({start / wall:.0%} of it start-up)" if math.isfinite(start) and wall > 0 else ""
        md += [f"- wall time {wall:.1f} s{share}", ""]
    md += ["## Points", ""]
    md += md_table(["point"] + keys + ["report"],
                 [[p["dir"]] + [p["overrides"].get(k, "") for k in keys]
                  + ([f"[report]({point_reports[p['dir']].relative_to(base).as_posix()})"]
                     if p["dir"] in point_reports else [p.get("error", "—")]) for p in pts])
    evs = list(dict.fromkeys(ev for p in pts if p.get("summary")
                             for ev in p["summary"]["evaluators"]))
    for ev in evs:
        md += [f"## {ev}", ""]
        rows = []
        for p in pts:
            s = p.get("summary")
            if not s:
                continue
            for arm in s["arms"]:
                acc = fmt_ci(ci_from(s["final_accuracy"].get(arm)), signed=False)
                tau = fmt_ci(ci_from(s["kendall_tau"].get(arm, {}).get(ev)))
                for pid, st in (s["attacker"].get(arm, {}).get(ev) or {}).items():
                    rows.append([p["dir"]] + [p["overrides"].get(k, "") for k in keys] + [
                        arm, pid, acc, fmt_ci(ci_from(st["value"])),
                        fmt_ci(ci_from(st["counterfactual_inflation"])),
                        fmt_ci(ci_from(st["paired_inflation"])), tau])
        md += md_table(["point"] + keys + ["arm", "attacker", "final accuracy", "attacker value",
                                         "counterfactual inflation", "paired inflation",
                                         "Kendall tau"], rows)
    md += ["## Plots", ""]
    for caption, p in plots:
        md += [f"### {caption}", "", f"![{caption}]({p.relative_to(base).as_posix()})", ""]
    return "\n".join(md)
