"""What `ptxseg evaluate` and `ptxseg compare` print: the metrics with their intervals, the
stored operating points, calibration and subgroups, the folds of an out-of-fold evaluation side
by side, and a paired comparison (rich tables on the terminal; the files carry the same
numbers)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from ptxseg.evaluation.compare import METRICS
from ptxseg.evaluation.uncertainty import format_interval


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def print_summary(summary: dict) -> None:
    """A rich table of the metrics that says which are pooled and which per-image."""
    console = Console()
    counts = summary["counts"]
    table = Table(
        title=f"{summary['split']} split: {counts['n_images']} images, "
        f"{counts['n_positive']} with pneumothorax (tta: {summary['tta']})"
    )
    table.add_column("metric")
    table.add_column("kind")
    table.add_column("value [95% interval]", justify="right")
    table.add_column("n", justify="right")
    table.add_column("meaning", style="dim")
    for name, entry in summary["metrics"].items():
        table.add_row(
            name,
            entry["kind"],
            format_interval(entry, 4),
            str(entry.get("n", "")),
            entry["description"],
        )
    console.print(table)
    intervals = summary.get("intervals") or {}
    if intervals:
        console.print(f"intervals: {intervals['method']}; {intervals['note']}", style="dim")
    path = summary.get("inference_path") or {}
    console.print(
        f"scored path: {summary.get('runtime')} {summary.get('precision')}"
        + (f" ({path['line']})" if path.get("line") else ""),
        soft_wrap=True,
    )
    console.print(
        f"operating point: {summary['operating_point_description']} "
        f"({summary['operating_point_source']})"
    )
    console.print(
        f"competition Dice {_fmt(summary['competition_dice'])} ({summary['scored_at']}) vs "
        f"{_fmt(summary['empty_baseline_competition_dice'])} for all-empty masks; at the model's "
        f"size {_fmt(summary['model_size']['competition_dice'])}"
    )
    print_evidence(summary, console)


def print_evidence(summary: dict, console) -> None:
    """The stored operating points on these images, calibration, and the subgroup tests."""
    points = summary.get("operating_points") or {}
    if points:
        table = Table(title="operating points on these images")
        for column in (
            "name",
            "chosen for",
            "top / bottom / min area",
            "sensitivity",
            "specificity",
        ):
            table.add_column(
                column, justify="left" if column in ("name", "chosen for") else "right"
            )
        for name, entry in points.items():
            op, test = entry["operating_point"], entry.get("test") or {}
            table.add_row(
                name,
                entry.get("description", ""),
                f"{op['top']:g} / {op['bottom']:g} / {op['min_area']}",
                format_interval(test.get("sensitivity")),
                format_interval(test.get("specificity")),
            )
        console.print(table)
    calibration = summary.get("calibration") or {}
    for kind in ("raw", "calibrated"):
        if calibration.get(kind):
            numbers = calibration[kind]
            console.print(
                f"{kind} probability: Brier {format_interval(numbers['brier'])}, ECE "
                f"{_fmt(numbers['ece'])} ({calibration.get('bins')})"
            )
    if calibration:
        console.print(f"calibrator: {calibration.get('calibrator_description')}")
    subgroups = summary.get("subgroups") or {}
    if subgroups:
        called = subgroups.get("called_out") or []
        console.print(
            f"subgroups: {subgroups.get('n_tests', 0)} differences tested (Holm); "
            + ("; ".join(called) if called else "none called out")
            + " (subgroups.csv)"
        )


def print_folds(summary: dict) -> None:
    """The out-of-fold metrics of every fold side by side, then the pooled ones."""
    names = ("dice_per_image", "dice_pooled", "dice_positive_per_image", "roc_auc")
    table = Table(title=f"out of fold: {len(summary['folds'])} folds (tta: {summary['tta']})")
    for column in ("fold", "images", "positive", *names):
        table.add_column(column, justify="right")

    def add(name: str, entry: dict) -> None:
        metrics = entry["metrics"]
        cells = [format_interval(metrics[n], 4) if n in metrics else "-" for n in names]
        counts = entry["counts"]
        table.add_row(name, str(counts["n_images"]), str(counts["n_positive"]), *cells)

    for fold in summary["folds"]:
        add(str(fold["fold"]), fold)
    add("pooled", summary)
    Console().print(table)
    print_summary(summary)


def print_comparison(result: dict[str, Any], console: Console | None = None) -> None:
    """Each pair's difference in each metric with its 95% interval and p-value."""
    console = console or Console()
    table = Table(
        title=f"paired comparison: {result['n_images']} images, {result['n_positive']} positive, "
        f"{result['n_patients']} {result['resampled'].split(' ')[0]}"
    )
    for column in ("pair", "metric", "first", "second", "difference [95% CI], p"):
        table.add_column(column, justify="left" if column in ("pair", "metric") else "right")
    for pair in result["pairs"]:
        for metric, entry in pair["metrics"].items():
            table.add_row(
                f"{pair['a']} − {pair['b']}",
                METRICS[metric],
                _fmt(entry["a"]),
                _fmt(entry["b"]),
                entry["sentence"].split(": ", 1)[-1],
            )
    console.print(table)
    console.print(result["method"], style="dim")
