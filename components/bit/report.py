"""Human reports of a dataset analysis: Markdown and self-contained HTML (plots embedded).

Both formats render one list of sections, so they always say the same thing.
"""

from __future__ import annotations

import dataclasses
import html
from typing import Any

from components.bit import dataset, near_duplicates, storage
from components.bit.hyperrule import HyperRule, format_table
from components.bit.plots import png_base64
from components.bit.splits import balance_line

MAX_LISTED = 200


@dataclasses.dataclass
class Section:
    title: str
    paragraphs: list[str] = dataclasses.field(default_factory=list)
    table: list[list[str]] | None = None  # first row is the header
    preformatted: str | None = None
    pictures: list[tuple[str, list[str]]] = dataclasses.field(default_factory=list)  # HTML


def sections(stats: dict[str, Any], rule: HyperRule) -> list[Section]:
    decision = stats["resolution_decision"]
    totals = stats["totals"]
    summary = Section(
        "Dataset",
        [
            f"Source: {stats['source']['uri']} ({stats['source']['kind']}); "
            f"{len(stats['classes'])} classes; {totals['inputs']:,} images listed, "
            f"{totals['valid']:,} valid, {totals['flagged']:,} flagged, "
            f"{totals['ignored']:,} non-items ignored."
        ],
    )
    if not stats["source"]["has_splits"]:
        fractions = "/".join(f"{f:g}" for f in stats["source"]["split_fractions"])
        summary.paragraphs.append(
            f"The source has no splits: assigned per class by a stable hash order "
            f"({fractions}; near-duplicate groups kept whole)."
        )
    share = decision["share_below"]
    rule_section = Section(
        "BiT-HyperRule",
        [
            "Resolution decided from the median training image area, "
            f"{decision['median_train_area']:,.0f} px: {share:.1%} of training images are below "
            f"96*96 px ({decision['below_threshold']:,}), {1 - share:.1%} at or above "
            f"({decision['at_or_above_threshold']:,}) -> resize {decision['resize']}, "
            f"crop {decision['crop']}.",
            f"Schedule and MixUp from {rule.examples:,} valid training images.",
        ],
        preformatted=format_table(rule),
    )
    splits = list(stats["examples"])
    balance = [["class", *splits]]
    for label in stats["classes"]:
        balance.append(
            [label, *(str(stats["examples"][s]["per_class"].get(label, 0)) for s in splits)]
        )
    balance.append(["total", *(str(stats["examples"][s]["total"]) for s in splits)])
    points = ("min", "p5", "median", "p95", "max")
    sizes = [["", *points]] + [
        [name, *(f"{dist[k]:,.0f}" for k in points)] for name, dist in stats["dimensions"].items()
    ]
    formats = ", ".join(f"{k} {v:,}" for k, v in stats["formats"].items())
    modes = ", ".join(f"{k} {v:,}" for k, v in stats["modes"].items())
    flagged = Section(
        f"Flagged files ({totals['flagged']:,})", [] if stats["flagged"] else ["None."]
    )
    if stats["flagged"]:
        flagged.table = [["file", "label", "reason"]] + [
            [f["path"], f["label"], f["reason"]] for f in stats["flagged"][:MAX_LISTED]
        ]
        flagged.paragraphs = _more(len(stats["flagged"]))
    ignored = Section(f"Ignored: not dataset items ({totals['ignored']:,})")
    if stats["ignored"]:
        ignored.table = [["path", "reason"]] + [
            [i["path"], i["reason"]] for i in stats["ignored"][:MAX_LISTED]
        ]
        ignored.paragraphs = _more(len(stats["ignored"]))
    warnings = stats.get("warnings", [])
    return [
        summary,
        *(
            [Section(f"Warnings ({len(warnings)})", [f"{w}." for w in warnings])]
            if warnings
            else []
        ),
        rule_section,
        Section("Examples per split and class", _balance_text(stats), table=balance),
        Section(
            "Image sizes (valid images, px)",
            [f"Formats: {formats}.", f"Colour modes: {modes}."],
            table=sizes,
        ),
        *([drift_section(stats["drift"])] if "drift" in stats else []),
        *([near_section(stats)] if "near_duplicates" in stats else []),
        flagged,
        ignored,
    ]


