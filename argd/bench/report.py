"""Writing benchmark results: a Markdown table for people, JSON for machines, a PNG chart for the README.

The result dictionary is produced by `argd.bench.defense` / `argd.bench.speed`; this module only formats it,
so the same results can be re-rendered without re-running anything (`write_defense_report` is pure I/O).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# Display names of the defense columns, in table order. Keys are the method ids used in the results.
DEFENSE_LABELS: dict[str, str] = {
    "finetune": "Fine-tuning",
    "nad": "NAD",
    "fst": "FST",
    "ft-sam": "FT-SAM",
    "argd": "ARGD",
    "argd-reference": "ARGD (reference preset)",
}


def _pct(value: float | None) -> str:
    """A fraction as a percentage with two decimals; missing values as an en dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{100.0 * value:.2f}"


def _cell(metrics: dict[str, Any] | None) -> str:
    if not metrics:
        return "–"
    return f"{_pct(metrics.get('acc'))} / {_pct(metrics.get('asr'))}"


def defense_columns(results: dict[str, Any]) -> list[str]:
    """The defenses present in the results, in display order (known ones first, then any others)."""
    seen: list[str] = []
    for attack in results["attacks"].values():
        for name in attack.get("defenses", {}):
            if name not in seen:
                seen.append(name)
    known = [name for name in DEFENSE_LABELS if name in seen]
    return known + [name for name in seen if name not in DEFENSE_LABELS]


