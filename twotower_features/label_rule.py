"""The label rule language: a small boolean expression over the interaction contract's columns.

A config file is untrusted input, so `label.rule` is data, never code. This module reads the
text into a small syntax tree of frozen dataclasses, or refuses it with a ``LabelRuleError``
that names the offending token and its position (1-based character) and says what is allowed.
It imports no Spark: the config checks a rule at load time, before any session starts, and
``labels.rule_column`` builds the Spark column from the tree with ``pyspark.sql.functions``,
so the user's text never reaches Spark's SQL parser. A rule means what the same text means to
Spark SQL (``F.expr``), with its literal types: ``1`` int, ``0.9`` decimal(1,1), ``1e-3`` double.

Grammar (keywords and function names are case-insensitive; precedence as in Spark SQL, lowest
first)::

    rule       := or EOF
    or         := and ("OR" and)*
    and        := not ("AND" not)*
    not        := "NOT" not | predicated
    predicated := comparison [predicate]
    predicate  := "IS" ["NOT"] "NULL"
                | ["NOT"] "BETWEEN" comparison "AND" comparison
                | ["NOT"] "IN" "(" literal ("," literal)* ")"
    comparison := additive (("=" | "==" | "!=" | "<>" | "<" | "<=" | ">" | ">=") additive)*
    additive   := product (("+" | "-") product)*
    product    := unary (("*" | "/" | "%") unary)*
    unary      := "-" unary | primary
    primary    := literal | column | function "(" [or ("," or)*] ")" | "(" or ")"
    literal    := ["-"] number | string | "TRUE" | "FALSE" | "NULL"
    column     := one of columns.INTERACTION_COLUMNS, bare or `back-quoted`
    function   := abs | coalesce | least | greatest | round | floor | ceil | sqrt | ln
                | log10 | exp | pow | if          (arities in FUNCTIONS)

Strings are single-quoted, ``''`` is a quote (no backslash escapes); ``/`` is fractional
division and ``%`` the remainder, as in Spark SQL; NULLs propagate as in Spark SQL, and a rule
that is NULL on a row labels it 0. A string is never mixed with a number or a boolean (compared,
listed in IN, given to arithmetic or a numeric function): Spark would cast it and, in ANSI mode,
fail the run on a string that is not a number, so ``fraction_watched > '0.9'`` is refused (write
the number without quotes). That check needs the columns' types: at config load it sees the
literals, at the label stage ``labels.label_column`` passes the frame's types. A date or
timestamp column may be compared with an ISO string ('2026-07-01'). Everything else is refused:
subqueries, other functions (rand, reflect, java_method, current_date, ...), qualified names
(``java.lang.X``, ``parquet.`path` ``), ``*``, lambdas, ``||``/``&&``/``!`` (write OR, AND,
NOT), comments, ``;``. A rule has at most MAX_LENGTH characters, nests parentheses and calls at
most MAX_DEPTH deep, and its tree is at most MAX_HEIGHT high, so no rule can exhaust the stack.
"""
from __future__ import annotations

import datetime as _dt
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal

from . import columns as C
from .config import ConfigError

MAX_LENGTH = 2000
# parentheses and function calls inside each other
MAX_DEPTH = 50
# height of the whole tree (a long chain of AND/OR/+ is a deep left-leaning tree)
MAX_HEIGHT = 100
# name -> (fewest arguments, most arguments or None for any number)
FUNCTIONS: dict[str, tuple[int, int | None]] = {
    "abs": (1, 1),
    "coalesce": (1, None),
    "least": (2, None),
    "greatest": (2, None),
    "round": (1, 2),
    "floor": (1, 1),
    "ceil": (1, 1),
    "sqrt": (1, 1),
    "ln": (1, 1),
    "log10": (1, 1),
    "exp": (1, 1),
    "pow": (2, 2),
    "if": (3, 3),
}
NUMERIC_FUNCTIONS = frozenset({"abs", "round", "floor", "ceil", "sqrt", "ln", "log10", "exp", "pow"})
COMPARISONS = ("=", "!=", "<", "<=", ">", ">=")
ARITHMETIC = ("+", "-", "*", "/", "%")

_ALLOWED = (
    "a rule is a boolean expression over the interaction columns: literals, = == != <> < <= > >=, "
    "AND OR NOT, + - * / %, IS [NOT] NULL, [NOT] BETWEEN, [NOT] IN (literals) and the functions "
    + ", ".join(FUNCTIONS)
)
# SQL words that start something a rule may not hold (a query, a cast, a typed literal, ...)
_REFUSED_WORDS = frozenset(
    """SELECT FROM WHERE EXISTS WITH UNION INTERSECT EXCEPT MINUS VALUES TABLE JOIN GROUP ORDER
    HAVING LIMIT OFFSET OVER PARTITION WINDOW QUALIFY CASE WHEN THEN ELSE END CAST TRY_CAST LIKE
    ILIKE RLIKE REGEXP SIMILAR ESCAPE INTERVAL DISTINCT ALL ANY SOME DIV DATE TIMESTAMP
    TIMESTAMP_LTZ TIMESTAMP_NTZ ARRAY MAP STRUCT LATERAL AS INSERT DELETE UPDATE DROP CREATE ALTER
    MERGE TRUNCATE SET RESET USE CALL EXECUTE DESCRIBE SHOW COLLATE UNKNOWN FILTER IDENTIFIER
    CURRENT_DATE CURRENT_TIME CURRENT_TIMESTAMP CURRENT_USER SESSION_USER""".split()
)
_KEYWORDS = frozenset({"AND", "OR", "NOT", "IS", "NULL", "TRUE", "FALSE", "BETWEEN", "IN"})
_NUMBER = re.compile(r"([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_ISO_TIMESTAMP = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}([ T][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,6})?)?)?")
# operators; the refused ones map to the reason (the longest match wins: != is not !)
_OPERATORS = ("==", "!=", "<>", "<=", ">=", "=", "<", ">", "+", "-", "*", "/", "%", "(", ")", ",")
_REFUSED_OPERATORS = {
    "--": "comments are not allowed",
    "/*": "comments are not allowed",
    "*/": "comments are not allowed",
    ";": "a rule is one expression, not statements",
    "->": "lambdas are not allowed",
    "=>": "named arguments are not allowed",
    "<=>": "null-safe equality is not allowed (write a = b OR (a IS NULL AND b IS NULL))",
    "||": "it is string concatenation in Spark SQL: write OR",
    "&&": "write AND",
    "!": "write NOT",
    "::": "casts are not allowed",
    "<<": "bit shifts are not allowed",
    ">>": "bit shifts are not allowed",
    "&": "bitwise operators are not allowed: write AND",
    "|": "bitwise operators are not allowed: write OR",
    "^": "bitwise operators are not allowed",
    "~": "bitwise operators are not allowed: write NOT",
    ":": "paths and casts are not allowed",
    "[": "indexing is not allowed",
    "]": "indexing is not allowed",
    "{": "braces are not allowed",
    "}": "braces are not allowed",
    '"': "write strings in single quotes",
    "?": "parameter markers are not allowed",
    "$": "variables are not allowed",
    "@": "variables are not allowed",
    "#": "comments are not allowed",
    "\\": "backslashes are not allowed",
}
_ALL_OPERATORS = sorted({*_OPERATORS, *_REFUSED_OPERATORS}, key=len, reverse=True)
_DIGITS = "0123456789"


class LabelRuleError(ConfigError):
    """`label.rule` is refused; the message names the token, function or column and its position.

    A ConfigError: a bad rule is a mistake in the config, found at load time where it can be."""


def _error(message: str) -> LabelRuleError:
    return LabelRuleError(f"label.rule: {message}")


def _at(pos: int) -> str:
    return f" (character {pos + 1})"


def _short(text: str) -> str:
    return repr(text if len(text) <= 30 else text[:27] + "...")


# ------------------------------------------------------------------------------ syntax tree
@dataclass(frozen=True)
class Literal:
    """`kind`: int (a Python int; Spark's int, bigint or decimal(n,0) by size, as SQL reads it),
    decimal (a Decimal: 0.9 is decimal(1,1)), double (a float: 1e-3), string, boolean, null."""

    value: object
    kind: str
    pos: int


@dataclass(frozen=True)
class Col:
    name: str  # spelled as in columns.INTERACTION_COLUMNS
    pos: int


@dataclass(frozen=True)
class Unary:
    op: str  # "NOT" or "-"
    operand: Node
    pos: int


@dataclass(frozen=True)
class Binary:
    op: str  # "AND", "OR", one of COMPARISONS (== is read as =, <> as !=) or ARITHMETIC
    left: Node
    right: Node
    pos: int


@dataclass(frozen=True)
class IsNull:
    operand: Node
    negated: bool
    pos: int


@dataclass(frozen=True)
class Between:
    operand: Node
    low: Node
    high: Node
    negated: bool
    pos: int


@dataclass(frozen=True)
class In:
    operand: Node
    values: tuple[Literal, ...]
    negated: bool
    pos: int


@dataclass(frozen=True)
class Call:
    name: str  # lower case, a key of FUNCTIONS
    args: tuple[Node, ...]
    pos: int


Node = Literal | Col | Unary | Binary | IsNull | Between | In | Call


def children(node: Node) -> tuple[Node, ...]:
    if isinstance(node, (Unary, IsNull)):
        return (node.operand,)
    if isinstance(node, Binary):
        return (node.left, node.right)
    if isinstance(node, Between):
        return (node.operand, node.low, node.high)
    if isinstance(node, In):
        return (node.operand, *node.values)
    if isinstance(node, Call):
        return node.args
    return ()


def columns(node: Node) -> set[str]:
    """The contract columns the rule reads."""
    found, todo = set(), [node]
    while todo:
        n = todo.pop()
        if isinstance(n, Col):
            found.add(n.name)
        todo.extend(children(n))
    return found


# ------------------------------------------------------------------------------ tokens
@dataclass(frozen=True)
class _Token:
    kind: str  # num, str, ident, qident (back-quoted), op, bad, eof
    text: str
    pos: int
    value: object = None  # num: its Literal; str, qident: the unquoted text; bad: the message


def _number(text: str, pos: int) -> Literal | str:
    """The literal Spark SQL reads from `text`, or why it is refused."""
    if _NUMBER.fullmatch(text).group(2):  # an exponent: a double
        value = float(text)
        return Literal(value, "double", pos) if math.isfinite(value) else "the number is out of range"
    d = Decimal(text)
    _, digits, exponent = d.as_tuple()
    if max(len(digits), -exponent) > 38:
        return "a number has at most 38 digits"
    return Literal(d, "decimal", pos) if "." in text else Literal(int(text), "int", pos)