def _balance_text(stats: dict[str, Any]) -> list[str]:
    """The split balance line (bittune's own splits), as analysis words it."""
    if "split_balance" not in stats:
        return []
    return [balance_line(stats["split_balance"]).capitalize() + "."]


def drift_section(drift: dict[str, Any]) -> Section:
    """Drift from the served model's data: one row per field with its statistic."""
    section = Section(f"Drift from the served model ({drift['served']})")
    if "note" in drift:
        section.paragraphs.append(drift["note"] + ".")
        return section
    section.paragraphs.append(drift["summary"] + ".")
    balance, resolution = drift["class_balance"], drift["resolution"]
    formats, flags = drift["formats"], drift["flag_rate"]
    changed = ", ".join(
        f"{what}: {', '.join(balance[key])}"
        for what, key in (("new", "new_classes"), ("vanished", "vanished_classes"))
        if balance[key]
    )
    section.table = [
        ["field", "statistic", "p-value", "drifted"],
        ["class balance", f"PSI {balance['psi']:.3f}; chi-square {balance['chi_square']:.1f}"
         + (f"; {changed}" if changed else ""), f"{balance['p_value']:.2g}",
         _yes(balance["drifted"])],
        ["resolution", f"KS D {resolution['ks_d']:.3f}", f"{resolution['p_value']:.2g}",
         _yes(resolution["drifted"])],
        ["format mix", f"PSI {formats['psi']:.3f}; chi-square {formats['chi_square']:.1f}",
         f"{formats['p_value']:.2g}", _yes(formats["drifted"])],
        ["flag rate", f"{flags['served']:.2%} -> {flags['new']:.2%}", f"{flags['p_value']:.2g}",
         _yes(flags["drifted"])],
    ]  # fmt: skip
    return section


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def near_section(stats: dict[str, Any]) -> Section:
    """Near-duplicates: how many, between which splits, what leaked, a few pairs shown."""
    near = stats["near_duplicates"]
    leaked = ", ".join(f"{n:,} {split}" for split, n in near["leaked"].items()) or "none"
    section = Section(
        f"Near-duplicates ({near['items_in_groups']:,} images in {near['groups']:,} groups)",
        [
            f"{near['hash']}; candidates when at most {near['max_distance']} bits differ, "
            f"near-duplicates when their pixels correlate at least "
            f"{near.get('calibration', {}).get('min_similarity', 0):.4f} (from the data) "
            f"({near['hashed']:,} images hashed, {near['too_small']:,} under "
            f"{near_duplicates.MIN_SIDE} px compared by content only, {near['not_decodable']:,} "
            "could not be decoded).",
            f"Held-out images with a near-duplicate in training (leaked): {leaked}. "
            f"Groups kept whole in one split: {near['placed_whole']:,} of {near['groups']:,} "
            "(splits the source fixed are kept).",
            f"Largest group: {near.get('largest_group', 0):,} images; groups too large to "
            f"place in one split without skewing it (reported, not moved): "
            f"{len(near.get('unplaced_groups', [])):,}.",
        ],
    )
    if near["pairs"]:
        section.table = [["splits", "pairs"]] + [[k, f"{v:,}"] for k, v in near["pairs"].items()]
    thumbnails = stats.get("near_duplicate_thumbnails") or [[] for _ in near["examples"]]
    for example, pictures in zip(near["examples"], thumbnails, strict=True):
        caption = (
            f"{example['a']} ({example['splits'][0]}) ~ {example['b']} "
            f"({example['splits'][1]}): {example['distance']} bits, "
            f"similarity {example.get('similarity', 0):.4f}"
        )
        section.pictures.append((caption, [p for p in pictures if p]))
    return section


def _more(count: int) -> list[str]:
    return [f"… and {count - MAX_LISTED:,} more (see stats.json)."] if count > MAX_LISTED else []


