"""One self-contained HTML report of a run, a grid, or a folder of runs.

The report renders whatever it finds and says what is missing instead of failing:

- a **run folder** (written by `ptxseg train`): `config.yaml`, `metrics.csv`, `train_summary.json`,
  and the outputs of `ptxseg evaluate` in `RUN/eval/<split>/` (`summary.json`, `per_image.csv`,
  `roc.csv`, `panels.npz`); an evaluation folder directly in `RUN/eval/` is accepted too;
- a **grid folder** (written by `ptxseg ablate`): `ablation.csv` / `ablation.png`;
- a **benchmark folder**: `benchmark.csv` / `benchmark.png` (in the folder or its `benchmark/`);
- a **cross-validation folder** (written by `ptxseg cv`): `cv.json`, the folds' runs
  `fold<k>/`, `ensemble.json` and the evaluations in `eval/<split>/`; its folds are shown side by
  side (training and out-of-fold metrics) with the pooled out-of-fold row and the ensemble's
  evaluations;
- any folder holding several of these (the demo folder: `runs/<encoder>/` + `benchmark/`).

Images are inlined as base64 PNGs and the CSS is inline: the file has no external resources.
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timezone
from pathlib import Path

from ptxseg.reporting import evidence_sections, plots
from ptxseg.reporting.pieces import Raw, esc, fmt, img, missing, png_file, table
from ptxseg.reporting.report_folders import (
    RunInfo,
    as_float,
    discover,
    find_evals,
    flatten_summary,
    read_curves,
    read_panels,
    read_roc,
    summary_metrics,
)
from ptxseg.util import atomic
from ptxseg.util.jsonio import read_json
from ptxseg.util.run_folders import CvFolder, EvalFolder, RunFolder

__all__ = ["Raw", "esc", "fmt", "img", "missing", "table"]

SUMMARY_INFO = (
    "split",
    "scored_at",
    "encoder",
    "input_size",
    "tta",
    "detection_score",
    "operating_point_description",
    "operating_point_source",
    "checkpoint",
)

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d2330;
background:#f5f6f8}
main{max-width:1180px;margin:0 auto;padding:24px 32px 48px;background:#fff}
h1{font-size:1.6rem;margin:.2em 0}h2{border-bottom:2px solid #3b6ea8;padding-bottom:4px;
margin-top:2em}h3{margin-top:1.4em;color:#2c4f7c}
table{border-collapse:collapse;margin:.6em 0;font-size:.88rem}
th,td{border:1px solid #d5d9e0;padding:4px 8px;text-align:right}
th{background:#eef2f8}td.l,th.l{text-align:left}
tr:nth-child(even) td{background:#fafbfc}
.kind{display:inline-block;padding:0 6px;border-radius:8px;font-size:.75rem;color:#fff}
.pooled{background:#6a4c93}.per-image{background:#1982c4}.image-level{background:#8ac926}
.other{background:#999}
.missing{color:#8a5a00;background:#fff7e0;border-left:4px solid #f0b400;padding:6px 10px}
.meta{color:#5a6270;font-size:.85rem}img{max-width:100%;height:auto}
nav a{margin-right:12px}.scroll{overflow-x:auto}.nw{white-space:nowrap}
code{background:#f0f2f5;padding:1px 4px;border-radius:3px}
"""


# --------------------------------------------------------------------------- sections


def setup_section(run: RunInfo) -> str:
    parts = ["<h3>Setup</h3>"]
    config = run.config
    if not config:
        return parts[0] + missing(f"no readable config.yaml in {run.path}")
    rows = []
    for section in ("data", "model", "loss", "optim", "trainer"):
        for key, value in (config.get(section) or {}).items():
            if isinstance(value, list):
                value = ", ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in value)
            rows.append([f"{section}.{key}", Raw(esc(value))])
    split_counts = _split_counts(config)
    if split_counts:
        parts.append(
            "<p>Split: "
            + ", ".join(f"{esc(k)} <b>{v}</b>" for k, v in split_counts.items())
            + " images.</p>"
        )
    else:
        work = (config.get("data") or {}).get("work")
        parts.append(missing(f"split counts unavailable: no splits.json in data.work ({work})"))
    if run.summary:
        summary_rows = [[k, v] for k, v in flatten_summary(run.summary).items()]
        parts.append("<p><b>Training summary</b> (train_summary.json)</p>")
        parts.append(table(["key", "value"], summary_rows))
    else:
        parts.append(missing(f"no train_summary.json in {run.path}"))
    parts.append(
        "<details><summary>Resolved configuration (config.yaml)</summary>"
        + table(["key", "value"], rows, left=2)
        + "</details>"
    )
    return "".join(parts)


def _split_counts(config: dict) -> dict[str, int]:
    work = (config.get("data") or {}).get("work")
    if not work:
        return {}
    splits = read_json(Path(work) / "splits.json", default=None) or {}
    return {k: len(v) for k, v in splits.items() if isinstance(v, list)}


def curves_section(run: RunInfo) -> str:
    head = "<h3>Training and validation curves</h3>"
    path = RunFolder(run.path).metrics
    if not path.is_file():
        return head + missing(f"no metrics.csv in {run.path}: curves unavailable")
    epochs, curves = read_curves(path)
    if not epochs or not curves:
        return head + missing(f"{path}: no per-epoch loss, IoU or Dice columns found")
    return head + img(plots.curves_png(curves, epochs), "loss, IoU and Dice per epoch")


def metrics_section(split: str, eval_dir: Path) -> str:
    """One evaluation: its facts and metrics with intervals, the evidence (operating points,
    calibration, subgroups), the ROC, the panels and the failure gallery."""
    parts = [f"<h3>Metrics on the {esc(split)} split</h3>"]
    summary = read_json(EvalFolder(eval_dir).summary, default=None)
    if summary is None:
        parts.append(missing(f"no readable summary.json in {eval_dir}"))
    else:
        parts.append(_metric_tables(summary, eval_dir))
        parts.append(evidence_sections.operating_points_section(summary))
        parts.append(evidence_sections.calibration_section(summary, eval_dir))
        parts.append(evidence_sections.subgroups_section(summary, eval_dir))
    parts.append(_roc_part(eval_dir, summary))
    parts.append(_panels_part(eval_dir))
    return "".join(parts)


def _metric_tables(summary: dict, eval_dir: Path) -> str:
    """The evaluation's facts, then every metric (full size, its interval, model size)."""
    parts = []
    info = [[k, summary[k]] for k in SUMMARY_INFO if summary.get(k) not in (None, "")]
    info += [[f"images: {k[2:]}", v] for k, v in (summary.get("counts") or {}).items()]
    if info:
        parts.append(table(["evaluation", "value"], info, left=2))
    order = {"pooled": 0, "per-image": 1, "image-level": 2}
    metrics = sorted(summary_metrics(summary).items(), key=lambda kv: order.get(kv[1][0], 3))
    small = summary_metrics(summary.get("model_size") or {})  # evaluate's secondary table
    entries = summary.get("metrics") or {}
    rows = [
        [name, Raw(f'<span class="kind {esc(kind)}">{esc(kind)}</span>'), value]
        + [_ci(entries.get(name)), (entries.get(name) or {}).get("n", "")]
        + ([small.get(name, ("", math.nan, ""))[1]] if small else [])
        + [text]
        for name, (kind, value, text) in metrics
    ]
    headers = ["metric", "kind", "value", "95% interval", "n", "meaning"]
    if small:
        headers = ["metric", "kind", "full size", "95% interval", "n", "model size", "meaning"]
    parts.append(
        "<p>Pooled metrics sum pixel counts over the whole split; per-image metrics average"
        " one value per image (the competition Dice is the per-image mean, an empty truth"
        " with an empty prediction counting 1).</p>"
    )
    if not rows:
        return "".join(parts) + missing(f"{eval_dir / 'summary.json'}: no metrics found")
    parts.append(table(headers, rows, left=2, text_cols=1))
    method = (summary.get("intervals") or {}).get("method")
    if method:
        parts.append(
            f"<p class=meta>95% intervals: {esc(method)}; shares of one image per"
            " patient (sensitivity, specificity, PPV, NPV) get the Wilson score"
            " interval.</p>"
        )
    return "".join(parts)


def _roc_part(eval_dir: Path, summary: dict | None) -> str:
    roc = eval_dir / "roc.csv"
    if not roc.is_file():
        return missing(f"no roc.csv in {eval_dir}")
    try:
        fpr, tpr = read_roc(roc)
    except ValueError as exc:
        return missing(str(exc))
    auc = summary_metrics(summary or {}).get("roc_auc", ("", math.nan, ""))[1]
    return "<h3>ROC: is there a pneumothorax?</h3>" + img(plots.roc_png(fpr, tpr, auc), "ROC")


def _panels_part(eval_dir: Path) -> str:
    panels = eval_dir / "panels.npz"
    if not panels.is_file():
        return missing(f"no panels.npz in {eval_dir}")
    parts = []
    try:
        parts.append("<h3>Image, ground truth and prediction</h3>")
        for group in read_panels(panels):
            label = group["category"].replace("_", " ")
            parts.append(f"<h4>{esc(label)}</h4>")
            parts.append(
                img(
                    plots.panels_png(
                        group["images"], group["truths"], group["predictions"], group["titles"]
                    ),
                    label,
                )
            )
    except (ValueError, OSError) as exc:
        parts.append(missing(f"cannot read {panels}: {exc}"))
    parts.append(evidence_sections.failure_gallery(eval_dir))
    return "".join(parts)


def _ci(entry: dict | None) -> str:
    if not entry or entry.get("ci_low") is None or entry.get("ci_high") is None:
        return "–"
    return f"[{entry['ci_low']:.4f}, {entry['ci_high']:.4f}]"


def run_section(run: RunInfo) -> str:
    parts = [
        f'<h2 id="{esc(_anchor(run.name))}">Run <code>{esc(run.name)}</code></h2>',
        setup_section(run),
        curves_section(run),
    ]
    if not run.evals:
        parts.append(
            missing(
                f"no evaluation found: run `ptxseg evaluate` with its output in "
                f"{run.path}/eval/<split>/"
            )
        )
    for split, eval_dir in run.evals.items():
        parts.append(metrics_section(split, eval_dir))
    return "".join(parts)


def runs_overview(runs: list[RunInfo]) -> str:
    """One row per run: encoder, augmentation, and the headline metrics of each evaluation."""
    rows = []
    for run in runs:
        model = run.config.get("model") or {}
        data = run.config.get("data") or {}
        for split, eval_dir in (run.evals or {"–": None}).items():
            summary = (
                (read_json(EvalFolder(eval_dir).summary, default=None) or {}) if eval_dir else {}
            )
            values = {name: entry[1] for name, entry in summary_metrics(summary).items()}
            entries = summary.get("metrics") or {}

            def pick(key, values=values, entries=entries):
                entry = entries.get(key) if isinstance(entries, dict) else None
                if isinstance(entry, dict) and entry.get("ci_low") is not None:
                    return Raw(esc(evidence_sections.format_interval(entry, 4)))
                return values.get(key, math.nan)

            rows.append(
                [
                    Raw(f'<a href="#{esc(_anchor(run.name))}">{esc(run.name)}</a>'),
                    model.get("encoder", "–"),
                    data.get("aug", "–"),
                    split,
                    pick("dice_pooled"),
                    pick("iou_pooled"),
                    pick("pixel_accuracy_pooled"),
                    pick("dice_per_image"),
                    pick("dice_positive_per_image"),
                    pick("roc_auc"),
                ]
            )
    headers = [
        "run",
        "encoder",
        "aug",
        "split",
        "Dice (pooled)",
        "IoU (pooled)",
        "pixel acc. (pooled)",
        "competition Dice (per-image)",
        "Dice positives (per-image)",
        "ROC AUC",
    ]
    return "<h2>Runs</h2>" + table(headers, rows, left=4)