def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def summarise(results: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """Mean ACC, ASR and DER per defense (and for the backdoored models) over the attacks."""
    attacks = list(results["attacks"].values())
    summary: dict[str, dict[str, float | None]] = {
        "before": {
            "acc": _mean([a["backdoor"].get("acc") for a in attacks]),
            "asr": _mean([a["backdoor"].get("asr") for a in attacks]),
        }
    }
    for name in defense_columns(results):
        rows = [a["defenses"][name] for a in attacks if name in a.get("defenses", {})]
        summary[name] = {key: _mean([r.get(key) for r in rows]) for key in ("acc", "asr", "ra", "der")}
    return summary


def defense_markdown(results: dict[str, Any]) -> str:
    """The main table: one row per attack, ACC / ASR before and after each defense, and ARGD's DER."""
    columns = defense_columns(results)
    head = ["Attack", "Before"] + [DEFENSE_LABELS.get(c, c) for c in columns] + ["DER (ARGD)"]
    lines = [
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|",
    ]
    for attack, row in results["attacks"].items():
        cells = [attack, _cell(row["backdoor"])]
        cells += [_cell(row["defenses"].get(c)) for c in columns]
        cells.append(_pct(row["defenses"].get("argd", {}).get("der")))
        lines.append("| " + " | ".join(cells) + " |")
    summary = summarise(results)
    mean_cells = ["**mean**", _cell(summary["before"])]
    mean_cells += [_cell(summary[c]) for c in columns]
    mean_cells.append(_pct(summary.get("argd", {}).get("der")))
    lines.append("| " + " | ".join(mean_cells) + " |")
    text = "Cells are clean ACC / ASR in %.\n\n" + "\n".join(lines) + "\n"
    text += clean_model_line(results)
    if any("retune_floor" in row for row in results["attacks"].values()):
        text += "\n" + retune_markdown(results)
    if any(row.get("seeds") for row in results["attacks"].values()):
        text += "\n" + seeds_markdown(results)
    text += "\n" + wall_time_markdown(results)
    ablations = results.get("ablations")
    if ablations:
        text += "\n" + ablation_markdown(ablations)
    checks = results.get("checks")
    if checks:
        text += "\nTargets:\n\n" + "\n".join(
            f"- [{'x' if c['passed'] else ' '}] {c['name']}: {c['detail']}" for c in checks
        )
        text += "\n"
    return text


def _table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"


def clean_model_line(results: dict[str, Any]) -> str:
    """The clean model's ACC; one per group of rows when merged parts trained their own."""
    clean = results.get("clean_model")
    if not clean:
        return ""
    groups: dict[float | None, list[str]] = {}
    for attack, row in results["attacks"].items():
        groups.setdefault((row.get("clean_model") or clean).get("acc"), []).append(attack)
    if len(groups) <= 1:
        return f"\nClean model (no backdoor): ACC {_pct(clean.get('acc'))} %.\n"
    parts = [f"{_pct(acc)} % (rows {', '.join(rows)})" for acc, rows in groups.items()]
    return (
        "\nClean model (no backdoor): ACC " + "; ".join(parts) + ". The rows come from parts run on "
        "different machines, each with its own clean model and victims.\n"
    )


def retune_markdown(results: dict[str, Any]) -> str:
    """ASR after the retuning attack: the clean model's floor, then each cleansed model."""
    columns = defense_columns(results)
    rows, floors = [], []
    per_defense: dict[str, list[float | None]] = {c: [] for c in columns}
    for attack, row in results["attacks"].items():
        floor = (row.get("retune_floor") or {}).get("asr")
        floors.append(floor)
        cells = [attack, _pct(row["backdoor"].get("asr")), _pct(floor)]
        for c in columns:
            value = ((row["defenses"].get(c) or {}).get("retune") or {}).get("asr")
            per_defense[c].append(value)
            cells.append(_pct(value))
        rows.append(cells)
    rows.append(
        ["**mean**", _pct(summarise(results)["before"]["asr"]), _pct(_mean(floors))]
        + [_pct(_mean(per_defense[c])) for c in columns]
    )
    head = ["Attack", "Before", "Clean model (floor)"] + [DEFENSE_LABELS.get(c, c) for c in columns]
    return (
        "ASR in % after the retuning attack (5 epochs at lr 0.01 on the clean subset plus 5 triggered "
        "images labelled as the target):\n\n" + _table(head, rows)
    )


def _spread(stats: dict[str, float] | None) -> str:
    if not stats:
        return "–"
    return f"{_pct(stats['mean'])} ± {_pct(stats['std'])}"


def seeds_markdown(results: dict[str, Any]) -> str:
    """Mean ± standard deviation over the seeds of each repeated defense: ACC, ASR, retuned ASR."""
    names: list[str] = []
    for row in results["attacks"].values():
        for name in row.get("seeds") or {}:
            if name not in names:
                names.append(name)
    rows, seeds = [], None
    for attack, row in results["attacks"].items():
        if not row.get("seeds"):
            continue
        cells = [attack]
        for name in names:
            entry = row["seeds"].get(name) or {}
            seeds = entry.get("seeds", seeds)
            parts = [_spread(entry.get(key)) for key in ("acc", "asr", "retune_asr")]
            cells.append(" / ".join(parts))
        rows.append(cells)
    head = ["Attack"] + [DEFENSE_LABELS.get(n, n) for n in names]
    return (
        f"Seeds {', '.join(map(str, seeds or []))} (same victims and clean subset; mean ± standard deviation "
        "in points; cells are ACC / ASR / ASR after retuning, in %):\n\n" + _table(head, rows)
    )


def wall_time_markdown(results: dict[str, Any]) -> str:
    """Mean wall time of one cleanse per defense (teacher included, evaluation included)."""
    columns = defense_columns(results)
    cells = []
    for c in columns:
        times = [(row["defenses"].get(c) or {}).get("wall_seconds") for row in results["attacks"].values()]
        cells.append("–" if _mean(times) is None else f"{_mean(times):.0f}")
    head = ["", *[DEFENSE_LABELS.get(c, c) for c in columns]]
    return (
        "Wall time of one cleanse in seconds (mean over the rows; teacher and evaluations included):\n\n"
        + _table(head, [["seconds", *cells]])
    )


def ablation_markdown(ablations: dict[str, Any]) -> str:
    """One row per ARGD variant: ACC / ASR per attack and the means."""
    attacks: list[str] = []
    for variant in ablations.values():
        for attack in variant["attacks"]:
            if attack not in attacks:
                attacks.append(attack)
    head = ["Variant", *attacks, "mean ACC", "mean ASR"]
    lines = [
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|",
    ]
    for name, variant in ablations.items():
        per_attack = variant["attacks"]
        cells = [f"{name}: {variant.get('description', '')}".rstrip(": ")]
        cells += [_cell(per_attack.get(a)) for a in attacks]
        cells.append(_pct(_mean([m.get("acc") for m in per_attack.values()])))
        cells.append(_pct(_mean([m.get("asr") for m in per_attack.values()])))
        lines.append("| " + " | ".join(cells) + " |")
    return "Ablations (ARGD variants; cells are ACC / ASR in %):\n\n" + "\n".join(lines) + "\n"


def defense_chart(results: dict[str, Any], path: Path) -> None:
    """Grouped bars: ASR (top) and ACC (bottom) per defense for every attack."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    attacks = list(results["attacks"])
    series = ["before", *defense_columns(results)]
    labels = {"before": "Backdoored", **DEFENSE_LABELS}
    width = 0.8 / len(series)
    fig, axes = plt.subplots(2, 1, figsize=(max(6.0, 1.3 * len(attacks) + 2.0), 6.5), sharex=True)
    for ax, metric, title in ((axes[0], "asr", "ASR (%)"), (axes[1], "acc", "Clean ACC (%)")):
        for k, name in enumerate(series):
            values = []
            for attack in attacks:
                row = results["attacks"][attack]
                metrics = row["backdoor"] if name == "before" else row["defenses"].get(name, {})
                value = metrics.get(metric)
                values.append(100.0 * value if value is not None else 0.0)
            xs = [i + (k - (len(series) - 1) / 2) * width for i in range(len(attacks))]
            ax.bar(xs, values, width=width, label=labels.get(name, name))
        ax.set_ylabel(title)
        ax.set_ylim(0, 105)
        ax.grid(axis="y", alpha=0.3)
    clean = results.get("clean_model", {}).get("acc")
    if clean is not None:
        axes[1].axhline(100.0 * clean, color="black", linestyle="--", linewidth=0.8, label="Clean model")
    axes[1].set_xticks(range(len(attacks)), attacks)
    handles, names = axes[1].get_legend_handles_labels()
    fig.legend(handles, names, loc="upper center", ncols=min(len(names), 6), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def write_json(data: dict[str, Any], path: Path) -> None:
    """Indented, key-order-preserving JSON (NaN is written as null so that strict parsers accept it)."""

    def clean(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {str(k): clean(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [clean(v) for v in value]
        return value

    path.write_text(json.dumps(clean(data), indent=2, default=_json_default) + "\n")


def write_defense_report(results: dict[str, Any], out: Path) -> dict[str, Path]:
    """Write `defense.md`, `defense.json` and `defense.png` into `out`; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out / "defense.md", "json": out / "defense.json", "chart": out / "defense.png"}
    results = {**results, "summary": summarise(results)}
    paths["markdown"].write_text(defense_markdown(results))
    write_json(results, paths["json"])
    defense_chart(results, paths["chart"])
    return paths


