"""Per-hop latency as `bench --rpc` prints it beside the pp/tg table."""

from __future__ import annotations


def take_hop_rows(model, test: str) -> list[dict]:
    """The hop and compute times of the passes since the last call, labelled with test; then reset.

    Empty for a model that is not distributed."""
    hops = getattr(model, "hops", None)
    if hops is None:
        return []
    rows = [{"test": test, **row} for row in model.hop_summary()]
    hops.reset()
    return rows


def stage_legend(model) -> str:
    """w1 = tcp://HOST:PORT (layers 0-14, file), … for the table's names."""
    parts = []
    for name, h in zip(model.stage_names(), getattr(model, "stages", []), strict=False):
        source = "received" if h.source == "received" else "own file"
        parts.append(f"{name} = {h.address} (layers {h.stage.layers.start}-{h.stage.layers.stop - 1}, {source})")
    return "; ".join(parts)


def hop_table(rows: list[dict], legend: str = "") -> str:
    """Markdown: test, pass kind, link or stage, median and mean milliseconds, passes measured."""
    if not rows:
        return ""
    header = ["test", "pass", "hop / stage", "median ms", "mean ms", "passes"]
    body = [[r["test"], "prompt" if r["kind"] == "prompt" else "1 token", r["what"], f"{r['median_ms']:.2f}",
             f"{r['mean_ms']:.2f}", str(r["passes"])] for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(header)]
    right = {3, 4, 5}

    def line(cells):
        return "| " + " | ".join(c.rjust(w) if i in right else c.ljust(w)
                                 for i, (c, w) in enumerate(zip(cells, widths, strict=True))) + " |"

    rule = "| " + " | ".join(("-" * (w - 1) + ":") if i in right else "-" * w for i, w in enumerate(widths)) + " |"
    text = "\n".join([line(header), rule, *(line(b) for b in body)]) + "\n"
    return (f"\n{legend}\n\n" if legend else "\n") + text
