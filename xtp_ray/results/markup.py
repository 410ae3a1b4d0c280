"""HTML building blocks the report's sections share (the report, its "Left out" section, the history page)."""
from __future__ import annotations

import html


def html_table(header: list[str], rows: list[list[str]], summary_rows: int = 0) -> str:
    """A scrollable table: header cells escaped here, row cells already HTML; the last `summary_rows` rows
    styled as summaries."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = []
    for k, row in enumerate(rows):
        css = ' class="summary"' if k >= len(rows) - summary_rows else ""
        body.append(f"<tr{css}>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>")
    return f"<div class=\"scroll\"><table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"
