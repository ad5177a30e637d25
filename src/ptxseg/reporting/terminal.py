"""What `ptxseg evaluate` and `ptxseg compare` print: the metrics with their intervals, the
stored operating points, calibration and subgroups, the folds of an out-of-fold evaluation side
by side, and a paired comparison (rich tables on the terminal; the files carry the same
numbers)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from ptxseg.evaluation.compare import METRICS
from ptxseg.evaluation.uncertainty import format_interval
from ptxseg.util.jsonio import read_json
from ptxseg.util.run_folders import RunFolder


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


def print_oof(summary: dict, console: Console) -> None:
    """Each fold's and the pooled out-of-fold competition Dice of `ptxseg cv`, side by side,
    with their 95% intervals."""
    table = Table(title=f"out of fold, {summary['operating_point_description']}")
    for column in ("fold", "images", "positive", "competition Dice [95%]", "Dice (pooled) [95%]"):
        table.add_column(column, justify="right")

    def row(name, entry) -> None:
        counts, metrics = entry["counts"], entry["metrics"]
        table.add_row(
            name,
            str(counts["n_images"]),
            str(counts["n_positive"]),
            format_interval(metrics["dice_per_image"], 4),
            format_interval(metrics["dice_pooled"], 4),
        )

    for fold in summary.get("folds", []):
        row(str(fold["fold"]), fold)
    row("pooled", summary)
    console.print(table)
    console.print(f"operating point: {summary['operating_point_source']}")


def fold_event_printer(console: Console, folds: int):
    """What `ptxseg cv` prints as its folds are skipped, started and finished."""

    def event(kind: str, fold: int, summary) -> None:
        if kind == "skipped":
            console.print(f"fold {fold}: finished before, skipped")
        elif kind in ("started", "resumed"):
            console.rule(f"fold {fold} of {folds} ({kind})")
        else:
            console.print(
                f"fold {fold}: best val competition Dice "
                f"{summary.get('best_val_competition_dice')} in {summary['cv_seconds']} s"
            )

    return event


def _num(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def cell_event_printer(console: Console):
    """What `ptxseg ablate` prints as its cells are planned, skipped, started, failed and
    finished."""
    state = {"n": 0, "todo": 0}

    def event(kind: str, cell, result) -> None:
        if kind == "planned":
            state["todo"] = len(result["todo"])
            console.print(
                f"{state['todo']} of {len(result['cells'])} cells in this run "
                f"({result['shard'] or 'all'})"
            )
            return
        if kind in ("skipped", "started"):
            state["n"] += 1
        prefix = f"[{state['n']}/{state['todo']}] {cell.name}"
        if kind == "skipped":
            console.print(f"{prefix}: done before, skipped")
        elif kind == "started":
            console.rule(prefix)
        elif kind == "failed":
            console.print(f"[red]{prefix} failed[/red]: {result['error']} (see error.txt)")
        else:
            console.print(
                f"{prefix}: test Dice {_num(result.get('test_dice'))}, competition Dice "
                f"{_num(result.get('test_competition_dice'))} in {result['seconds']} s"
            )

    return event


def print_prepared(result, out, size: int, console: Console) -> None:
    """What `ptxseg prepare` prints: each split's images and positives, the folds, and how many
    files were unmatched or skipped (listed in OUT/unmatched.json)."""
    table = Table(title=f"{out} ({size}px, {result.encoding} RLE)")
    for column in ("split", "images", "positive", "positive share"):
        table.add_column(column, justify="right" if column != "split" else "left")
    for split, c in result.counts.items():
        share = f"{c['positive'] / c['images']:.1%}" if c["images"] else "-"
        table.add_row(split, str(c["images"]), str(c["positive"]), share)
    console.print(table)
    if result.folds:
        folds_table = Table(title=f"{len(result.folds)} folds of the train and val images")
        for column in ("fold", "images", "positive", "positive share"):
            folds_table.add_column(column, justify="right")
        for k, c in enumerate(result.folds):
            share = f"{c['positive'] / c['images']:.1%}" if c["images"] else "-"
            folds_table.add_row(str(k), str(c["images"]), str(c["positive"]), share)
        console.print(folds_table)
    for key, items in result.problems.items():
        if items:
            console.print(
                f"[yellow]{len(items)} {key.replace('_', ' ')}[/yellow] "
                f"(listed in {out}/unmatched.json)"
            )


def print_train_summary(run_dir: Path, console: Console) -> None:
    """The line `ptxseg train` ends with: the best val Dice, its epoch, the competition Dice
    against the all-empty baseline and the training rate (from the run's train_summary.json)."""
    summary_path = RunFolder(run_dir).train_summary
    s = read_json(summary_path, default={})
    if s.get("best_val_dice") is not None:
        console.print(
            f"[green]done[/green]: {run_dir} — best val Dice {s['best_val_dice']:.4f} at epoch "
            f"{s['best_epoch']}, competition Dice {s['best_val_competition_dice']:.4f} "
            f"(all-empty baseline {s['empty_baseline_val']['competition_dice']:.4f}), "
            f"{s['train_images_per_s']} images/s"
        )


def print_cv_outcome(outcome, out: Path, data: Path, console: Console) -> None:
    """How `ptxseg cv` ends: the folds still missing (other shards, or failed), or the
    out-of-fold table and the command that tests the ensemble."""
    if outcome.oof is None:
        console.print(
            f"{len(outcome.finished)} of the {len(outcome.todo)} folds of this run are finished; "
            f"folds {outcome.missing} are not (other shards, or failed): rerun without "
            "--folds-to-run once they are, to write the ensemble"
        )
        return
    print_oof(outcome.oof, console)
    console.print(
        f"ensemble: {out / 'ensemble.json'}; test it with: ptxseg evaluate --checkpoint "
        f"{out / 'ensemble.json'} --data {data} --split test --out {out / 'eval' / 'test'}"
    )


def print_ablation_outcome(outcome, console: Console) -> None:
    """How `ptxseg ablate` ends: the finished cells aggregated, and how many are not."""
    if outcome.done:
        console.print(
            f"{outcome.done} finished cells aggregated: "
            + ", ".join(map(str, outcome.paths.values()))
        )
    if outcome.done < len(outcome.cells):
        console.print(
            f"{len(outcome.cells) - outcome.done} cells not finished (failed, or in other "
            "shards): rerun the same command to continue; rerun without --cells once all shards "
            "are done"
        )
