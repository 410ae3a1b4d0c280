"""`xtp grid`: direct probing of one model on donor/recipient pairs, to one Parquet file."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from . import reference
from .cells import parse_cells
from .engines import load_engine

GRID_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("module", pa.string()),
    ("source_layer", pa.int32()),
    ("target_layer", pa.int32()),
    ("token_ids", pa.list_(pa.int32())),
    ("text", pa.string()),
])


def read_pairs(path: str) -> list[dict]:
    """Rows {"id", "donor", "recipient"} of a jsonl file; errors name file, line and field."""
    pairs, seen = [], set()
    with open(path, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{line_no}: bad JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{line_no}: expected a JSON object")
            for name in ("id", "donor", "recipient"):
                value = row.get(name)
                if name == "id" and isinstance(value, int):
                    value = row[name] = str(value)
                if not isinstance(value, str) or not value:
                    raise ValueError(f"{path}:{line_no}: field {name!r} must be a non-empty string")
            if row["id"] in seen:
                raise ValueError(f"{path}:{line_no}: field 'id' repeats {row['id']!r}")
            seen.add(row["id"])
            pairs.append(row)
    if not pairs:
        raise ValueError(f"{path}: no instances")
    return pairs


def grid_rows(pair_ids: list[str], results, module: str, tokenizer) -> list[dict]:
    return [
        {"id": pair_id, "module": module, "source_layer": r.cell.source_layer,
         "target_layer": r.cell.target_layer, "token_ids": r.token_ids,
         "text": tokenizer.decode(r.token_ids, skip_special_tokens=True)}
        for pair_id, cell_results in zip(pair_ids, results) for r in cell_results
    ]


def run_probe(args) -> None:
    if args.input:
        pairs = read_pairs(args.input)
    elif args.task:
        from .tasks import load_instances

        instances, errors = load_instances(args.task, args.lang, args.split, args.data_root)
        for error in errors:
            print(f"skipped: {error}")
        pairs = [{"id": i.id, "donor": i.donor, "recipient": i.recipient} for i in instances]
    else:
        raise ValueError("give --input FILE or --task NAME --lang LANG")
    if args.limit:
        pairs = pairs[:args.limit]
    if args.batch_size < 1:
        raise ValueError("--batch-size must be positive")
    name = "hf" if args.engine in ("fast", "reference") else args.engine
    engine = load_engine(name, args.model, args.dtype, args.attn_implementation,
                         trust_remote_code=args.trust_remote_code)
    tokenizer = engine.tokenizer
    cells = parse_cells(args.cells, engine.num_layers)
    rows = []
    for start in range(0, len(pairs), args.batch_size):
        batch = pairs[start:start + args.batch_size]
        donors = [p["donor"] for p in batch]
        recipients = [p["recipient"] for p in batch]
        if args.engine == "reference":
            results = reference.run_grid(engine.model, tokenizer, donors, recipients, cells, args.module,
                                         args.max_new_tokens)
        else:
            results = engine.run_grid(donors, recipients, cells, args.module, args.max_new_tokens,
                                      cells_per_chunk=args.cells_per_chunk)
        rows.extend(grid_rows([p["id"] for p in batch], results, args.module, tokenizer))
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=GRID_SCHEMA), args.output)
    print(f"wrote {len(rows)} rows ({len(pairs)} instances x {len(cells) + 1} cells incl. vanilla) "
          f"to {args.output}")
