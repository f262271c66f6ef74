"""Personal data out of captured traffic: presidio's analyzer finds it, its anonymizer replaces each finding
with a placeholder naming the entity (<EMAIL_ADDRESS>), before a row is stored (the gateway's traffic
writer, `distill traffic import`) or becomes a training example (flows/refresh.py).

Offline: presidio normally loads a spaCy NER model (en_core_web_lg), which cannot be downloaded here and
is not a PyPI package. The analyzer runs on a blank spaCy English pipeline (a tokenizer, no model) with
presidio's pattern recognisers, which carry their own validation (Luhn for cards, the IBAN checksum, the
phonenumbers library for phones, ipaddress for IPs). Names (PERSON) need an NER model: set
`privacy.ner_model` to an installed spaCy pipeline package; without one, names are not found. The e-mail
recogniser's domain check uses tldextract's bundled public-suffix snapshot, never a download.

Cost: building the engine takes seconds (spaCy import), so engines are built once per process and
configuration (`scrubber_for`) and shared; scrubbing a row costs milliseconds (benchmarks/privacy.py).
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

from core.config import PrivacyConfig

log = logging.getLogger("distill")

# The traffic columns that hold text a person wrote or that may quote it.
TEXT_FIELDS = ("request", "answer", "slm_answer", "slm_raw", "reference")
# Entities only the NER model of `privacy.ner_model` finds (presidio's SpacyRecognizer).
NER_ENTITIES = frozenset({"PERSON", "LOCATION", "NRP", "ORGANIZATION"})
# Pattern entities whose matches always contain a digit, '@' or ':' (e-mail, phone, card, IBAN, IPv4/IPv6):
# text with none of those three cannot hold them, so it skips the analyzer (labels, most answers).
_NEEDS_DIGIT_AT_COLON = frozenset({"EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "IP_ADDRESS"})

_engines: dict[tuple, tuple[Any, Any, frozenset[str]]] = {}
_scrubbers: dict[str, "Scrubber"] = {}
_lock = threading.Lock()


class PrivacyError(ValueError):
    """The privacy block cannot be honoured (an unknown entity, a missing NER model); says which key."""


def _offline_email_recognizer():
    """presidio's EmailRecognizer with its domain check on tldextract's bundled suffix list (no fetch)."""
    import tldextract
    from presidio_analyzer.predefined_recognizers import EmailRecognizer

    extract = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)

    class OfflineEmailRecognizer(EmailRecognizer):
        def validate_result(self, pattern_text: str):  # noqa: D102 - presidio's check, offline
            return extract(pattern_text).fqdn != ""

    return OfflineEmailRecognizer()


def _engine(ner_model: str | None, regions: tuple[str, ...]):
    """(analyzer, anonymizer, supported entities), built once per process and configuration."""
    key = (ner_model, regions)
    with _lock:
        if key in _engines:
            return _engines[key]
        import spacy
        from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
        from presidio_analyzer.nlp_engine import SpacyNlpEngine
        from presidio_analyzer.predefined_recognizers import IbanRecognizer, PhoneRecognizer
        from presidio_anonymizer import AnonymizerEngine

        if ner_model:
            try:
                nlp = spacy.load(ner_model)
            except OSError as e:
                raise PrivacyError(f"privacy.ner_model: cannot load spaCy pipeline {ner_model!r} ({e}); install it as "
                                   f"a package or set ner_model: null (no names)") from None
        else:
            nlp = spacy.blank("en")

        class _Loaded(SpacyNlpEngine):
            def load(self) -> None:  # the pipeline above: never spacy.load of a model that is not here
                self.nlp = {"en": nlp}

        nlp_engine = _Loaded(models=[{"lang_code": "en", "model_name": ner_model or "blank:en"}])
        nlp_engine.load()
        registry = RecognizerRegistry(supported_languages=["en"])
        plog = logging.getLogger("presidio-analyzer")
        level = plog.level
        plog.setLevel(logging.ERROR)  # one warning per non-English recogniser skipped: noise
        try:
            registry.load_predefined_recognizers(languages=["en"], nlp_engine=nlp_engine)
        finally:
            plog.setLevel(level)
        for name in ("EmailRecognizer", "PhoneRecognizer", "IbanRecognizer",
                     *(() if ner_model else ("SpacyRecognizer",))):
            registry.remove_recognizer(name)
        registry.add_recognizer(_offline_email_recognizer())
        registry.add_recognizer(PhoneRecognizer(supported_regions=regions))
        # The IBAN recogniser with its own flags: under the registry's IGNORECASE its groups of four also take
        # the next lower-case word ("DE89 3704 ... 00 thanks"), the checksum then fails and the IBAN is missed.
        registry.add_recognizer(IbanRecognizer())
        supported = frozenset(e for r in registry.recognizers for e in r.supported_entities)
        analyzer = AnalyzerEngine(nlp_engine=nlp_engine, registry=registry, supported_languages=["en"])
        _engines[key] = (analyzer, AnonymizerEngine(), supported)
        return _engines[key]


class Scrubber:
    """Replaces the configured entities in text, JSON text and traffic rows. Thread-safe; counts what it
    replaced (`found`: entity -> count)."""

    def __init__(self, cfg: PrivacyConfig):
        unknown_case = [e for e in cfg.entities if e != e.upper()]
        if unknown_case:
            raise PrivacyError(f"privacy.entities: {unknown_case} are not presidio entity names (upper case, e.g. "
                               f"EMAIL_ADDRESS)")
        ner = [e for e in cfg.entities if e in NER_ENTITIES]
        if ner and not cfg.ner_model:
            raise PrivacyError(f"privacy.entities: {ner} need an NER model; set privacy.ner_model to an installed "
                               f"spaCy pipeline (e.g. en_core_web_lg) or remove them")
        self.cfg = cfg
        self.analyzer, self.anonymizer, supported = _engine(cfg.ner_model, tuple(cfg.phone_regions))
        missing = sorted(set(cfg.entities) - supported)
        if missing:
            raise PrivacyError(f"privacy.entities: no recogniser for {missing}; known: {', '.join(sorted(supported))}")
        self.entities = list(cfg.entities)
        self._fast = set(self.entities) <= _NEEDS_DIGIT_AT_COLON
        from presidio_anonymizer.entities import OperatorConfig

        self._operators = {e: OperatorConfig("replace", {"new_value": f"<{e}>"}) for e in self.entities}
        self.found: dict[str, int] = {}
        self._count_lock = threading.Lock()

    def text(self, text: str) -> str:
        """`text` with every finding replaced by <ENTITY>; unchanged when nothing is found."""
        if not text or not self.entities:
            return text
        if self._fast and "@" not in text and ":" not in text and not any(c.isdigit() for c in text):
            return text
        found = self.analyzer.analyze(text, language="en", entities=self.entities, score_threshold=self.cfg.min_score)
        if not found:
            return text
        with self._count_lock:
            for r in found:
                self.found[r.entity_type] = self.found.get(r.entity_type, 0) + 1
        return self.anonymizer.anonymize(text, found, operators=self._operators).text

    def _json(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, list):
            return [self._json(v) for v in value]
        if isinstance(value, dict):
            return {k: self._json(v) for k, v in value.items()}
        return value

    def value(self, value: Any) -> Any:
        """A stored value: JSON text (function calls, extraction answers) has each string inside scrubbed
        and is written back as canonical JSON, so a placeholder never breaks its quoting; other text is
        scrubbed as text; non-text values are returned as given."""
        if not isinstance(value, str):
            return self._json(value) if isinstance(value, (dict, list)) else value
        head = value.lstrip()[:1]
        if head in ("{", "["):
            try:
                parsed = json.loads(value)
            except ValueError:
                return self.text(value)
            out = self._json(parsed)
            return value if out == parsed else json.dumps(out, ensure_ascii=False, separators=(",", ":"))
        return self.text(value)

    def row(self, row: dict[str, Any], fields: tuple[str, ...] = TEXT_FIELDS) -> dict[str, Any]:
        """A copy of `row` with its text fields scrubbed (the others as given)."""
        return {k: (self.value(v) if k in fields and v is not None else v) for k, v in row.items()}


def scrubber_for(cfg: PrivacyConfig | None) -> Scrubber | None:
    """The shared Scrubber of a privacy block (None when scrub is off). Defaults when `cfg` is None: on."""
    cfg = cfg if cfg is not None else PrivacyConfig()
    if not cfg.scrub:
        return None
    key = cfg.model_dump_json()
    with _lock:
        s = _scrubbers.get(key)
    if s is None:
        s = Scrubber(cfg)
        with _lock:
            s = _scrubbers.setdefault(key, s)
    return s


__all__ = ["NER_ENTITIES", "PrivacyError", "Scrubber", "TEXT_FIELDS", "scrubber_for"]


def scrub_rows(jobs: list[tuple[str, dict[str, Any]]]) -> list[tuple[dict[str, Any] | None, str | None]]:
    """Scrub rows' text fields: jobs are (PrivacyConfig as JSON, {field: text}); returns ({field: scrubbed text},
    None) or (None, why it could not be scrubbed) per job, in order. The Scrubber of each config is built once
    per process (scrubber_for's cache)."""
    from core.config import PrivacyConfig

    out: list[tuple[dict[str, Any] | None, str | None]] = []
    for cfg_json, row in jobs:
        try:
            s = scrubber_for(PrivacyConfig.model_validate_json(cfg_json))
            out.append((s.row(row) if s is not None else row, None))
        except Exception as e:
            out.append((None, f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"))
    return out


def serve(stdin=None, stdout=None) -> None:
    """The scrubbing worker (`python -m core.privacy`, started by gateway.traffic): one JSON line per batch in,
    [[cfg_json, {field: text}], ...], one JSON line out, [[row or null, error or null], ...]; ends at EOF."""
    import sys

    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    for line in stdin:
        try:
            out = scrub_rows([(c, r) for c, r in json.loads(line)])
        except Exception as e:  # a line that is not a batch: every row of it fails (closed), the worker lives on
            out = [[None, f"{type(e).__name__}: {str(e)[:200]}"]]
        stdout.write(json.dumps(out, ensure_ascii=True) + "\n")
        stdout.flush()


if __name__ == "__main__":
    serve()
