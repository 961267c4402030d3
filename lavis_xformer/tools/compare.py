"""Compare evaluation runs: one markdown table and one PNG bar chart, with the paper's numbers.

    python -m lavis_xformer.tools.compare RUN [RUN ...] --out DIR [--labels L1 L2 ...]
        [--paper matching|all|none] [--overwrite]

Each RUN is a run's ``output_dir`` (its ``latest`` job is read), a job directory, its
``result/`` folder or a metrics JSON (see ``results_io`` for what is read and how tolerantly).
Any variants and any benchmarks may be mixed: the report has one section per benchmark, with
a table of the overall scores and one table per question-type group where the benchmark has
them (VQAv2: yes/no, number, other; GQA: structural and semantic types; easy-VQA: yes/no,
color, shape), and the same as bar-chart panels. Beside the runs it lists the majority-answer
baseline when the metrics carry one, and the paper's reported numbers for that benchmark
(``configs/reference/paper_results.yaml``, with the table each comes from, whether the text
names that table and whether the row's LLM is inferred): by default only the paper's rows for
the variants being compared (``--paper matching``), or every row (``all``), or none. Rows
of the paper's ablation setting (8 A100s, smaller batches) and large-scale setting are kept
in tables of their own, apart from the main-setting rows; the paper's computational cost
(supplementary Table 7) closes the report. Each run row's source is its metrics file.

Writes ``DIR/comparison.md``, ``DIR/comparison.png`` and ``DIR/comparison.json`` (the numbers
behind both), and prints the markdown. A DIR that already holds one of them is refused before
any run is read, unless ``--overwrite`` is given. All three are made in memory first, then
each replaces its file atomically: a run that cannot be read or charted leaves DIR as it was.
"""
import argparse
import io
import json
import os
import sys
from collections import OrderedDict
from dataclasses import asdict

from lavis_xformer.tools.results_io import ResultsError, load_costs, load_paper, load_run

PAPER_MODES = ("matching", "all", "none")


# ------------------------------------------------------------------ tables

def _variant_parts(variant):
    return set(str(variant).split("+"))


def paper_rows(entry, variants, mode):
    """The paper's rows of one benchmark to show: all, none, or those whose variant is among
    ``variants`` (a variant 'concat+no_sa' matches rows of 'concat' and of 'no_sa';
    'clip_layer26' matches 'clip_layer')."""
    if entry is None or mode == "none":
        return []
    rows = entry.get("rows", [])
    if mode == "all":
        return rows
    wanted = set()
    for v in variants:
        for part in _variant_parts(v):
            wanted.add(part)
            if part.startswith("clip_layer"):
                wanted.add("clip_layer")
    return [r for r in rows if r.get("variant") in wanted]


def paper_label(row):
    bits = [b for b in (row.get("llm"), row.get("data")) if b]
    return "paper: %s%s" % (row["method"], " (%s)" % ", ".join(bits) if bits else "")


# Rows of these settings are not comparable with the main recipe's and get their own tables.
APART_SETTINGS = OrderedDict([
    ("ablation", "paper, ablation setting (8 A100s, batch 320 / 272; not comparable with the main setting)"),
    ("large_scale", "paper, large-scale setting (stage 2 on 14M + LAION-115M)"),
])


def paper_source(row):
    """Where a paper number comes from: its table, whether the text names that table (else
    the label is inferred), and whether the LLM name is inferred."""
    notes = ["table label: %s" % row.get("table_label", "text")]
    if row.get("llm") and row.get("llm_label"):
        notes.append("LLM: %s" % row["llm_label"])
    return "%s [%s]" % (row["table"], "; ".join(notes))


def _paper_table_rows(prows, keep):
    out = []
    for p in prows:
        values = {m: v for m, v in p["metrics"].items() if keep(m)}
        if values:
            out.append({"label": paper_label(p), "kind": "paper", "variant": p.get("variant"),
                        "setting": p.get("setting", "main"), "source": paper_source(p),
                        "values": values})
    return out


