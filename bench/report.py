"""Summaries and the printed tables: medians per path, ratios between paths, CPU per unit of work.

Ratios always compare two paths measured in the same run (alternating, same
machine state): project/Go, and project/baseline with ``--baseline``.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import shutil
import statistics
import subprocess
from typing import Any, Final

from bench.services import PATH_TITLES
from bench.workloads import Workload

RATIOS: Final = (
    ("py", "go"),
    ("py-asyncio", "go"),
    ("py", "base"),
    ("py-asyncio", "base-asyncio"),
)
"""(numerator, denominator) path pairs that get a ratio column when both were run."""


def ratio_pairs(paths: list[str]) -> list[tuple[str, str]]:
    return [(a, b) for a, b in RATIOS if a in paths and b in paths]


def ratio_title(pair: tuple[str, str]) -> str:
    short = {
        "py": "project",
        "py-asyncio": "project asyncio",
        "go": "Go",
        "base": "baseline",
        "base-asyncio": "baseline asyncio",
    }
    return f"ratio {short[pair[0]]}/{short[pair[1]]}"


def cpu_cost(res: dict[str, Any], role: str, per: str) -> float | None:
    cpu = res.get(f"{role}_cpu_s")
    if cpu is None:
        return None
    if per == "GB":
        moved = res.get("bytes_moved") or 0
        return cpu / (moved / 1e9) if moved else None
    ops = res.get("ops") or 0
    return cpu / ops * 1e6 if ops else None  # microseconds per op


def median_or_none(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def cpu_sum(cell: dict[str, float | None]) -> float | None:
    """CPU of relay + forwarder, None unless both are known."""
    relay, forwarder = cell["relay"], cell["forwarder"]
    return None if relay is None or forwarder is None else relay + forwarder


def summarize(
    wls: list[Workload], paths: list[str], runs: list[dict[str, Any]], repeat: int
) -> dict[str, Any]:
    rows = []
    cpu_rows = []
    for wl in wls:
        by_path = {
            p: [r for r in runs if r["workload"] == wl.name and r["path"] == p] for p in paths
        }
        for m in wl.metrics:
            row: dict[str, Any] = {
                "workload": wl.name,
                "metric": m.key,
                "label": m.label,
                "unit": m.unit,
                "better": m.better,
                "fmt": m.fmt,
            }
            for p in paths:
                ok = [
                    r["result"][m.key]
                    for r in by_path[p]
                    if r["ok"] and r["result"].get(m.key) is not None
                ]
                failed = [r["error"] for r in by_path[p] if not r["ok"]]
                row[p] = {
                    "median": statistics.median(ok) if ok else None,
                    "values": ok,
                    "runs": len(by_path[p]),
                    "failed": len(failed),
                    "errors": failed[:3],
                }
            row["ratios"] = {}
            for a, b in ratio_pairs(paths):
                num, den = row[a]["median"], row[b]["median"]
                row["ratios"][f"{a}/{b}"] = num / den if den and num is not None else None
            rows.append(row)
        unit = "CPU s per GB moved" if wl.cpu_per == "GB" else "CPU us per op"
        crow: dict[str, Any] = {"workload": wl.name, "title": wl.title, "unit": unit}
        for p in paths:
            if p == "direct":
                continue
            ok = [r["result"] for r in by_path[p] if r["ok"]]
            crow[p] = {
                role: median_or_none([cpu_cost(r, role, wl.cpu_per) for r in ok])
                for role in ("relay", "forwarder")
            }
        crow["ratios"] = {}
        for a, b in ratio_pairs(paths):
            num, den = cpu_sum(crow[a]), cpu_sum(crow[b])
            crow["ratios"][f"{a}/{b}"] = num / den if den and num is not None else None
        cpu_rows.append(crow)
    return {"rows": rows, "cpu_rows": cpu_rows, "repeat": repeat, "notes": notes(wls, paths, runs)}


def notes(wls: list[Workload], paths: list[str], runs: list[dict[str, Any]]) -> list[str]:
    """Every run of a workload with a ``detail`` in words, for paths where any run had one
    worth telling (not "no errors")."""
    out = []
    for wl in wls:
        if wl.detail is None:
            continue
        for p in paths:
            told = [
                (r["rep"], wl.detail(r["result"]))
                for r in runs
                if r["workload"] == wl.name and r["path"] == p and r["ok"]
            ]
            if any(text != "no errors" for _, text in told):
                out += [f"{wl.name}, {PATH_TITLES[p]}, rep {rep + 1}: {text}" for rep, text in told]
    return out


def fmt_cell(cell: dict[str, Any] | None, fmt: str) -> str:
    if cell is None:
        return "-"
    if cell["median"] is None and not cell["failed"]:
        return "n/a"
    if cell["median"] is None:
        return f"FAIL ({cell['failed']}/{cell['runs']})" if cell["runs"] else "-"
    text = fmt.format(cell["median"])
    if cell["failed"]:
        text += f" ({cell['runs'] - cell['failed']}/{cell['runs']} ok)"
    return text


def fmt_ratio(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def fmt_num(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.3g}" if v < 100 else f"{v:.0f}"


def render(summary: dict[str, Any], machine: dict[str, Any], paths: list[str]) -> str:
    out = []
    out.append("## Relay benchmark")
    out.append("")
    for key in (
        "date",
        "nproc",
        "cpu",
        "python",
        "go",
        "kernel",
        "load_before",
        "load_after",
        "mode",
        "event_loop",
        "baseline",
        "repeat",
        "duration_s",
    ):
        if key in machine:
            out.append(f"- {key}: {machine[key]}")
    out.append("")
    pairs = ratio_pairs(paths)
    heads = ["workload", *(PATH_TITLES[p] for p in paths), *(ratio_title(r) for r in pairs)]
    out.append("| " + " | ".join(heads) + " |")
    out.append("|" + "---|" * len(heads))
    for row in summary["rows"]:
        label = (
            f"{row['label']} ({row['unit']}, {row['better']} is better)"
            if row["unit"]
            else f"{row['label']}"
        )
        cells = [label]
        for p in paths:
            cells.append(fmt_cell(row.get(p), row["fmt"]))
        cells += [fmt_ratio(row["ratios"][f"{a}/{b}"]) for a, b in pairs]
        out.append("| " + " | ".join(cells) + " |")
    relay_paths = [p for p in paths if p != "direct"]
    if relay_paths:
        out.append("")
        out.append(
            "CPU time of the relay and forwarder processes (utime+stime), medians; "
            "GB moved counts both directions:"
        )
        out.append("")
        heads = ["workload", "unit"]
        for p in relay_paths:
            heads += [f"{PATH_TITLES[p]}: relay", f"{PATH_TITLES[p]}: forwarder"]
        heads += [f"{ratio_title(r)} (sum)" for r in pairs]
        out.append("| " + " | ".join(heads) + " |")
        out.append("|" + "---|" * len(heads))
        for crow in summary["cpu_rows"]:
            cells = [crow["title"], crow["unit"]]
            for p in relay_paths:
                cells += [fmt_num(crow[p]["relay"]), fmt_num(crow[p]["forwarder"])]
            cells += [fmt_ratio(crow["ratios"][f"{a}/{b}"]) for a, b in pairs]
            out.append("| " + " | ".join(cells) + " |")
    if summary.get("notes"):
        out.append("")
        out.append("Failed connections of the bursts, by kind:")
        out.append("")
        out += [f"- {note[:400]}" for note in summary["notes"]]
    failures = [
        (row["label"], p, e)
        for row in summary["rows"]
        for p in paths
        for e in (row.get(p) or {}).get("errors", [])
    ]
    if failures:
        out.append("")
        out.append("Failures:")
        seen = set()
        for label, p, e in failures:
            if (p, e) in seen:
                continue
            seen.add((p, e))
            out.append(f"- {PATH_TITLES[p]}, {label}: {e[:400]}")
    return "\n".join(out)


def machine_info(python: str) -> dict[str, Any]:
    cpu = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    pyver = subprocess.run(
        [python, "-c", "import sys; print(sys.version.split()[0])"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    gover = "?"
    if shutil.which("go"):
        gover = (
            subprocess.run(["go", "version"], capture_output=True, text=True, check=False)
            .stdout.strip()
            .removeprefix("go version ")
        )
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "python": pyver,
        "go": gover,
        "kernel": platform.release(),
        "load_before": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }
