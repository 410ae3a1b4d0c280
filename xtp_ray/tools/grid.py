"""`xtp grid`: direct probing of one model on donor/recipient pairs, to one Parquet file."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ..cells import parse_cells
from ..engine import reference
from ..engine.load import load_engine
from ..names import check_positive

GRID_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("module", pa.string()),
    ("source_layer", pa.int32()),
    ("target_layer", pa.int32()),
    ("token_ids", pa.list_(pa.int32())),
    ("text", pa.string()),
])


def read_pairs(path: str) -> tuple[list[dict], list[str]]:
    """Rows {"id", "donor", "recipient"} of a jsonl file, and one message per line left out (naming
    file, line and field); the good lines go on. A file that cannot be read at all is an error."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"--input {path}: no such file") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"--input {path}: not UTF-8 (byte 0x{exc.object[exc.start]:02x} at offset "
                         f"{exc.start})") from None
    pairs, left_out, seen = [], [], set()
    for line_no, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            left_out.append(f"{path}:{line_no}: bad JSON ({exc.msg})")
            continue
        if not isinstance(row, dict):
            left_out.append(f"{path}:{line_no}: expected a JSON object")
            continue
        problem = None
        for name in ("id", "donor", "recipient"):
            value = row.get(name)
            if name == "id" and isinstance(value, int) and not isinstance(value, bool):
                value = row[name] = str(value)
            if not isinstance(value, str) or not value.strip():
                problem = f"{path}:{line_no}: field {name!r} must be a non-empty string"
                break
        if problem is None and row["id"] in seen:
            problem = f"{path}:{line_no}: field 'id' repeats {row['id']!r}"
        if problem:
            left_out.append(problem)
            continue
        seen.add(row["id"])
        pairs.append(row)
    return pairs, left_out


def grid_rows(pair_ids: list[str], results, module: str, tokenizer) -> list[dict]:
    return [
        {"id": pair_id, "module": module, "source_layer": r.cell.source_layer,
         "target_layer": r.cell.target_layer, "token_ids": r.token_ids,
         "text": tokenizer.decode(r.token_ids, skip_special_tokens=True)}
        for pair_id, cell_results in zip(pair_ids, results) for r in cell_results
    ]


def _open_output(path: str) -> tuple[Path, pq.ParquetWriter]:
    """A writer on `<output>.partial`, opened before the model loads: an unwritable output fails first,
    and the rows done so far are on disk if the run stops."""
    target = Path(path)
    if target.is_dir():
        raise ValueError(f"--output {path}: is a directory (expected a Parquet file name)")
    partial = target.with_name(target.name + ".partial")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        return partial, pq.ParquetWriter(str(partial), GRID_SCHEMA)
    except OSError as exc:
        raise ValueError(f"--output {path}: cannot write there ({exc.strerror or exc})") from None


def run_grid(args) -> int:
    """Exit code: 0, or 2 when rows of a --task were left out (the rest is written)."""
    check_positive(limit=args.limit, batch_size=args.batch_size, cells_per_chunk=args.cells_per_chunk,
                   max_new_tokens=args.max_new_tokens)
    left_out = []
    if args.input:
        pairs, left_out = read_pairs(args.input)
    elif args.task:
        from ..tasks import load_instances

        instances, left_out = load_instances(args.task, args.lang, args.split, args.data_root)
        for note in (e for e in left_out if e.note):
            print(f"note: {note}", file=sys.stderr)
        left_out = [e for e in left_out if not e.note]
        pairs = [{"id": i.id, "donor": i.donor, "recipient": i.recipient} for i in instances]
    else:
        raise ValueError("give --input FILE or --task NAME --lang LANG")
    if args.limit:
        pairs = pairs[:args.limit]
    if not pairs:
        raise ValueError(f"no instances to run ({len(left_out)} left out): nothing written to {args.output}")
    partial, writer = _open_output(args.output)
    name = "hf" if args.engine in ("fast", "reference") else args.engine
    try:
        engine = load_engine(name, args.model, args.dtype, args.attn_implementation,
                             trust_remote_code=args.trust_remote_code)
        tokenizer = engine.tokenizer
        cells = parse_cells(args.cells, engine.num_layers)
        rows = 0
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
            batch_rows = grid_rows([p["id"] for p in batch], results, args.module, tokenizer)
            writer.write_table(pa.Table.from_pylist(batch_rows, schema=GRID_SCHEMA))
            rows += len(batch_rows)
    except BaseException:
        writer.close()
        if partial.stat().st_size and rows_written(partial):
            print(f"xtp grid: stopped; the rows done so far are in {partial}", file=sys.stderr)
        else:
            partial.unlink(missing_ok=True)
        raise
    writer.close()
    partial.replace(args.output)
    print(f"wrote {rows} rows ({len(pairs)} instances x {len(cells) + 1} cells incl. vanilla) to {args.output}")
    for error in left_out:
        print(f"left out: {error}", file=sys.stderr)
    return 2 if left_out else 0


def rows_written(path: Path) -> int:
    try:
        return pq.read_metadata(str(path)).num_rows
    except (OSError, pa.ArrowInvalid):
        return 0
