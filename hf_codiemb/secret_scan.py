"""Credential formats in text, by the rules of Yelp's maintained detector ``detect-secrets`` (used offline).

:func:`find_secret` runs ``detect-secrets``' pattern plugins (AWS, GitHub, GitLab, JWT, npm, Stripe, Slack, Twilio,
SendGrid, PyPI, OpenAI, Discord, Telegram, Mailchimp, Artifactory, Azure, IBM, SoftLayer, Square, private keys,
``user:password@`` URLs, ...) over a window of text, and its keyword rule (``password: ...``, ``api_key = "..."``,
``secret: ...``) with its own false-positive filters (templated values, ``$VARIABLES``, sequences, UUIDs, id-like
strings) on the files where assignments are meaningful. Its high-entropy rules and its public-IP rule are not used:
tokenizer vocabularies, hashes and versions in model cards would all be flagged. Nothing here calls a network
verifier, and no match is ever logged or returned: only the rule's name and the match's position.

What is scanned with which rules depends on the file kind (:func:`scan_kind`):

- ``"vocabulary"`` (``tokenizer.json``, ``vocab.*``, ``merges.txt``, sentencepiece/tiktoken models): pattern rules
  only (tens of thousands of random-looking words, and ``"password": 123`` entries in every vocabulary);
- ``"text"`` (cards, configs, result files, anything else): pattern and keyword rules.
"""

from __future__ import annotations

import fnmatch
import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

ScanKind = Literal["vocabulary", "text"]

#: Files that are token lists (random-looking strings by design): keyword rules off.
VOCABULARY_PATTERNS = (
    "tokenizer.json", "vocab.txt", "vocab.json", "merges.txt", "added_tokens.json", "*.model", "*.spm", "*.tiktoken",
    "sentencepiece*", "spiece*", "bpe*",
)  # fmt: skip
#: detect-secrets plugins not used: entropy rules flag vocabularies and hashes; public IPs are not secrets.
_UNUSED_PLUGINS = frozenset({"Base64HighEntropyString", "HexHighEntropyString", "IPPublicDetector", "KeywordDetector"})
#: Keyword rules by file kind: "key: value" without quotes in cards and YAML-like text, quoted values in JSON.
_QUOTED_KEYWORD_SUFFIXES = (".json", ".py", ".js", ".ts", ".java", ".swift", ".tf")


@dataclass(frozen=True)
class SecretMatch:
    """Where a rule matched (the offset of the match in the scanned text) and the rule's name; not the match."""

    rule: str
    offset: int


def scan_kind(path: str) -> ScanKind:
    """The rule set for a file (posix path relative to the pushed folder): ``"vocabulary"`` or ``"text"``."""
    name = path.rsplit("/", 1)[-1].lower()
    return "vocabulary" if any(fnmatch.fnmatchcase(name, p) for p in VOCABULARY_PATTERNS) else "text"


@functools.cache
def _pattern_plugins() -> tuple[tuple[str, tuple[re.Pattern[str], ...], object], ...]:
    """``(rule name, regexes, plugin)`` of every detect-secrets pattern plugin used (discovered, so a newer release's
    plugins are used too)."""
    from detect_secrets.core.plugins.util import get_mapping_from_secret_type_to_class
    from detect_secrets.plugins.base import RegexBasedDetector

    plugins = []
    for secret_type, plugin_class in sorted(get_mapping_from_secret_type_to_class().items()):
        if plugin_class.__name__ in _UNUSED_PLUGINS or not issubclass(plugin_class, RegexBasedDetector):
            continue
        plugin = plugin_class()
        plugins.append((f"{secret_type} (detect-secrets {plugin_class.__name__})", tuple(plugin.denylist), plugin))
    return tuple(plugins)


def _offset_of(text: str, secret: str, regexes: Sequence[re.Pattern[str]]) -> int:
    offset = text.find(secret)
    if offset >= 0:
        return offset
    for regex in regexes:  # a plugin that yields a group or a transformed match: where its regex matched
        match = regex.search(text)
        if match:
            return match.start()
    return 0


def _keyword_regexes(path: str) -> dict[re.Pattern[str], int]:
    from detect_secrets.plugins import keyword

    if path.lower().endswith(_QUOTED_KEYWORD_SUFFIXES):
        return keyword.QUOTES_REQUIRED_DENYLIST_REGEX_TO_GROUP
    return keyword.CONFIG_DENYLIST_REGEX_TO_GROUP


#: A cheap test for the keyword rule: lines without one of detect-secrets' keywords are not looked at.
_KEYWORD_HINT = re.compile(r"key|pass|pwd|secret|contrase", re.IGNORECASE)


def _keyword_match(text: str, path: str) -> SecretMatch | None:
    """The first line with a ``password: value``-style assignment that detect-secrets' filters keep."""
    from detect_secrets.filters import heuristic
    from detect_secrets.plugins.keyword import KeywordDetector

    detector = KeywordDetector()
    regexes = _keyword_regexes(path)
    offset = 0
    for line in text.splitlines(keepends=True):
        if _KEYWORD_HINT.search(line) and not heuristic.is_indirect_reference(line):
            for secret in detector.analyze_string(line.rstrip(), regexes):
                if not (
                    heuristic.is_templated_secret(secret)
                    or heuristic.is_prefixed_with_dollar_sign(secret)
                    or heuristic.is_sequential_string(secret)
                    or heuristic.is_potential_uuid(secret)
                    or heuristic.is_likely_id_string(secret, line)
                    or heuristic.is_not_alphanumeric_string(secret)
                ):
                    return SecretMatch(f"a '{_keyword_name(line)}' assignment (detect-secrets KeywordDetector)",
                                       offset + max(line.find(secret), 0))  # fmt: skip
        offset += len(line)
    return None


def _keyword_name(line: str) -> str:
    """Which of detect-secrets' keywords the line holds (a fixed word such as ``password``, never the value)."""
    from detect_secrets.plugins.keyword import DENYLIST

    match = re.search("|".join(DENYLIST), line, re.IGNORECASE)
    return match.group(0).lower() if match else "secret"


def find_secret(text: str, path: str) -> SecretMatch | None:
    """The first credential-looking match in ``text`` (a window of the file ``path``), by the rules of its kind.

    Args:
        text: the text to scan (a file decoded as latin-1 keeps every byte and its position).
        path: the file's path relative to the pushed folder (chooses the rules, see :func:`scan_kind`).
    """
    best: SecretMatch | None = None
    for rule, regexes, plugin in _pattern_plugins():
        for secret in plugin.analyze_string(text):
            offset = _offset_of(text, secret, regexes)
            if best is None or offset < best.offset:
                best = SecretMatch(rule, offset)
            break
    if scan_kind(path) == "text":
        keyword = _keyword_match(text, path)
        if keyword is not None and (best is None or keyword.offset < best.offset):
            best = keyword
    return best