def build_tables(results, paper, mode="matching"):
    """Per benchmark: {"overall": table, <group>: table, and "<table> / <setting>" tables for
    the paper's rows of an ablation or large-scale setting, kept apart from the main-setting
    rows}; a table is {"columns": [...], "rows": [{"label", "kind" (run|baseline|paper),
    "source" (a run's metrics file, a paper row's table), "values": {col: v}}]}."""
    by_bench = OrderedDict()
    for r in results:
        by_bench.setdefault(r.benchmark, []).append(r)
    report = OrderedDict()
    for bench, runs in by_bench.items():
        entry = paper.get(bench)
        type_groups = (entry or {}).get("types", {}) or {}
        typed = {m for names in type_groups.values() for m in names}
        prows_all = paper_rows(entry, [r.variant for r in runs], mode)
        prows = [p for p in prows_all if p.get("setting", "main") not in APART_SETTINGS]
        apart = OrderedDict((s, [p for p in prows_all if p.get("setting") == s]) for s in APART_SETTINGS)
        splits = {r.split for r in runs}
        labels = [r.label for r in runs]
        tables = OrderedDict()

        # overall
        columns = []
        for m in (entry or {}).get("metrics", []):
            if m not in typed and (any(m in r.metrics for r in runs) or any(m in p["metrics"] for p in prows)):
                columns.append(m)
        for r in runs:
            columns += [m for m in r.metrics if m not in columns]
        rows = []
        for r in runs:
            label = r.label if labels.count(r.label) == 1 and len(splits) == 1 else "%s [%s]" % (r.label, r.split)
            rows.append({"label": label, "kind": "run", "variant": r.variant, "model": r.model,
                         "source": r.source, "values": dict(r.metrics)})
        for p in [p for rows_ in apart.values() for p in rows_]:  # columns of apart rows too
            columns += [m for m in p["metrics"] if m not in typed and m not in columns]
        baseline = next((r.baseline for r in runs if r.baseline), None)
        if baseline:
            rows.append({"label": 'majority baseline ("%s")' % baseline.get("answer"), "kind": "baseline",
                         "source": "train split's most frequent answer", "values": dict(baseline["metrics"])})
        rows += _paper_table_rows(prows, lambda m: m not in typed)
        tables["overall"] = {"columns": columns, "rows": rows}
        for setting, srows in apart.items():
            srows = _paper_table_rows(srows, lambda m: m not in typed)
            if srows:
                tables["overall / %s" % setting] = {"columns": columns, "rows": srows,
                                                    "title": APART_SETTINGS[setting]}

        # per question-type group
        groups = list(OrderedDict.fromkeys([g for r in runs for g in r.groups] + list(type_groups)))
        for group in groups:
            columns = list(type_groups.get(group, []))
            for r in runs:
                columns += [t for t in r.groups.get(group, {}) if t not in columns]
            rows = []
            for r, row in zip(runs, tables["overall"]["rows"]):
                rows.append(dict(row, values=dict(r.groups.get(group, {}))))
            if baseline and baseline.get("groups", {}).get(group):
                rows.append({"label": 'majority baseline ("%s")' % baseline.get("answer"), "kind": "baseline",
                             "source": "train split's most frequent answer",
                             "values": dict(baseline["groups"][group])})
            in_group = type_groups.get(group, [])
            rows += _paper_table_rows(prows, lambda t: t in in_group)
            if any(row["values"] for row in rows if row["kind"] == "run") or group in type_groups:
                tables[group] = {"columns": columns, "rows": rows}
                for setting, srows in apart.items():
                    srows = _paper_table_rows(srows, lambda t: t in in_group)
                    if srows:
                        tables["%s / %s" % (group, setting)] = {
                            "columns": columns, "rows": srows, "title": APART_SETTINGS[setting]}
        report[bench] = {"splits": sorted(splits), "note": (entry or {}).get("note"),
                         "has_paper": entry is not None, "tables": tables}
    return report


def _fmt(value):
    return "" if value is None else "%.2f" % value


