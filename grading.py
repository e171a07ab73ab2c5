"""Grading: pull the final answer out of a model's response and decide whether it equals the gold one.

    python grading.py "... so the answer is \\boxed{\\dfrac{1}{2}}" "0.5"       # -> True

extract_answer(text) returns the content of the LAST \\boxed{} or \\fbox{} (nested braces are fine; boxes with
only separators between them are one list; the math of a sentence in a box), else the answer of the last
"final answer is" / "the answer is" / "Final Answer:" / "Answer:" line ("The smallest $k$ is 12" says 12), else None.
grade(response, gold) is True when that answer is mathematically equal to gold, judged the way a
careful human grader would: forms may differ (1,000 = 1000, \\frac12 = 0.5, x = 3 = 3, {1,2} = {2,1},
-x > -1 = x < 1, 2x-4y=2 = y=x/2-1/2), values may not (1.63 != 1.6, (3,pi) != (3,pi/2), y = 3 != x = 3, 21_3 != 21_4).
One normalisation pipeline (clean) and one comparison (_equal): letters for multiple choice, exact
numbers, relations as relations, sets order-free, tuples and intervals in order, matrices entry by
entry, then sympy at random points. It never raises, and every call returns within about a second.
The only dependency is sympy (which torch already needs), used under a time limit.
"""
import math
import random
import re
import signal
import sys
import threading
from contextlib import contextmanager
from decimal import Decimal

import sympy  # imported here, not under the time limit: a first import takes longer than a grade may
from sympy.parsing.sympy_parser import (convert_xor, implicit_multiplication_application, parse_expr,
                                        standard_transformations)

BOX = re.compile(r"\\(?:boxed|fbox)\s*\{")
FINAL = re.compile(r"final answer is|the answer is|final answer\s*:|^\W*answer\W*?(?=\s*[:$\\]|\s*$)",
                   re.IGNORECASE | re.MULTILINE)  # ... or a line that starts "Answer:", "**Answer**", "Answer $7$"
# what may stand between two boxes that together are the answer: \boxed{2}, \boxed{4} and $\boxed{6}$
BETWEEN_BOXES = re.compile(r"[\s,;$]*(?:\\text\{\s*(?:and|or)?\s*\}|\\q?quad|\band\b|\bor\b)?[\s,;$]*")
MATH = re.compile(r"\$\$(.+?)\$\$|\$(.+?)(?<!\\)\$|\\\((.+?)\\\)|\\\[(.+?)\\\]", re.S)  # $X$ (not \$), \(X\), \[X\]
NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?")
SCI = re.compile(r"([+-]?(?:\d+\.?\d*|\.\d+))(?:\\times|\\cdot|\*|x)10\^\{?([+-]?\d+)\}?")
MAX_LEN = 400  # longer "answers" are not final answers; refusing them keeps every call fast


def _braced(text, i):
    """Content of the group that opens just before text[i], and the index after its closing brace."""
    depth = 1
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j], j + 1
    return None, len(text)  # unbalanced: a response cut off inside its box has no answer


def extract_answer(text):
    if not isinstance(text, str):
        return None
    text = re.sub(r"<\|[^|<>]*\|>|</s>", " ", text)  # chat-template tokens after the answer are not part of it
    boxes, end = [], 0  # the last run of boxes with only separators between them: \boxed{1}, \boxed{2} is "1, 2"
    for m in BOX.finditer(text):
        if m.start() < end:
            continue  # a box inside the box we already have: the outer one is the answer
        joined = bool(boxes) and BETWEEN_BOXES.fullmatch(text[end:m.start()])
        content, end = _braced(text, m.end())
        if content is not None:
            content = extract_answer(content) if BOX.search(content) else _math_in_prose(content)  # \boxed{\boxed{7}}
            boxes = boxes + [content] if joined else [content]
    if boxes:
        found = boxes[0] if len(set(boxes)) == 1 else ", ".join(boxes)  # \boxed{5} twice is one answer
    else:
        hits = list(FINAL.finditer(text))  # "Final Answer: The final answer is X": the last phrase wins
        if not hits:
            return None
        tail = text[hits[-1].end():].strip().lstrip(":*").strip()
        math = MATH.match(tail)
        # else the sentence, up to ". " or the line's end ("3.5" keeps its point); "The smallest $k$ is 12" says 12
        sentence = re.split(r"\.(?:\s|$)|\n|,?\s+I hope", tail)[0]
        said = re.search(r"\s(?:is|are|equals)\s+([^$]*(?:\$[^$]*\$)?[^$]*)$", sentence)
        found = next(g for g in math.groups() if g) if math else _math_in_prose(said.group(1) if said else sentence)
    return found.strip() or None


