"""Summaries of the raw runs: medians, paired ratios, a Markdown report and a JSON document."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from scenarios import Measured, Metric, Scenario

#: Proxies every other proxy is compared against, run by run (unless the scenario names its own:
#: the sni and tls scenarios compare with HAProxy without splice, the reference of their floors).
REFERENCES = ("haproxy-splice", "nginx")

#: runs[proxy] = one Measured per round (None when that round failed).
Runs = dict[str, list[Measured | None]]


def _values(runs: list[Measured | None], key: str) -> list[float | None]:
    return [m.values.get(key) if m is not None else None for m in runs]


def summarize_metric(
    metric: Metric, runs: Runs, proxies: Sequence[str], references: Sequence[str] = REFERENCES
) -> dict[str, Any]:
    """Per proxy: the per-run values, median/min/max, and median paired ratios against the references."""
    out: dict[str, Any] = {}
    for proxy in proxies:
        vals = _values(runs.get(proxy, []), metric.key)
        got = [v for v in vals if v is not None]
        entry: dict[str, Any] = {"runs": vals}
        if got:
            entry.update(median=statistics.median(got), min=min(got), max=max(got))
        ratios: dict[str, Any] = {}
        for ref in references:
            if ref == proxy or ref not in runs or not metric.ratio:
                continue
            pairs = [
                v / r
                for v, r in zip(vals, _values(runs[ref], metric.key), strict=False)
                if v is not None and r
            ]
            if pairs:
                ratios[ref] = {"median": statistics.median(pairs), "runs": pairs}
        entry["ratios"] = ratios
        out[proxy] = entry
    return out


def summarize(
    scenarios: Sequence[Scenario], results: dict[str, Runs], proxies: Sequence[str]
) -> dict[str, Any]:
    """The ``scenarios`` part of the JSON document."""
    doc: dict[str, Any] = {}
    for scen in scenarios:
        runs = results.get(scen.name, {})
        refs = getattr(scen, "references", REFERENCES)
        doc[scen.name] = {
            "title": scen.title,
            "references": list(refs),
            "metrics": [
                {
                    "key": m.key,
                    "label": m.label,
                    "unit": m.unit,
                    "better": m.better,
                    "digits": m.digits,
                    "proxies": summarize_metric(m, runs, proxies, refs),
                }
                for m in scen.metrics()
            ],
        }
    return doc


def _num(x: float, digits: int) -> str:
    return f"{x:,.{digits}f}"


def _cell(entry: dict[str, Any], digits: int) -> str:
    """``median (min–max)``, or just the value for a single run, or n/a."""
    if "median" not in entry:
        return "n/a"
    text = _num(entry["median"], digits)
    if sum(v is not None for v in entry["runs"]) > 1:
        text += f" ({_num(entry['min'], digits)}–{_num(entry['max'], digits)})"
    return text


def _ratio(entry: dict[str, Any] | None) -> str:
    if not entry:
        return "n/a"
    pairs = entry["runs"]
    text = f"{entry['median']:.2f}"
    if len(pairs) > 1:
        text += f" ({min(pairs):.2f}–{max(pairs):.2f})"
    return text


def ratio_columns(proxies: Sequence[str], references: Sequence[str] = REFERENCES) -> list[tuple[str, str]]:
    """(subject, reference) pairs to show: Portway variants if present, else every peer."""
    subjects = [p for p in proxies if p.startswith("portway")] or list(proxies)
    pairs: list[tuple[str, str]] = []
    for s in subjects:
        for r in references:
            if r != s and r in proxies and (r, s) not in pairs:
                pairs.append((s, r))
    return pairs


def markdown(doc: dict[str, Any]) -> str:
    """The whole report as Markdown: a header of facts, two tables per scenario, then notes."""
    meta = doc["meta"]
    proxies: list[str] = meta["proxies"]
    lines = [
        f"### Results {meta['date']}",
        "",
        f"- command: `{meta['command']}`",
        f"- machine: {meta['cpus']} CPUs ({meta['cpu_model']}), kernel {meta['kernel']}; "
        f"proxy on core {meta['proxy_core']}, load generators and backends on core {meta['load_core']}",
        f"- {meta['runs']} run(s) per proxy, interleaved; {meta['duration']:g} s per iperf3/wrk run "
        f"(wrk -t1 -c{meta.get('wrk_connections', 50)}); "
        f"RLIMIT_NOFILE {meta['fd_limit']}",
    ]
    lines += [f"- {name}: {meta['descriptions'][name]} — {meta['versions'][name]}" for name in proxies]
    lines += [
        "",
        "Cells: median of the runs (min–max); ↑ higher is better, ↓ lower is better. Ratios: median of "
        "the per-round ratios, this proxy's value ÷ the reference's value in the same round (min–max).",
    ]
    for scen in doc["scenarios"].values():
        pairs = ratio_columns(proxies, scen.get("references", REFERENCES))
        lines += ["", f"#### {scen['title']}", ""]
        lines.append("| metric | " + " | ".join(proxies) + " |")
        lines.append("|---|" + "---:|" * len(proxies))
        for m in scen["metrics"]:
            cells = [_cell(m["proxies"][p], m["digits"]) for p in proxies]
            arrow = {"higher": " ↑", "lower": " ↓"}.get(m["better"], "")
            lines.append(f"| {m['label']}, {m['unit']}{arrow} | " + " | ".join(cells) + " |")
        rated = [m for m in scen["metrics"] if any(m["proxies"][s]["ratios"] for s, _ in pairs)]
        if pairs and rated:
            lines += ["", "| ratio | " + " | ".join(f"{s} ÷ {r}" for s, r in pairs) + " |"]
            lines.append("|---|" + "---:|" * len(pairs))
            for m in rated:
                cells = [_ratio(m["proxies"][s]["ratios"].get(r)) for s, r in pairs]
                lines.append(f"| {m['label']} | " + " | ".join(cells) + " |")
    if doc["notes"]:
        lines += ["", "Notes:", ""]
        lines += [f"- {note}" for note in doc["notes"]]
    return "\n".join(lines) + "\n"