def markdown(report, mode, costs=None):
    lines = ["# Comparison of evaluation runs", ""]
    runs = OrderedDict()
    for bench in report.values():
        for row in bench["tables"]["overall"]["rows"]:
            if row["kind"] == "run":
                runs.setdefault(row["label"], row)
    lines += ["| run | variant | model | results |", "|---|---|---|---|"]
    for label, row in runs.items():
        lines.append("| %s | %s | %s | `%s` |" % (label, row["variant"], row["model"], row["source"]))
    lines.append("")
    for name, bench in report.items():
        split = ", ".join(s for s in bench["splits"] if s)
        lines += ["## %s%s" % (name, " (%s)" % split if split else ""), ""]
        if bench["note"]:
            lines += ["_%s_" % bench["note"], ""]
        if not bench["has_paper"]:
            lines += ["_The paper reports no numbers for this benchmark._", ""]
        elif mode != "none" and not any(r["kind"] == "paper" for t in bench["tables"].values() for r in t["rows"]):
            lines += ["_The paper reports this benchmark, but not for these variants (--paper all "
                      "lists every row)._", ""]
        for group, table in bench["tables"].items():
            lines += ["### %s" % table_title(group, table), ""]
            lines.append("| | " + " | ".join(table["columns"]) + " | source |")
            lines.append("|---|" + "---:|" * len(table["columns"]) + "---|")
            for row in table["rows"]:
                label = "_%s_" % row["label"] if row["kind"] != "run" else "**%s**" % row["label"]
                lines.append("| %s | %s | %s |" % (
                    label, " | ".join(_fmt(row["values"].get(c)) for c in table["columns"]),
                    "`%s`" % row["source"] if row["kind"] == "run" else row["source"]))
            lines.append("")
    if mode != "none" and costs:
        lines += ["## Computational cost (paper, %s)" % costs["table"], ""]
        if costs.get("note"):
            lines += ["_%s_" % costs["note"], ""]
        lines.append("| | " + " | ".join(costs["columns"]) + " | source |")
        lines.append("|---|" + "---:|" * len(costs["columns"]) + "---|")
        for row in costs["rows"]:
            lines.append("| _paper: %s_ | %s | %s [table label: %s] |" % (
                row["method"], " | ".join(str(row["values"].get(c, "")) for c in costs["columns"]),
                costs["table"], costs.get("table_label", "text")))
        lines += ["", "This project's own measurements: bench/ (python -m bench) and its results "
                  "in bench/results/.", ""]
    lines.append("Paper numbers: %s (rows shown: %s). Sources: a run's metrics file; a paper row's "
                 "table, with whether the text names that table and whether its LLM is inferred." % (
                     "lavis_xformer/configs/reference/paper_results.yaml", mode))
    return "\n".join(lines) + "\n"


def table_title(group, table):
    base = group.split(" / ")[0]
    title = "overall" if base == "overall" else "per %s" % base.replace("_", " ")
    return "%s: %s" % (title, table["title"]) if table.get("title") else title


# ------------------------------------------------------------------ chart