def speed_markdown(results: dict[str, Any]) -> str:
    """Seconds per epoch, images per second and the ratio to the bare passes, one row per method."""
    rows = results["methods"]
    bare = rows.get("bare", {}).get("seconds_per_epoch")
    lines = [
        "| Method | s / epoch | images / s | × bare passes | × fine-tuning |",
        "|---|---:|---:|---:|---:|",
    ]
    finetune = rows.get("finetune", {}).get("seconds_per_epoch")
    for name, row in rows.items():
        sec = row["seconds_per_epoch"]
        ratio_bare = f"{sec / bare:.2f}" if bare else "–"
        ratio_ft = f"{sec / finetune:.2f}" if finetune else "–"
        label = (
            "bare passes (student fwd+bwd, teacher fwd)" if name == "bare" else DEFENSE_LABELS.get(name, name)
        )
        lines.append(f"| {label} | {sec:.3f} | {row['images_per_second']:.0f} | {ratio_bare} | {ratio_ft} |")
    s = results["settings"]
    head = (
        f"Device: {s['device']} ({s.get('device_name', '')}), {s['architecture']}, "
        f"{s['images']} images/epoch, batch {s['batch_size']}, median of {s['repeats']} epochs"
        f"{', AMP' if s.get('amp') else ''}, threads {s.get('threads')}.\n\n"
    )
    return head + "\n".join(lines) + "\n"


def write_speed_report(results: dict[str, Any], out: Path) -> dict[str, Path]:
    """Write `speed.md` and `speed.json` into `out`; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out / "speed.md", "json": out / "speed.json"}
    paths["markdown"].write_text(speed_markdown(results))
    write_json(results, paths["json"])
    return paths