def benchmark_section(folder: Path) -> str:
    from ptxseg.benchmarks.backbones import COLUMNS, read_benchmark_csv

    rows = read_benchmark_csv(folder / "benchmark.csv")
    keys = [
        k
        for k in COLUMNS
        if k != "mem_kind" and any(str(r.get(k, "")) not in ("", "nan") for r in rows)
    ]
    body = [[_fmt_bench(r.get(k, "")) for k in keys] for r in rows]
    kinds = sorted({str(r.get("mem_kind")) for r in rows if r.get("mem_kind")})
    note = ""
    md = folder / "benchmark.md"
    if md.is_file():
        lines = md.read_text().splitlines()
        note = next((ln for ln in lines[1:] if ln.startswith("torch ")), "")
    memory = f"Memory: {', '.join(kinds)}." if kinds else ""
    return (
        f"<h2>Backbone benchmark</h2><p class=meta>{esc(folder)} {esc(note)}</p>"
        + table([COLUMNS[k] for k in keys], body, text_cols=int("error" in keys))
        + f"<p class=meta>Latency per batch after warm-up under inference mode; GFLOPs count"
        f" 2 FLOPs per multiply-add. {esc(memory)}</p>"
        + png_file(folder / "benchmark.png", "benchmark bar chart")
    )


