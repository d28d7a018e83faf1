"""Metric names in PromQL expressions, without a PromQL parser (promtool is not installed here).

Strips what is not a metric name (strings, label matchers, grouping clauses, ranges, Grafana variables,
numbers), then every remaining identifier is a function (followed by `(`), a keyword, or a metric name. An
unknown function is an error too, so a typo cannot hide as a "function".
"""

from __future__ import annotations

import re

FUNCTIONS = frozenset(
    {
        "abs",
        "absent",
        "absent_over_time",
        "avg",
        "avg_over_time",
        "ceil",
        "changes",
        "clamp",
        "clamp_max",
        "clamp_min",
        "count",
        "count_over_time",
        "delta",
        "deriv",
        "floor",
        "group",
        "histogram_quantile",
        "idelta",
        "increase",
        "irate",
        "label_join",
        "label_replace",
        "last_over_time",
        "max",
        "max_over_time",
        "min",
        "min_over_time",
        "predict_linear",
        "quantile",
        "quantile_over_time",
        "rate",
        "resets",
        "round",
        "scalar",
        "sort",
        "sort_desc",
        "stddev",
        "sum",
        "sum_over_time",
        "time",
        "timestamp",
        "topk",
        "bottomk",
        "vector",
    }
)
KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset"}
)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_RANGE = re.compile(r"\[[^\]]*\]")
_VARIABLE = re.compile(r"\$\{?\w+\}?")
_IDENTIFIER = re.compile(r"(?<![\w.])([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?")


class PromQLError(ValueError):
    pass


def metric_names(expr: str) -> set[str]:
    """The metric names `expr` selects; PromQLError for an unknown function or unbalanced brackets."""
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub("", text)
    text = _GROUPING.sub(" ", text)
    text = _RANGE.sub("", text)
    text = _VARIABLE.sub("", text)
    if text.count("(") != text.count(")"):
        raise PromQLError(f"unbalanced parentheses in {expr!r}")
    names: set[str] = set()
    for match in _IDENTIFIER.finditer(text):
        word, call = match.group(1), match.group(2)
        if word in KEYWORDS:
            continue
        if call:
            if word not in FUNCTIONS:
                raise PromQLError(f"unknown function {word}() in {expr!r}")
        else:
            names.add(word)
    return names


def label_values(expr: str, label: str) -> set[str]:
    """Values a label is matched against (`label="v"` and each alternative of `label=~"a|b"`)."""
    values: set[str] = set()
    for op, value in re.findall(rf'\b{re.escape(label)}\s*(=~|=|!=|!~)\s*"([^"]*)"', expr):
        values.update(value.split("|") if op.endswith("~") else [value])
    return values