def markdown_report(stats: dict[str, Any], rule: HyperRule) -> str:
    lines = ["# Dataset analysis", ""]
    for section in sections(stats, rule):
        lines += [f"## {section.title}", ""]
        for paragraph in section.paragraphs:
            lines += [paragraph, ""]
        if section.preformatted:
            lines += ["```", section.preformatted, "```", ""]
        if section.table:
            header, *rows = section.table
            lines.append("| " + " | ".join(_md(c) for c in header) + " |")
            lines.append("|" + "---|" * len(header))
            lines += ["| " + " | ".join(_md(c) for c in row) + " |" for row in rows]
            lines.append("")
        if section.pictures:
            lines += [f"- {_md(caption)}" for caption, _ in section.pictures] + [""]
    return "\n".join(lines)


def _md(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def html_report(stats: dict[str, Any], rule: HyperRule) -> str:
    """A standalone page (no external URLs) with the class balance and resolution plots."""
    body = ["<h1>Dataset analysis</h1><div class='plots'>"]
    body.append(f'<img alt="class balance" src="data:image/png;base64,{_class_plot(stats)}">')
    body.append(f'<img alt="resolution histogram" src="data:image/png;base64,{_area_plot(stats)}">')
    body.append("</div>")
    body += sections_html(sections(stats, rule))
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em}"
        ".plots img{max-width:49%}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}"
    )
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>bittune dataset analysis</title>"
        f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n"
    )


def sections_html(parts: list[Section]) -> list[str]:
    """Sections as HTML: a heading each, then paragraphs, preformatted text, a table (first
    row the header) and pictures (base64 PNG or JPEG) with captions."""
    esc, body = html.escape, []
    for section in parts:
        body.append(f"<h2>{esc(section.title)}</h2>")
        body += [f"<p>{esc(p)}</p>" for p in section.paragraphs]
        if section.preformatted:
            body.append(f"<pre>{esc(section.preformatted)}</pre>")
        if section.table:
            header, *rows = section.table
            body.append("<table><tr>" + "".join(f"<th>{esc(c)}</th>" for c in header) + "</tr>")
            body += ["<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows]
            body.append("</table>")
        for caption, pictures in section.pictures:
            shown = "".join(f'<img alt="" src="{_data_uri(p)}">' for p in pictures)
            body.append(f"<figure>{shown}<figcaption>{esc(caption)}</figcaption></figure>")
    return body


def _data_uri(b64: str) -> str:
    kind = "png" if b64.startswith("iVBORw0KGgo") else "jpeg"  # the PNG signature in base64
    return f"data:image/{kind};base64,{b64}"


def _class_plot(stats: dict[str, Any]) -> str:
    classes = stats["classes"][:60]

    def draw(fig, ax):
        bottom = [0] * len(classes)
        for split, entry in stats["examples"].items():
            counts = [entry["per_class"].get(c, 0) for c in classes]
            ax.bar(range(len(classes)), counts, bottom=bottom, label=split)
            bottom = [b + c for b, c in zip(bottom, counts, strict=True)]
        ax.set_xticks(range(len(classes)), classes, rotation=90, fontsize=7)
        ax.set_title("Class balance (valid images)")
        ax.legend()

    return png_base64(draw)


def _area_plot(stats: dict[str, Any]) -> str:
    import numpy as np

    sides = np.sqrt(np.asarray(stats["area_samples"], dtype=np.float64))

    def draw(fig, ax):
        ax.hist(sides, bins=40, color="#4477aa")
        ax.axvline(96, color="#cc3311", linestyle="--", label="96 px (HyperRule threshold)")
        ax.set_xlabel("sqrt(height x width) of training images, px")
        ax.set_ylabel("images")
        ax.set_title("Resolution histogram")
        ax.legend()

    return png_base64(draw)


def write_reports(stats: dict[str, Any], rule: HyperRule, output_dir: str) -> None:
    markdown = storage.join(output_dir, dataset.REPORT_MARKDOWN)
    storage.write_text(markdown, markdown_report(stats, rule))
    storage.write_text(storage.join(output_dir, dataset.REPORT_HTML), html_report(stats, rule))