def _fmt_bench(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    text = str(value)
    return text if len(text) <= 90 else text[:87] + "..."


def ablation_section(folder: Path) -> str:
    from ptxseg.experiments.ablation_tables import METRICS, read_ablation_csv, row_order

    rows = sorted(read_ablation_csv(folder / "ablation.csv"), key=row_order)
    body = []
    for r in rows:
        cells = [r["encoder"], r["aug"], int(as_float(r.get("n_seeds")))]
        for key in METRICS:
            mean, std = as_float(r.get(f"{key}_mean")), as_float(r.get(f"{key}_std"))
            digits = 1 if key in ("infer_ms", "mem_mb") else 4
            text = "–" if math.isnan(mean) else f"{mean:.{digits}f} ± {std:.{digits}f}"
            cells.append(Raw(f'<span class="nw">{esc(text)}</span>'))
        body.append(cells)
    return (
        f"<h2>Ablation: encoder × augmentation</h2><p class=meta>{esc(folder)}; mean ± std"
        " over seeds</p>"
        + table(["encoder", "aug", "seeds", *METRICS.values()], body, left=2)
        + png_file(folder / "ablation.png", "ablation bar chart")
        + evidence_sections.ablation_comparison(folder)
    )


def _minutes(seconds) -> str:
    value = as_float(seconds)
    return "–" if math.isnan(value) else f"{value / 60:.1f}"


CV_HEADERS = (
    "fold",
    "epochs",
    "best epoch",
    "val competition Dice (best epoch, 0.5)",
    "val competition Dice (averaged)",
    "training (min)",
    "OOF images",
    "OOF competition Dice",
    "OOF Dice (pooled)",
    "OOF Dice positives",
    "OOF ROC AUC",
)


def _oof_values(entry: dict) -> list:
    """The OOF columns of one fold (or the pooled row) of the cv table."""
    values = {name: v[1] for name, v in summary_metrics(entry).items()}
    counts = entry.get("counts") or {}
    return [
        counts.get("n_images", "–"),
        values.get("dice_per_image", math.nan),
        values.get("dice_pooled", math.nan),
        values.get("dice_positive_per_image", math.nan),
        values.get("roc_auc", math.nan),
    ]


def _fold_rows(folder: Path, n: int, oof: dict) -> list[list]:
    """One row a fold: its training (done.json) and its out-of-fold scores; then the pool."""
    by_fold = {int(f["fold"]): f for f in oof.get("folds", [])}
    rows = []
    for k in range(n):
        done = read_json(CvFolder(folder).fold(k).done, default=None)
        if done is None:
            rows.append([f"fold {k}", "not finished", *["–"] * 10])
            continue
        averaged = done.get("averaged") or {}
        rows.append(
            [
                Raw(f'<a href="#{esc(_anchor(f"fold{k}"))}">fold {k}</a>'),
                done.get("epochs_run", "–"),
                done.get("best_epoch", "–"),
                as_float(done.get("best_val_competition_dice")),
                as_float(averaged.get("val_competition_dice")),
                _minutes(done.get("wall_time_s")),
                *(_oof_values(by_fold[k]) if k in by_fold else ["–"] * 5),
            ]
        )
    if oof:
        rows.append(["pooled", "", "", "", "", "", *_oof_values(oof)])
    return rows


def cv_section(folder: Path) -> str:
    """The folds of a `ptxseg cv` folder side by side, the pooled out-of-fold row, and the
    ensemble's other evaluations."""
    spec = read_json(CvFolder(folder).spec, default=None) or {}
    n = int(spec.get("folds") or 0)
    oof = read_json(CvFolder(folder).oof.summary, default=None) or {}
    parts = [
        f"<h2>Cross-validation: {n} folds</h2><p class=meta>{esc(folder)}; config "
        f"{esc(spec.get('config'))}, overrides {esc(spec.get('overrides'))}</p>",
        table(list(CV_HEADERS), _fold_rows(folder, n, oof)),
        "<p>Validation columns come from training (each fold validated on itself, probability"
        " 0.5, model size). OOF columns score each fold's masks from the one model that did not"
        " train on it, at full size with the ensemble's operating point; the pooled row covers"
        " every fold.</p>",
    ]
    if not oof:
        parts.append(missing(f"no out-of-fold evaluation in {folder}/eval/oof (run ptxseg cv)"))
    else:
        parts.append(
            f"<p>Ensemble operating point: {esc(oof.get('operating_point_description'))}"
            f" ({esc(oof.get('operating_point_source'))}).</p>"
        )
    for split, eval_dir in find_evals(folder).items():
        if split != "oof":
            parts.append(metrics_section(f"{split} (ensemble)", eval_dir))
    return "".join(parts)


def _anchor(name: str) -> str:
    return "run-" + re.sub(r"[^A-Za-z0-9_-]+", "-", name)


# --------------------------------------------------------------------------- the document


def render_report(root: Path) -> str:
    """The HTML text of the report for a run, grid, or folder of them."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root} is not a folder: expected a run, grid or demo folder")
    found = discover(root)
    runs, grids, benches = found["runs"], found["grids"], found["benchmarks"]
    cvs = found["cvs"]
    sections = []
    if not (runs or grids or benches or cvs):
        sections.append(
            missing(
                f"nothing to report in {root}: expected a run folder (config.yaml + metrics.csv), "
                "a grid folder (ablation.csv), a cv folder (cv.json) or a benchmark folder "
                "(benchmark.csv)"
            )
        )
    if len(runs) > 1 or (runs and any(r.evals for r in runs)):
        sections.append(runs_overview(runs))
        sections.append(_guard(evidence_sections.paired_comparison_section, runs))
    for folder in benches:
        sections.append(_guard(benchmark_section, folder))
    for folder in grids:
        sections.append(_guard(ablation_section, folder))
    for folder in cvs:
        sections.append(_guard(cv_section, folder))
    for run in runs:
        sections.append(_guard(run_section, run))
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    nav = "".join(f'<a href="#{esc(_anchor(r.name))}">{esc(r.name)}</a>' for r in runs)
    return (
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
        f"<title>ptxseg report: {esc(root.name)}</title><style>{CSS}</style></head><body><main>"
        f"<h1>Pneumothorax segmentation report</h1><p class=meta>{esc(root.resolve())} ·"
        f" generated {stamp} · {len(runs)} run(s), {len(grids)} grid(s),"
        f" {len(benches)} benchmark(s)</p>"
        + (f"<nav>{nav}</nav>" if len(runs) > 1 else "")
        + "".join(sections)
        + "</main></body></html>\n"
    )


def _guard(render, item) -> str:
    """A section that cannot be rendered says why; the rest of the report still renders."""
    try:
        return render(item)
    except Exception as exc:  # noqa: BLE001 - a broken file must not sink the whole report
        where = getattr(item, "path", item)
        return missing(f"could not render {where}: {type(exc).__name__}: {exc}")


def write_html_report(root: Path, out: Path | None = None) -> Path:
    """Write `report.html` (into `out`, default `root`) atomically; returns its path."""
    root = Path(root)
    text = render_report(root)
    out_dir = Path(out) if out else root
    return atomic.write_text(out_dir / "report.html", text)