def _tokenize(text: str) -> list[_Token]:
    """The tokens of `text`. A refused lexeme becomes a `bad` token that ends the list, so the
    parser reports the leftmost problem it meets."""
    tokens: list[_Token] = []
    i, n = 0, len(text)

    def bad(lexeme: str, pos: int, why: str) -> list[_Token]:
        tokens.append(_Token("bad", lexeme, pos, f"label.rule: {_short(lexeme)}{_at(pos)} is not allowed: {why}"))
        tokens.append(_Token("eof", "", n))
        return tokens

    while i < n:
        ch = text[i]
        if ch in " \t\r\n":
            i += 1
            continue
        prev = tokens[-1] if tokens else None
        after_name = prev is not None and prev.kind in ("ident", "qident")
        if ch in _DIGITS or (ch == "." and i + 1 < n and text[i + 1] in _DIGITS and not after_name):
            end = _NUMBER.match(text, i).end()
            if end < n and (text[end].isalnum() or text[end] in "_.`'"):
                j = end + 1
                while j < n and (text[j].isalnum() or text[j] == "_"):
                    j += 1
                return bad(text[i:j], i, "a number is digits with an optional '.' and exponent (no suffix such as L, D or BD, no hex)")
            lit = _number(text[i:end], i)
            if isinstance(lit, str):
                return bad(text[i:end], i, lit)
            tokens.append(_Token("num", text[i:end], i, lit))
            i = end
            continue
        if ch.isascii() and (ch.isalpha() or ch == "_"):
            m = _IDENT.match(text, i)
            tokens.append(_Token("ident", m.group(0), i))
            i = m.end()
            continue
        if ch in "`'":
            # a back-quoted name or a string; the quote doubled stands for itself
            j, parts = i + 1, []
            while True:
                k = text.find(ch, j)
                if k < 0:
                    what = "back-quoted name" if ch == "`" else "string"
                    return bad(text[i:], i, f"an unterminated {what} (close it with {ch})")
                parts.append(text[j:k])
                if text.startswith(ch * 2, k):
                    parts.append(ch)
                    j = k + 2
                    continue
                break
            value = "".join(parts)
            if ch == "'" and "\\" in value:
                # Spark SQL reads \ escapes in strings; refused rather than re-implemented
                return bad(text[i : k + 1], i, "backslashes are not allowed in strings (write '' for a quote)")
            tokens.append(_Token("qident" if ch == "`" else "str", text[i : k + 1], i, value))
            i = k + 1
            continue
        if ch == ".":
            if after_name:
                tokens.pop()
                return bad(f"{prev.text}.", prev.pos, "a rule names columns of the interaction contract, not tables, paths or Java classes")
            return bad(".", i, "a rule names columns of the interaction contract, not qualified names")
        op = next((op for op in _ALL_OPERATORS if text.startswith(op, i)), None)
        if op is None:
            return bad(ch, i, "the character has no meaning in a rule; " + _ALLOWED)
        if op in _REFUSED_OPERATORS:
            return bad(op, i, _REFUSED_OPERATORS[op])
        tokens.append(_Token("op", op, i))
        i += len(op)
    tokens.append(_Token("eof", "", n))
    return tokens


# ------------------------------------------------------------------------------ parser
def _unexpected(tok: _Token, expected: str) -> LabelRuleError:
    if tok.kind == "ident" and tok.text.upper() in _REFUSED_WORDS:
        return _error(f"{tok.text!r}{_at(tok.pos)} is not allowed: {_ALLOWED}")
    found = "end of the rule" if tok.kind == "eof" else _short(tok.text)
    return _error(f"unexpected {found}{_at(tok.pos)}; expected {expected}")


_OPERAND = "a column, a literal, a function call or '('"


