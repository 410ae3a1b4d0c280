"""Cells of a search: which (source layer, target layer) pairs to run."""
from __future__ import annotations

from typing import NamedTuple


class Cell(NamedTuple):
    source_layer: int | None  # donor layer i; None for vanilla
    target_layer: int | None  # recipient layer j; None for vanilla


VANILLA = Cell(None, None)

def parse_cells(spec: str, num_layers: int) -> list[Cell]:
    """`full` (all L x L), `target-first` (j = 0, all i), or `I:J,I:J,...`.

    Indices may be negative (Python style, -1 = last layer); every index must lie in
    [-L, L).
    """
    spec = spec.strip()
    if spec == "full":
        return [Cell(i, j) for j in range(num_layers) for i in range(num_layers)]
    if spec == "target-first":
        return [Cell(i, 0) for i in range(num_layers)]
    cells = []
    for part in spec.split(","):
        try:
            i_text, j_text = part.split(":")
            i, j = int(i_text), int(j_text)
        except ValueError:
            raise ValueError(
                f"bad cell {part!r} in {spec!r}: expected full, target-first or I:J,I:J,..."
            ) from None
        for name, index in (("source layer", i), ("target layer", j)):
            if not -num_layers <= index < num_layers:
                raise ValueError(
                    f"{name} {index} in cell {part!r} is out of range for a model with "
                    f"{num_layers} layers (valid: 0..{num_layers - 1}, or negative from the end)"
                )
        cells.append(Cell(i % num_layers, j % num_layers))
    if len(set(cells)) != len(cells):
        raise ValueError(f"duplicate cells in {spec!r}")
    return cells