def boxed(text):
    """True when the text holds a \\boxed{...} whose braces close: the answer format the prompt asks for."""
    return any(_braced(text, m.end())[0] is not None for m in BOX.finditer(text))


def _math_in_prose(s):
    """The math of a sentence: 'So $y \\leq 4$ is the answer.' -> 'y \\leq 4'. Only one piece of math, among words
    that do not negate it; anything else (plain math, several pieces, 'not $2$') stays as it is."""
    parts, prose = [next(g for g in m.groups() if g) for m in MATH.finditer(s)], MATH.sub(" ", s)
    if len(parts) != 1 or "\\" in prose or re.search(r"(?i)\bno[rt]?\b|never|except|neither|unless|n't", prose):
        return s
    return parts[0] if re.search(r"[a-zA-Z]{2,}\s+[a-zA-Z]{2,}|^[^a-zA-Z]*[a-zA-Z]{3,}\b", prose) else s


# -----------------------------------------------------------------------------
# normalisation: each rule removes a difference of form, never one of value

def _unwrap(s, command):
    """\\command{X} -> X for every occurrence (nested braces allowed)."""
    while True:
        m = re.search(r"\\" + command + r"\s*\{", s)
        if not m:
            return s
        inner, end = _braced(s, m.end())
        if inner is None:
            return s[:m.start()] + s[m.end():]
        s = s[:m.start()] + inner + s[end:]


TEXT_CMDS = "(?:text|textnormal|textrm|textbf|mbox|mathrm)"
RELATIONS = [(r"\\geqslant|\\geq|\\ge(?![a-z])|≥|=>", ">="), (r"\\leqslant|\\leq|\\le(?![a-z])|≤|=<", "<="),
             (r"\\neq|\\ne(?![a-z])|≠", "!="), (r"\\gt(?![a-z])", ">"), (r"\\lt(?![a-z])", "<")]


def clean(s):
    s = s.replace("\\$", "").replace("$", "").strip()  # math-mode delimiters and dollar signs
    # units written as text after a value ("5\text{ cm}", "3\mbox{ inches}", "2\text{ m/s}"): a grader ignores them
    s = re.sub(r"(?<=[\d}])\s*(?:\\[,;!: ]|~|\s)*\\" + TEXT_CMDS + r"\{\s*~?[a-zA-Z][a-zA-Z/^0-9 ]*\}"
               r"(?:\^\{?\d\}?)?\s*$", "", s)
    s = re.sub(r"(?<=\d),\\!\s*(?=\d{3})", ",", s)  # 20,\!160 and "4,\! 210": a thousands separator
    for cmd in ("text", "textnormal", "textrm", "textbf", "textit", "mbox", "mathrm", "mathbf", "mathit", "boldsymbol",
                "displaystyle", "operatorname"):
        s = _unwrap(s, cmd)  # font and text wrappers change the look, not the value
    s = re.sub(r"\\(?:left|right|big|Big|bigg|Bigg)(?![a-zA-Z])\.?", "", s)  # delimiter sizing
    s = re.sub(r"\\[dtc]frac", r"\\frac", s)
    s = re.sub(r"\\(?:displaystyle|!|quad|qquad)", "", s)
    s = re.sub(r"(?<!\\)\\[,;:> ]|~", " ", s)  # LaTeX spaces (but not the row break \\ of a matrix)
    for pattern, ascii_op in RELATIONS:  # every spelling of a relation becomes one: \geq, \ge, \geqslant -> >=
        s = re.sub(pattern, ascii_op, s)
    s = s.replace("\\%", "%").replace("°", "")
    s = re.sub(r"\s*\b(?:percent(?:age)?|pct)\b\.?", "%", s)  # "15 percent" is 15%
    s = re.sub(r"\^\s*\{?\\circ\}?|\\circ|\s*\bdegrees?\b", "", s)  # degrees: 30^\circ and "30 degrees" are 30
    s = re.sub(r"(?<=\d)\{,\}(?=\d)", "", s)  # 1{,}000: LaTeX's spacing-free comma is a separator
    s = s.replace("\\infty", "oo").replace("∞", "oo")
    s = s.replace("\\emptyset", "\\{\\}").replace("\\varnothing", "\\{\\}")
    s = re.sub(r"\\(?:dots|ldots|cdots)", "...", s)
    s = re.sub(r"\s*\\(?:cup|text\{ ?or ?\})\s*|\s+(?:and|or)\s+|\s*;\s*", ", ", s)  # several answers: one list
    s = re.sub(r"_\{(\w+)\}", r"_\1", s)  # x_{1} = x_1
    s = s.strip().rstrip(".").strip()
    # thousands separators: only a whole number in groups of three, so the list "2,4" stays a list
    if re.fullmatch(r"[+-]?[1-9]\d{0,2}(?:(?:,|\s)\d{3})+(?:\.\d+)?", s):
        s = re.sub(r"[,\s]", "", s)
    return re.sub(r"\s+", " ", s)


NAME = r"\\?[a-zA-Z]+(?:_\w+)?(?:\([a-z, ]*\))?"  # x, x_1, f(x), \theta, PQ
LABEL = re.compile(rf"\s*({NAME}|\(\s*{NAME}(?:\s*,\s*{NAME})+\s*\)|\|{NAME}\||\\frac\{{{NAME}\}}\{{{NAME}\}}"
                   rf"|{NAME}\s*:\s*{NAME})\s*(?:=|\\in)\s*(.+)")


def _unlabel(s):
    """(label, value): 'x = 3' -> ('x', '3'), '(a,b) = (5,1)', '|PQ| = 4', 'x \\in [1,2]' -> ('x', '[1,2]'), and
    'b = 7/3, a = 2' -> ('a,b', '(2, 7/3)') (values in the order of their names); (None, s) when unlabelled."""
    m = LABEL.fullmatch(s)
    if m and not re.search(r"(?<![<>!])=", m.group(2)):
        return m.group(1), m.group(2).strip()
    parts = sorted((LABEL.fullmatch(p) for p in _split_top(s, ",")), key=lambda p: p.group(1) if p else "")
    if len(parts) > 1 and all(parts):
        return ",".join(p.group(1) for p in parts), "(" + ", ".join(p.group(2).strip() for p in parts) + ")"
    return None, s


def _base_number(s):
    """A number and its base: '61_7' -> (43, '61'); (None, '61') when the base has no such digits; else None."""
    m = re.fullmatch(r"([0-9A-Z]+)_(\d+)", s)
    if not m:
        return None
    try:
        return int(m.group(1), int(m.group(2))), m.group(1)
    except ValueError:
        return None, m.group(1)


def _decimal_comma(s, other):
    """A response's '3,75' is 3.75 when the gold is one number with a fraction and ',75' is no group of thousands."""
    m, value = re.fullmatch(r"([+-]?\d+),(\d+)", s), _number(other)
    if m and (len(m.group(2)) != 3 or int(m.group(1)) == 0) and value is not None and value % 1:
        return f"{m.group(1)}.{m.group(2)}"  # "3,0" against 3 stays the list it may be
    return s


def _choice(s):
    """The letter of a multiple-choice answer such as (B), B, \\text{(B)} or "B) 12"; else None."""
    m = re.fullmatch(r"\(?([A-E])\)?(?:\s.*)?", s) or re.fullmatch(r"\(([A-E])\)\s*.*", s)
    return m.group(1) if m else None


def _split_top(s, sep):
    """Split at sep where no bracket is open."""
    parts, depth, cur, i = [], 0, "", 0
    while i < len(s):
        if s.startswith(sep, i) and depth == 0:
            parts.append(cur.strip())
            cur, i = "", i + len(sep)
            continue
        c = s[i]
        depth += (c in "([{") - (c in ")]}")
        cur, i = cur + c, i + 1
    return parts + [cur.strip()]


def _interval_of_inequality(s):
    """A relation in one variable as its solution set: 'x > 3' -> '(3,oo)', '-x > -1' -> '(-oo,1)',
    '-2 <= x < 5' -> '[-2,5)', 'x != 2' -> '(-oo,2), (2,oo)'. Linear relations only; else None."""
    rel = r"\s*(<=|>=|!=|<|>)\s*"
    m = re.fullmatch(r"([^<>!=]+?)" + rel + r"([a-zA-Z](?:\([a-z]\))?)" + rel + r"([^<>!=]+)", s)
    if m and m.group(2)[0] == m.group(4)[0] and m.group(2)[0] in "<>":  # a chain, a < x <= b, b > f(x) > a
        lo, lo_op, hi_op, hi = (m.group(1), m.group(2), m.group(4), m.group(5))
        if lo_op[0] == ">":
            lo, lo_op, hi_op, hi = hi, hi_op, lo_op, lo
        return ("[" if "=" in lo_op else "(") + f"{lo.strip()},{hi.strip()}" + ("]" if "=" in hi_op else ")")
    m = re.fullmatch(r"([^<>!=]+?)" + rel + r"([^<>!=]+)", s)
    f = _to_sympy(f"({m.group(1)})-({m.group(3)})") if m else None
    if f is None or len(f.free_symbols) != 1:
        return None
    x = next(iter(f.free_symbols))
    slope = f.diff(x)
    if not slope.is_number or slope == 0:
        return None
    bound, op = sympy.nsimplify(-f.subs(x, 0) / slope), m.group(2)
    if slope < 0:  # dividing by a negative number turns the relation round
        op = {"<": ">", ">": "<", "<=": ">=", ">=": "<=", "!=": "!="}[op]
    if op == "!=":
        return f"(-oo,{bound}), ({bound},oo)"
    closed = "=" in op
    return f"(-oo,{bound}" + ("]" if closed else ")") if op[0] == "<" else ("[" if closed else "(") + f"{bound},oo)"


def _matrix(s):
    """Rows of a matrix written as pmatrix, bmatrix, ... or an array inside brackets; else None."""
    m = re.fullmatch(r"[\[(]?\s*\\begin\{([pbvBV]?matrix|smallmatrix|array)\}(?:\{[^}]*\})?(.*)\\end\{\1\}\s*[\])]?", s,
                     re.S)
    if not m:
        return None
    return [[c.strip() for c in row.split("&")] for row in re.split(r"\\\\", m.group(2)) if row.strip()]


# -----------------------------------------------------------------------------
# values

def _number(s):
    """A plain number (scientific notation too) as an exact Decimal, so 3986730 != 3986729 and
    1.60 == 1.6; None for anything else."""
    s = s.replace(" ", "")
    if re.fullmatch(NUMBER.pattern, s, re.I):
        return Decimal(s)  # "4.5e33" is a number, not 4.5 times Euler's number plus 33
    m = SCI.fullmatch(s)
    if m:
        return Decimal(m.group(1)).scaleb(int(m.group(2)))
    m = re.fullmatch(r"10\^\{?([+-]?\d+)\}?", s)
    return Decimal(1).scaleb(int(m.group(1))) if m else None


FUNCS = {"sqrt", "log", "ln", "exp", "sin", "cos", "tan", "cot", "sec", "csc", "pi", "oo", "E", "I", "floor", "ceiling",
         "asin", "acos", "atan", "sinh", "cosh", "tanh", "binom", "factorial", "Abs"}
GREEK = {"alpha", "beta", "gamma", "delta", "theta", "lambda", "mu", "phi", "omega", "sigma", "rho", "tau"}