class _Parser:
    """Recursive descent over the grammar in the module docstring, one method per rule."""

    def __init__(self, tokens: list[_Token]):
        self.tokens = tokens
        self.i = 0
        self.depth = 0

    def peek(self, ahead: int = 0) -> _Token:
        """The token `ahead` places on; the current one raises when it is refused."""
        tok = self.tokens[min(self.i + ahead, len(self.tokens) - 1)]
        if tok.kind == "bad" and ahead == 0:
            raise LabelRuleError(tok.value)
        return tok

    def take(self) -> _Token:
        tok = self.peek()
        self.i += 1
        return tok

    def word(self, *words: str) -> bool:
        """The current token is one of the keywords `words` (upper case), not back-quoted."""
        tok = self.peek()
        return tok.kind == "ident" and tok.text.upper() in words

    def op(self, *ops: str) -> bool:
        tok = self.peek()
        return tok.kind == "op" and tok.text in ops

    def expect(self, ok: bool, expected: str) -> _Token:
        if not ok:
            raise _unexpected(self.peek(), expected)
        return self.take()

    def rule(self) -> Node:
        node = self.or_()
        if self.peek().kind != "eof":
            raise _unexpected(self.peek(), "AND, OR, an operator or the end of the rule")
        return node

    def or_(self) -> Node:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise _error(f"the rule nests parentheses or function calls more than {MAX_DEPTH} deep{_at(self.peek().pos)}; simplify it")
        node = self.and_()
        while self.word("OR"):
            pos = self.take().pos
            node = Binary("OR", node, self.and_(), pos)
        self.depth -= 1
        return node

    def and_(self) -> Node:
        node = self.not_()
        while self.word("AND"):
            pos = self.take().pos
            node = Binary("AND", node, self.not_(), pos)
        return node

    def not_(self) -> Node:
        nots = []
        while self.word("NOT"):
            nots.append(self.take().pos)
        node = self.predicated()
        for pos in reversed(nots):
            node = Unary("NOT", node, pos)
        return node

    def predicated(self) -> Node:
        node = self.comparison()
        if self.word("IS"):
            pos = self.take().pos
            negated = self.word("NOT")
            if negated:
                self.take()
            self.expect(self.word("NULL"), "NULL (after IS only [NOT] NULL is allowed)")
            return IsNull(node, negated, pos)
        negated = self.word("NOT") and self.peek(1).kind == "ident" and self.peek(1).text.upper() in ("BETWEEN", "IN")
        if negated:
            self.take()
        if self.word("BETWEEN"):
            pos = self.take().pos
            low = self.comparison()
            self.expect(self.word("AND"), "AND between the bounds of BETWEEN")
            return Between(node, low, self.comparison(), negated, pos)
        if self.word("IN"):
            pos = self.take().pos
            self.expect(self.op("("), "'(' after IN")
            values = [self.in_value()]
            while self.op(","):
                self.take()
                values.append(self.in_value())
            self.expect(self.op(")"), "',' or ')' in the IN list")
            return In(node, tuple(values), negated, pos)
        return node

    def in_value(self) -> Literal:
        tok = self.peek()
        node = self.unary()
        if not isinstance(node, Literal):
            raise _error(f"IN lists literals only, found {_short(tok.text)}{_at(tok.pos)}; write x IN (1, 2) or x IN ('a', 'b')")
        return node

    def comparison(self) -> Node:
        node = self.additive()
        while self.op(*COMPARISONS, "==", "<>"):
            tok = self.take()
            node = Binary({"==": "=", "<>": "!="}.get(tok.text, tok.text), node, self.additive(), tok.pos)
        return node

    def additive(self) -> Node:
        node = self.product()
        while self.op("+", "-"):
            tok = self.take()
            node = Binary(tok.text, node, self.product(), tok.pos)
        return node

    def product(self) -> Node:
        node = self.unary()
        while self.op("*", "/", "%"):
            tok = self.take()
            node = Binary(tok.text, node, self.unary(), tok.pos)
        return node

    def unary(self) -> Node:
        minus = []
        while self.op("-"):
            minus.append(self.take().pos)
        if self.op("+"):
            raise _error(f"unary '+'{_at(self.peek().pos)} is not allowed; write the number alone")
        if minus and self.peek().kind == "num":
            # Spark SQL reads -1 as one literal (so -2147483648 is an int)
            lit = self.take().value
            node: Node = Literal(-lit.value, lit.kind, minus.pop())
        else:
            node = self.primary()
        for pos in reversed(minus):
            node = Unary("-", node, pos)
        return node

    def primary(self) -> Node:
        tok = self.peek()
        if tok.kind == "num":
            return self.take().value
        if tok.kind == "str":
            return Literal(self.take().value, "string", tok.pos)
        if tok.kind == "qident":
            return _column(self.take().value, tok.pos)
        if tok.kind == "ident":
            word = tok.text.upper()
            if word in ("TRUE", "FALSE"):
                return Literal(self.take().text.upper() == "TRUE", "boolean", tok.pos)
            if word == "NULL":
                self.take()
                return Literal(None, "null", tok.pos)
            if word in _KEYWORDS or word in _REFUSED_WORDS:
                raise _unexpected(tok, _OPERAND)
            after = self.peek(1)
            if after.kind == "str":
                raise _error(f"typed or prefixed literal {_short(tok.text + after.text)}{_at(tok.pos)} is not allowed; write a plain string")
            if after.kind == "op" and after.text == "(":
                return self.call()
            return _column(self.take().text, tok.pos)
        if self.op("("):
            self.take()
            node = self.or_()
            self.expect(self.op(")"), "')' to close '('")
            return node
        if self.op("*"):
            raise _error(f"the wildcard '*'{_at(tok.pos)} is not allowed; name a column")
        raise _unexpected(tok, _OPERAND)

    def call(self) -> Node:
        tok = self.take()
        name = tok.text.lower()
        if name not in FUNCTIONS:
            raise _error(f"function {tok.text!r}{_at(tok.pos)} is not allowed (allowed: {', '.join(FUNCTIONS)})")
        self.take()  # (
        args: list[Node] = []
        if not self.op(")"):
            args.append(self.or_())
            while self.op(","):
                self.take()
                args.append(self.or_())
        self.expect(self.op(")"), f"',' or ')' in the arguments of {name}")
        lo, hi = FUNCTIONS[name]
        if len(args) < lo or (hi is not None and len(args) > hi):
            want = str(lo) if lo == hi else (f"at least {lo}" if hi is None else f"{lo} or {hi}")
            noun = "argument" if lo == 1 and hi in (1, None) else "arguments"
            raise _error(f"function {name!r}{_at(tok.pos)} takes {want} {noun}, got {len(args)}")
        if name == "round" and len(args) == 2 and not (isinstance(args[1], Literal) and args[1].kind == "int"):
            raise _error(f"the scale of round{_at(tok.pos)} must be an integer literal, e.g. round(fraction_watched, 2)")
        return Call(name, tuple(args), tok.pos)


