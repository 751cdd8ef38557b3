"""Conditional expressions of DSC/FDF `!if`/`!elseif` (EDK II DSC spec, 'Expressions'), evaluated
without eval: literals TRUE/FALSE, numbers, "strings" and bare words (strings too); NOT/!, ==/!=/EQ/NE, <, >, <=, >=
(LT, GT,
LE, GE), AND/&&, OR/||, parentheses. An undefined macro is the empty string; a PCD (TokenSpace.Name)
is unknown and compares as the empty string; a malformed expression is false."""

from __future__ import annotations

import re

_TOKEN = re.compile(
    r'\s*(?:(?P<str>"[^"]*")|(?P<num>0[xX][0-9a-fA-F]+|\d+)|(?P<op>&&|\|\||==|!=|<=|>=|[()!<>])'
    r"|(?P<word>[A-Za-z_][\w.]*)|(?P<macro>\$\([A-Za-z0-9_]+\))|(?P<bad>\S))"
)
_WORDS = {"and": "&&", "or": "||", "not": "!", "eq": "==", "ne": "!=", "lt": "<", "gt": ">", "le": "<=", "ge": ">="}


class _Malformed(Exception):
    pass


def evaluate(expr: str) -> bool:
    """The truth of an expanded conditional expression (macros already replaced by values)."""
    toks = []
    for m in _TOKEN.finditer(expr):
        kind = m.lastgroup
        text = m.group(kind)
        if kind == "bad":
            return False
        if kind == "word" and text.lower() in _WORDS:
            kind, text = "op", _WORDS[text.lower()]
        toks.append((kind, text))
    try:
        p = _Parser(toks)
        v = p.disjunction()
        if p.i != len(toks):
            raise _Malformed
        return bool(v)
    except (_Malformed, RecursionError):  # RecursionError: parentheses nested beyond any DSC's
        return False


class _Parser:
    def __init__(self, toks):
        self.toks, self.i = toks, 0

    def _peek(self):
        return self.toks[self.i] if self.i < len(self.toks) else (None, None)

    def _take(self, op):
        if self._peek() == ("op", op):
            self.i += 1
            return True
        return False

    def disjunction(self):
        v = self.conjunction()
        while self._take("||"):
            w = self.conjunction()
            v = v or w
        return v

    def conjunction(self):
        v = self.negation()
        while self._take("&&"):
            w = self.negation()
            v = v and w
        return v

    def negation(self):
        if self._take("!"):
            return not self.negation()
        return self.comparison()

    def comparison(self):
        v = self.atom()
        for op in ("==", "!=", "<=", ">=", "<", ">"):
            if self._take(op):
                w = self.atom()
                if op in ("==", "!="):
                    return (v == w) == (op == "==")
                if type(v) is not type(w) or isinstance(v, bool):
                    raise _Malformed
                return {"<": v < w, ">": v > w, "<=": v <= w, ">=": v >= w}[op]
        return v

    def atom(self):
        kind, text = self._peek()
        self.i += 1
        if kind == "op" and text == "(":
            v = self.disjunction()
            if not self._take(")"):
                raise _Malformed
            return v
        if kind == "str":
            return text[1:-1]
        if kind == "num":  # 0x hex, else decimal (leading zeros too: int(_, 0) refused "01")
            if text[:2] in ("0x", "0X"):
                return int(text[2:], 16)
            if len(text) > 4300:  # Python converts no more decimal digits: no DSC has such a number
                raise _Malformed
            return int(text, 10)
        if kind == "macro":
            return ""  # undefined macro
        if kind == "word":
            low = text.lower()
            if low == "true":
                return True
            if low == "false":
                return False
            if "." in text:
                return ""  # a PCD: its value is not known here
            return text  # a bare word is a string: `$(CUSTOM_STACK_CHECK_LIB) == DYNAMIC` (2025.02)
        raise _Malformed