def _to_sympy(s):
    """LaTeX-ish text -> a sympy expression, or None. Only whitelisted names reach parse_expr."""
    for cmd, arity in (("frac", 2), ("sqrt", 1), ("binom", 2)):
        while (m := re.search(r"\\" + cmd + r"(?:\[([^\]]*)\])?\s*", s)):
            args, j = [], m.end()
            for _ in range(arity):
                if j < len(s) and s[j] == "{":
                    a, j = _braced(s, j + 1)
                    if a is None:
                        return None
                else:
                    if j >= len(s):
                        return None
                    a, j = s[j], j + 1  # \frac12, \sqrt2: one-character arguments
                args.append(a)
            if cmd == "frac":
                new = f"(({args[0]})/({args[1]}))"
            elif cmd == "binom":
                new = f"binom({args[0]},{args[1]})"
            else:
                new = f"(({args[0]})**(1/({m.group(1)})))" if m.group(1) else f"sqrt({args[0]})"
            s = s[:m.start()] + f" {new} " + s[j:]  # spaced: i\sqrt5 is i times sqrt(5), never 'isqrt'

    s = s.replace("\\cdot", "*").replace("\\times", "*").replace("\\div", "/")
    s = re.sub(r"\\lfloor(.*?)\\rfloor", r" floor(\1) ", s)
    s = re.sub(r"\\lceil(.*?)\\rceil", r" ceiling(\1) ", s)
    s = re.sub(r"\|([^|]+)\|", r"Abs(\1)", s)
    s = re.sub(r"(\d+)!", r"factorial(\1)", s)
    s = re.sub(r"\\([a-zA-Z]+)", r" \1 ", s)  # \sqrt5 i, i\pi: a command never glues onto its neighbours
    s = s.replace("{", "(").replace("}", ")").replace("^", "**").replace("\\", "")
    s = re.sub(r"\be\b", "E", s)  # a lone e in an expression is Euler's number (e^2, 3e); 1e5 never gets here
    # bR, xy: a short unknown word is a product of symbols; a longer one is prose or a unit we cannot compare
    s = re.sub(r"[a-zA-Z]+", lambda w: w[0] if w[0] in FUNCS | GREEK or len(w[0]) > 3 else " ".join(w[0]), s)
    words = re.findall(r"[a-zA-Z]+", s)
    if re.search(r"[^\w\s+\-*/().,]|_", s) or any(w not in FUNCS | GREEK and len(w) > 1 for w in words):
        return None
    if re.search(r"\*\*\s*\(?\s*\d{4,}|\*\*\s*\(*[\w.]+\s*\*\*|\de[+-]?\d{4,}", s, re.I):
        return None  # 9^{99999}, 9^{9^9}, 1e99999: C-level big-number work no alarm can stop
    try:
        tr = standard_transformations + (implicit_multiplication_application, convert_xor)
        return parse_expr(s.replace("binom", "binomial").replace("ln", "log"), transformations=tr, evaluate=True,
                          local_dict={"E": sympy.E, "I": sympy.I, "pi": sympy.pi,
                                      **{g: sympy.Symbol(g) for g in GREEK}})
    except Exception:
        return None


def _values_at_random_points(exprs):
    """Each expression's complex value at 3 random points (1 if there are no symbols), or None if not finite."""
    rng = random.Random(0)
    symbols = sorted(set().union(*(e.free_symbols for e in exprs)), key=str)
    points = [{x: rng.uniform(0.5, 2.5) for x in symbols} for _ in range(3 if symbols else 1)]
    values = [[complex(e.evalf(subs=p)) for e in exprs] for p in points]
    ok = all(math.isfinite(abs(v)) for row in values for v in row)
    return values if ok else None


def _close(a, b):
    return abs(a - b) <= 1e-6 * max(abs(a), abs(b)) or abs(a - b) <= 1e-12


def _sympy_equal(a, b):
    ea, eb = _to_sympy(a), _to_sympy(b)
    if ea is None or eb is None or ea.free_symbols != eb.free_symbols:
        return False
    if ea == eb:
        return True  # also oo == +oo, which no numeric check can confirm
    # equal at random points <=> equal as functions (with overwhelming probability); no simplify() hangs
    values = _values_at_random_points([ea, eb])
    return values is not None and all(_close(va, vb) for va, vb in values)


def _relation_equal(pred, gold):
    """Two equations are one relation when lhs - rhs of one is a nonzero constant times the other's:
    3x-6y+2=0 and y = x/2 + 1/3 are the same line."""
    sides = [re.split(r"(?<![<>!=])=(?!=)", s) for s in (pred, gold)]
    if any(len(x) != 2 for x in sides):
        return False
    f, g = (_to_sympy(f"({a})-({b})") for a, b in sides)
    if f is None or g is None or f.free_symbols != g.free_symbols or not f.free_symbols:
        return False
    values = _values_at_random_points([f, g])
    if values is None or any(abs(vg) < 1e-12 for _, vg in values):
        return False
    ratios = [vf / vg for vf, vg in values]
    return abs(ratios[0]) > 1e-12 and all(_close(r, ratios[0]) for r in ratios)