def _column(name: str, pos: int) -> Col:
    canonical = {c.lower(): c for c in C.INTERACTION_COLUMNS}.get(name.lower())
    if canonical is None:
        raise _error(f"unknown column {name!r}{_at(pos)} (the interaction contract has: {', '.join(C.INTERACTION_COLUMNS)})")
    return Col(canonical, pos)


# ------------------------------------------------------------------------------ checks
def _height(node: Node) -> int:
    """Height of the tree, without recursion (a chain of 500 ORs is 500 high)."""
    best, todo = 0, [(node, 1)]
    while todo:
        n, h = todo.pop()
        best = max(best, h)
        todo.extend((c, h + 1) for c in children(n))
    return best


_KIND_WORDS = {
    "number": "a number",
    "string": "a string",
    "boolean": "a boolean",
    "date": "a date",
    "timestamp": "a timestamp",
    "null": "NULL",
    "value": "the result of arithmetic",
}


def _what(node: Node) -> str:
    if isinstance(node, Literal):
        return "NULL" if node.kind == "null" else (repr(node.value) if node.kind == "string" else str(node.value))
    if isinstance(node, Col):
        return node.name
    if isinstance(node, Call):
        return f"{node.name}(...)"
    return "an expression"


def _iso(pattern: re.Pattern, value: object) -> bool:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        return False
    try:
        _dt.datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


