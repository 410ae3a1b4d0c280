"""What a benchmark is to xtp-ray: a `Task` owns its splits and formats, its direction, templates,
family (the coarse setting comes with it, `FAMILIES`), and the metric it is scored by (`metrics.py`, by
name). Each benchmark is one module that registers one Task.

Sources, chosen by the split name:
- `sample` / `unseen`: the paper's release files (`xtransplant_release/`), instance for
  instance; prompts are the release strings, byte for byte (`load_release`).
- the original splits (`original_splits`): the dataset's own format, prompts built from the
  English template of SPEC 3 (`load_original`, over `read_records` and `build`).
A data root is a local directory, an s3:// URI, or `hf:PATH` (a `datasets` DatasetDict saved
with `save_to_disk`, rows in the original-format fields plus `lang`) or `hf:ORG/NAME` on the hub
where reachable.
"""
from __future__ import annotations

from .. import storage
from ..metrics import get_metric
from . import readers
from .instance import Instance, InstanceError, RowError
from .misalignment import drop_misaligned

RELEASE_SPLITS = ("sample", "unseen")
RELEASE_SOURCE = "YYF-Tommy/XTransplant"  # the paper's release (its data/ folder): the sample and unseen splits
# The paper's coarse setting per family: (module, (source layer, target layer)); "last" = L - 1. Every task of
# a family, built-in or own, runs its family's.
FAMILIES = {"understanding": ("attn", ("last", 0)), "generation": ("ffn", (0, 0)), "culture": ("ffn", (0, 0))}