def bar_chart(report, path):
    """One panel per benchmark table; bars per column (metric or question type), one per row:
    runs solid, the baseline grey, the paper's rows hatched. ``path``: a file name or a
    binary file."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(name, group, table) for name, bench in report.items()
              for group, table in bench["tables"].items() if table["columns"]]
    if not panels:
        raise ResultsError("nothing to plot: no metric in any of the runs")
    fig, axes = plt.subplots(len(panels), 1, figsize=(11, 3.6 * len(panels)), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    # one colour per run across all panels; the paper's rows hatched, in the colours after them
    run_labels = list(OrderedDict.fromkeys(r["label"] for _, _, t in panels for r in t["rows"] if r["kind"] == "run"))
    for ax, (name, group, table) in zip(axes[:, 0], panels):
        rows = [r for r in table["rows"] if r["values"]]
        width = min(0.8 / max(1, len(rows)), 0.25)
        paper_i = 0
        for i, row in enumerate(rows):
            xs = [j + (i - (len(rows) - 1) / 2) * width for j in range(len(table["columns"]))]
            ys = [row["values"].get(c, 0.0) or 0.0 for c in table["columns"]]
            if row["kind"] == "run":
                style = {"color": colors[run_labels.index(row["label"]) % len(colors)]}
            elif row["kind"] == "baseline":
                style = {"color": "0.6"}
            else:
                style = {"color": "white", "hatch": "//",
                         "edgecolor": colors[(len(run_labels) + paper_i) % len(colors)]}
                paper_i += 1
            ax.bar(xs, ys, width=width, label=row["label"], **style)
        ax.set_xticks(range(len(table["columns"])))
        ax.set_xticklabels(table["columns"])
        ax.set_title("%s: %s" % (name, table_title(group, table)), fontsize=9)
        ax.set_ylabel("score")
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)
    return path


# ------------------------------------------------------------------ command

OUTPUTS = tuple("comparison.%s" % ext for ext in ("md", "png", "json"))


def check_out(out_dir, overwrite=False):
    """A finished comparison is replaced only when asked to."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ResultsError("--out %s is a file; give a folder for %s" % (out_dir, ", ".join(OUTPUTS)))
    existing = [os.path.join(out_dir, name) for name in OUTPUTS
                if os.path.lexists(os.path.join(out_dir, name))]
    if existing and not overwrite:
        raise ResultsError("%s exists; pass --overwrite to replace the comparison in %s, or give "
                           "another --out" % (existing[0], out_dir))


def _replace(path, data):
    """Write ``data`` (bytes) to ``path`` atomically: a temporary file renamed over it."""
    tmp = "%s.tmp%d" % (path, os.getpid())
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def compare(paths, out_dir, labels=None, mode="matching", paper_file=None, overwrite=False):
    """Read the runs, write comparison.{md,png,json} into ``out_dir`` (which must not hold
    them unless ``overwrite``); returns the report."""
    check_out(out_dir, overwrite)
    if mode not in PAPER_MODES:
        raise ResultsError("--paper must be one of %s, got %r" % (", ".join(PAPER_MODES), mode))
    if labels and len(labels) != len(paths):
        raise ResultsError("--labels gives %d labels for %d runs; give one per run, in order"
                           % (len(labels), len(paths)))
    paper = load_paper(paper_file) if paper_file else load_paper()
    costs = load_costs(paper_file) if paper_file else load_costs()
    results = []
    for i, path in enumerate(paths):
        results += load_run(path, label=labels[i] if labels else None, paper=paper)
    report = build_tables(results, paper, mode)
    text = markdown(report, mode, costs)
    png = io.BytesIO()
    bar_chart(report, png)
    numbers = json.dumps({"results": [asdict(r) for r in results], "report": report,
                          "paper_costs": costs if mode != "none" else None}, indent=1)
    os.makedirs(out_dir, exist_ok=True)
    for name, data in zip(OUTPUTS, (text.encode("utf-8"), png.getvalue(), numbers.encode("utf-8"))):
        _replace(os.path.join(out_dir, name), data)
    return report, text


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m lavis_xformer.tools.compare",
        description="Compare evaluation runs (any variants, any benchmarks) in one markdown "
                    "table and one bar chart, beside the X-Former paper's reported numbers.")
    parser.add_argument("runs", nargs="+", metavar="RUN",
                        help="a run's output_dir (its `latest` job), a job directory, its result/ "
                             "folder, or a metrics JSON file")
    parser.add_argument("--out", required=True, help="folder for comparison.md/.png/.json")
    parser.add_argument("--labels", nargs="+", help="one label per run (default: its variant)")
    parser.add_argument("--paper", default="matching", choices=PAPER_MODES,
                        help="the paper's rows to show: those of the compared variants (default), all, none")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the comparison files that --out already holds")
    args = parser.parse_args(argv)
    try:
        _, text = compare(args.runs, args.out, args.labels, args.paper, overwrite=args.overwrite)
    except ResultsError as e:
        print("error: %s" % e, file=sys.stderr)
        raise SystemExit(2)
    print(text)
    print("wrote %s" % ", ".join(os.path.join(args.out, name) for name in OUTPUTS))


if __name__ == "__main__":
    main()