class _Kinds:
    """What each subexpression is: number, string, boolean, date, timestamp, null, "value" (the
    result of arithmetic over columns of unknown type: a number, a date or an interval, never a
    boolean), or None (not known before the column types are). Enough to refuse a string mixed
    with a number or a boolean, a condition that is not one, and a literal division by zero."""

    def __init__(self, column_kinds: Mapping[str, str]):
        self.column_kinds = column_kinds

    def of(self, node: Node) -> str | None:
        if isinstance(node, Literal):
            return "number" if node.kind in ("int", "decimal", "double") else node.kind
        if isinstance(node, Col):
            return self.column_kinds.get(node.name)
        if isinstance(node, Unary):
            kind = self.of(node.operand)
            if node.op == "NOT":
                self.condition(node.operand, kind, "NOT", node.pos)
                return "boolean"
            self.no_string(node.operand, kind, "unary '-'", node.pos)
            return "number" if kind in ("number", "null") else "value"
        if isinstance(node, Binary):
            if node.op in ("AND", "OR"):
                for side in (node.left, node.right):
                    self.condition(side, self.of(side), node.op, node.pos)
                return "boolean"
            if node.op in COMPARISONS:
                self.mixed([node.left, node.right], f"'{node.op}'", node.pos)
                return "boolean"
            kinds = [self.of(node.left), self.of(node.right)]
            for side, kind in zip((node.left, node.right), kinds):
                self.no_string(side, kind, f"'{node.op}'", node.pos)
            if node.op in ("/", "%") and isinstance(node.right, Literal) and node.right.kind != "null" and node.right.value == 0:
                raise _error(f"division by zero{_at(node.pos)}: Spark fails the run on it")
            return "number" if set(kinds) <= {"number", "null"} else "value"
        if isinstance(node, IsNull):
            self.of(node.operand)
            return "boolean"
        if isinstance(node, Between):
            self.mixed([node.operand, node.low, node.high], "BETWEEN", node.pos)
            return "boolean"
        if isinstance(node, In):
            self.mixed([node.operand, *node.values], "IN", node.pos)
            return "boolean"
        if node.name in NUMERIC_FUNCTIONS:
            for a in node.args:
                self.no_string(a, self.of(a), f"function {node.name!r}", node.pos)
            return "number"
        args = node.args
        if node.name == "if":
            self.condition(args[0], self.of(args[0]), "the condition of if", node.pos)
            args = args[1:]
        return self.mixed(list(args), f"function {node.name!r}", node.pos)

    def condition(self, node: Node, kind: str | None, where: str, pos: int) -> None:
        if kind in ("number", "string", "date", "timestamp", "value"):
            raise _error(f"{where}{_at(pos)} needs a condition, got {_KIND_WORDS[kind]} ({_what(node)}); compare it, e.g. fraction_watched > 0.8")

    def no_string(self, node: Node, kind: str | None, where: str, pos: int) -> None:
        if kind == "string":
            raise _error(f"{where}{_at(pos)} takes numbers, got a string ({_what(node)}); write the number without quotes")

    def mixed(self, nodes: list[Node], where: str, pos: int) -> str | None:
        """The one kind of `nodes`, compared or merged together (None if several or unknown).
        A string with a number or a boolean is refused; with a date or timestamp it must be an
        ISO literal."""
        kinds = [self.of(n) for n in nodes]
        if {k for k in kinds if k != "null"} == {"value"}:
            return "value"
        known = {k for k in kinds if k not in (None, "null", "value")}
        if "string" in known and len(known) > 1:
            others = known - {"string"}
            pattern = _ISO_DATE if others == {"date"} else _ISO_TIMESTAMP
            for n, k in zip(nodes, kinds):
                if k == "string" and not (others <= {"date", "timestamp"} and isinstance(n, Literal) and _iso(pattern, n.value)):
                    other, okind = next((m, km) for m, km in zip(nodes, kinds) if km in others)
                    fix = {"number": "write the number without quotes", "boolean": "write TRUE or FALSE"}.get(
                        okind, "write the date as 'YYYY-MM-DD' or the timestamp as 'YYYY-MM-DD HH:MM:SS'"
                    )
                    raise _error(f"{where}{_at(pos)} mixes a string ({_what(n)}) with {_KIND_WORDS[okind]} ({_what(other)}): Spark would cast the string and may fail the run; {fix}")
            return None
        return known.pop() if len(known) == 1 and None not in kinds and "value" not in kinds else None


# ------------------------------------------------------------------------------ entry point
def parse(rule: object, column_kinds: Mapping[str, str] | None = None) -> Node:
    """The syntax tree of `rule`, or a LabelRuleError naming what is refused and where.

    `column_kinds` (column -> number, string, boolean, date or timestamp) lets the checks see the
    columns' types; without it (at config load) the literals' kinds are checked.
    """
    if not isinstance(rule, str):
        raise _error(f"must be a string, got {rule!r}")
    if len(rule) > MAX_LENGTH:
        raise _error(f"the rule is {len(rule)} characters long, more than {MAX_LENGTH}; shorten it")
    if rule.strip() == "":
        raise _error(f"the rule is empty; {_ALLOWED}")
    node = _Parser(_tokenize(rule)).rule()
    if _height(node) > MAX_HEIGHT:
        raise _error(f"the rule chains more than {MAX_HEIGHT} operations; shorten it (one IN list holds many values)")
    kind = _Kinds(column_kinds or {}).of(node)
    if kind is not None and kind != "boolean":
        raise _error(f"the rule must be boolean, it is {_KIND_WORDS[kind]}; compare it, e.g. fraction_watched > 0.8")
    return node