class Task:
    name: str = ""
    source: str = ""  # the dataset its original splits come from (its hub name, e.g. apple/mkqa)
    files: str = ""  # where the original splits' files go under a data root ({split}: the split's name)
    family: str = ""  # understanding | generation | culture (`FAMILIES`): the paper's coarse settings and task types
    metric: str = ""  # the metric it is scored by (`metrics.get_metric`)
    donor_is_english: bool = True  # En -> non-En (the recipient in `lang` is scored); False: non-En -> En
    release_dir: str | None = None  # its directory in xtransplant_release/, where the release has it
    original_splits: tuple[str, ...] = ()
    template: str | None = None  # the English template of the original format
    offline_scaling: str | None = None  # "ID" or "OOD": its place in the paper's offline scaling table
    align_by_gold: bool = True  # parallel original files are checked for drift by their gold labels

    @property
    def coarse(self) -> tuple[str, tuple]:
        """(module, (source, target)) the paper fixes for its family; "last" = L - 1."""
        return FAMILIES[self.family]

    @property
    def metrics(self) -> tuple[str, ...]:
        """Per-row metrics beside `correct` (in the tables, report and results.json): its metric's."""
        return get_metric(self.metric).names

    @property
    def open_answer(self) -> bool:
        """No options: scored from generated text only (its metric's kind)."""
        return get_metric(self.metric).open_answer

    def splits(self) -> tuple[str, ...]:
        return (RELEASE_SPLITS if self.release_dir else ()) + self.original_splits

    def source_of(self, split: str) -> str:
        """The dataset a split comes from (`xtp tasks` names it where a root lacks the split)."""
        return RELEASE_SOURCE if self.release_dir and split in RELEASE_SPLITS else self.source

    def files_of(self, split: str) -> str:
        """Where a split's files go, relative to a local or s3:// data root."""
        if self.release_dir and split in RELEASE_SPLITS:
            return f"xtransplant_release/{self.release_dir}/{self.release_dir}_{split}/ (as the release lays it out)"
        return self.files.format(split=split)

    # ------------------------------------------------------------ languages

    def languages(self, split: str, root: str) -> list[str]:
        """The languages found for a split in a data root (unchecked names)."""
        if split in RELEASE_SPLITS:
            return [lang for lang in readers.languages_in(storage.join(self.release_base(root, split), "split"))
                    if lang != "all"]
        if root.startswith("hf:"):
            return sorted({str(lang) for lang in readers.hf_split(root[3:], split)["lang"]} - {"None"})
        return self.original_languages(split, root)

    def original_languages(self, split: str, root: str) -> list[str]:
        raise NotImplementedError

    def release_base(self, root: str, split: str) -> str:
        return storage.join(readers.release_root(root), self.release_dir or "?", f"{self.release_dir or '?'}_{split}")

    # ------------------------------------------------------------ instances

    def load(self, root: str, split: str, lang: str, errors: list[InstanceError]) -> list[Instance]:
        if split in RELEASE_SPLITS:
            return self.load_release(root, split, lang, errors)
        return self.load_original(root, split, lang, errors)

    def load_release(self, root: str, split: str, lang: str, errors: list[InstanceError]) -> list[Instance]:
        raise NotImplementedError

    def read_records(self, root: str, split: str, lang: str, errors) -> tuple[str, list[tuple[int, object]] | None]:
        """(source name, [(line, record)]) of one language in the original format; records None (one
        error naming the file) where the file cannot be read or parsed."""
        raise NotImplementedError

    def records(self, root: str, split: str, lang: str, errors) -> tuple[str, list[tuple[int, object]] | None]:
        if root.startswith("hf:"):
            return readers.hf_records(root[3:], split, lang)
        return self.read_records(root, split, lang, errors)

    def build(self, record: dict, lang: str) -> tuple[str, str, list[str], dict]:
        """(prompt, gold, options, extra) from one original-format record; RowError names the field."""
        raise NotImplementedError

    def build_record(self, record, lang: str) -> tuple[str, str, list[str], dict]:
        if not isinstance(record, dict):
            raise RowError(None, f"malformed row: expected the fields of a {self.name} record, got {record!r:.80}")
        return self.build(record, lang)

    def malformed(self, uri: str, reason: str, errors: list[InstanceError]) -> tuple[str, None]:
        """A data file that cannot be read as its format: one error, no records."""
        errors.append(InstanceError(uri, None, None,
                                    f"malformed {self.name} file: {reason}; its instances are left out"))
        return uri, None

    def pair_key(self, line: int, extra: dict):
        """What pairs a recipient record with its English donor record: the line, by default."""
        return line

    def label_words(self, lang: str) -> dict[str, str]:
        """Option label -> its word in `lang`, for the original format (none by default)."""
        return {}

    def check_original_language(self, lang: str) -> None:
        """Refuse (ValueError) a language the original format cannot pair."""

    def load_original(self, root: str, split: str, lang: str, errors: list[InstanceError]) -> list[Instance]:
        """Instances of the original format: the recipient's records in `lang`, each paired with the
        English record it translates (the donor), drifted pairs dropped and reported."""
        self.check_original_language(lang)
        donor_lang = "en"
        source, recipient_records = self.records(root, split, lang, errors)
        if recipient_records is None:
            return []
        donors, donor_source = {}, None
        if lang != donor_lang:
            donor_source, donor_records = self.records(root, split, donor_lang, errors)
            if donor_records is None:
                errors.append(InstanceError(source, None, None, f"left out whole: its parallel English file "
                                                                f"{donor_source} cannot be read"))
                return []
            donors = self._donors(donor_records, donor_source, errors)
        built = []
        for line, record in recipient_records:
            try:
                prompt, gold, options, extra = self.build_record(record, lang)
                key = self.pair_key(line, extra)
                if lang == donor_lang:
                    donor, donor_gold = prompt, gold
                elif key not in donors:
                    raise RowError(None, f"no parallel English instance in {donor_source}")
                else:
                    donor, donor_gold = donors[key]
            except RowError as exc:
                errors.append(InstanceError(source, line, exc.field, str(exc)))
                continue
            built.append((line, donor_gold, gold, donor, prompt, options, extra))
        keep = range(len(built))
        if lang != donor_lang and self.align_by_gold:
            keep = drop_misaligned([b[:5] for b in built], "English", source, errors)
        out = []
        for k in keep:
            line, _, gold, donor, prompt, options, extra = built[k]
            extra = {"template": "en", **{key: v for key, v in extra.items() if key != "qa_id"}}
            out.append(Instance(f"{self.name}/{split}/{lang}/{line - 1}", self.name, split, lang,
                                f"{donor_lang}->{lang}", donor, prompt, gold, options, self.label_words(lang), extra))
        return out

    def _donors(self, donor_records, source, errors) -> dict:
        donors = {}
        for line, record in donor_records:
            try:
                prompt, gold, _, extra = self.build_record(record, "en")
            except RowError as exc:
                errors.append(InstanceError(source, line, exc.field, str(exc)))
                continue
            donors[self.pair_key(line, extra)] = (prompt, gold)
        return donors

    # ------------------------------------------------------------ scoring

    def score(self, instance: Instance, text: str | None = None, option_logprobs: list[float] | None = None) -> dict:
        """{"correct": bool, ...metrics, "score": float} for one answer, by its metric: the generated text,
        or without text the argmax of the option log-probs (option tasks only)."""
        if text is None and (not instance.options or option_logprobs is None):
            raise ValueError(f"{self.name} needs generated text: it has no options to score by log-probs")
        return get_metric(self.metric).score(instance, text, option_logprobs)