def _equal(pred, gold):
    if pred == gold or pred.lower() == gold.lower():
        return True
    if _choice(gold):
        return _choice(pred) == _choice(gold)
    if "=" in pred and "=" in gold and _relation_equal(pred, gold):
        return True
    (pred_label, pred), (gold_label, gold) = _unlabel(pred), _unlabel(gold)
    if pred_label and gold_label and re.sub(r"\s", "", pred_label).lower() != re.sub(r"\s", "", gold_label).lower():
        return False  # y = 3 does not answer "x = 3", nor PB/AP = 1/2 "AP/PB = 1/2": a label is part of the answer
    pred, gold = clean(pred), clean(gold)  # once unlabelled, "10,\!080" is a whole number again
    if pred == gold:
        return True
    pb, gb = _base_number(pred), _base_number(gold)
    if pb or gb:  # 21_3 != 21_4: the base is part of the number; a bare "21" against 21_4 writes the digits asked for
        return pb[0] is not None and pb[0] == gb[0] if pb and gb else (pb or gb)[1] == (gold if pb else pred)
    pred = _decimal_comma(pred, gold)
    p, g = _number(pred.rstrip("%")), _number(gold.rstrip("%"))
    if p is not None and g is not None:  # 10% = 10 = 0.1 when one side has the % sign
        if pred.endswith("%") != gold.endswith("%"):
            return p == g or (p / 100 if pred.endswith("%") else p) == (g / 100 if gold.endswith("%") else g)
        return p == g
    pm, gm = _matrix(pred), _matrix(gold)
    if pm is not None or gm is not None:
        return (pm is not None and gm is not None and len(pm) == len(gm)
                and all(len(r) == len(q) and all(map(_equal, r, q)) for r, q in zip(pm, gm)))
    pi, gi = _interval_of_inequality(pred), _interval_of_inequality(gold)
    if pi or gi:
        return _equal(pi or pred, gi or gold)
    bp, bg = _brackets(pred), _brackets(gold)
    pe, ge = _elements(pred, bp), _elements(gold, bg)
    if len(pe) > 1 or len(ge) > 1 or bp or bg:
        if bp in (None, "{}") and bg in (None, "{}"):
            return _same_multiset(pe, ge)  # sets and bare lists of answers: order-free
        if None in (bp, bg) and "()" in (bp, bg) or bp == bg:  # tuples and intervals: in order, bracket by bracket
            return len(pe) == len(ge) and all(map(_equal, pe, ge))
        return False
    return _sympy_equal(pred, gold)


def _brackets(s):
    """'()', '[)', '{}', ... when one bracket pair wraps all of s and holds a list; else None."""
    if s.startswith("\\{") and s.endswith("\\}"):
        s, kind = s[1:-2] + "}", "{}"
    elif len(s) > 1 and s[0] in "([" and s[-1] in ")]":
        kind = s[0] + s[-1]
    else:
        return None
    depth = 0
    for i, c in enumerate(s):
        depth += (c in "([{") - (c in ")]}")
        if depth == 0 and i < len(s) - 1:
            return None  # "(1,2), (3,4)": the first bracket closes early, so it wraps nothing
    return kind if kind == "{}" or len(_split_top(s[1:-1], ",")) > 1 else None


def _elements(s, brackets):
    """The members of a list, set, tuple or interval; 'a \\pm b' counts as two, a+b and a-b."""
    inner = s[2:-2] if brackets == "{}" else s[1:-1] if brackets else s
    out = []
    for part in _split_top(inner, ","):
        pm = re.search(r"\\pm|\\mp", part)
        out += [part[:pm.start()] + sign + part[pm.end():] for sign in "+-"] if pm else [part]
    return out


def _same_multiset(pe, ge):
    left = list(ge)
    for x in pe:
        hit = next((i for i, y in enumerate(left) if _equal(x, y)), None)
        if hit is None:
            return False
        left.pop(hit)
    return not left


@contextmanager
def _time_limit(seconds):
    """SIGALRM where we can (main thread, Unix); elsewhere the size guards above keep calls short."""
    if not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        yield
        return
    def _raise(*_):
        raise TimeoutError
    old = signal.signal(signal.SIGALRM, _raise)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def grade(response, gold):
    """True when the final answer in response equals gold (a bare answer or one in \\boxed{})."""
    try:
        with _time_limit(0.5):
            pred = extract_answer(response)
            gold = extract_answer(gold) or str(gold) if BOX.search(str(gold)) else str(gold)
            if pred is None or len(pred) > MAX_LEN or len(gold) > MAX_LEN:
                return False
            return _equal(clean(pred), clean(gold))
    except (Exception, TimeoutError):
        return False


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit('usage: python grading.py RESPONSE GOLD')
    print(extract_answer(sys.argv[1]), grade(sys.argv[1], sys.argv[2]))
