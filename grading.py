"""Grading: pull the final answer out of a model's response and decide whether it equals the gold one.

    python grading.py "... so the answer is \\boxed{\\dfrac{1}{2}}" "0.5"       # -> True

extract_answer(text) returns the content of the LAST \\boxed{} or \\fbox{} (nested braces are fine),
else what follows "final answer is" / "the answer is" / "Final Answer:", else None.
grade(response, gold) is True when that answer is mathematically equal to gold, judged the way a
careful human grader would: forms may differ (1,000 = 1000, \\frac12 = 0.5, x = 3 = 3, {1,2} = {2,1}),
values may not. It never raises, and every call returns within about a second.
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
FALLBACKS = re.compile(r"(?:final answer is|the answer is|final answer\s*:)\s*:?\s*(.+)", re.IGNORECASE)
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
    found, end = None, 0
    for m in BOX.finditer(text):
        if m.start() < end:
            continue  # a box inside the box we already have: the outer one is the answer
        content, end = _braced(text, m.end())
        if content is not None:
            found = extract_answer(content) if BOX.search(content) else content  # \boxed{\boxed{7}}
    if found is None:
        tails = FALLBACKS.findall(text)
        if not tails:
            return None
        # the sentence ends at ". " or the line's end; "3.5" keeps its point
        found = re.split(r"\.(?:\s|$)|\n|,?\s+I hope", tails[-1])[0].strip().strip("$")
        found = re.sub(r"^\\\(|\\\)$|^\\\[|\\\]$", "", found)
    return found.strip() or None


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


def clean(s):
    s = s.replace("\\$", "").replace("$", "").strip()  # math-mode delimiters and dollar signs
    # units written as text after a value ("5\text{ cm}", "3\mbox{ inches}"): a grader ignores them
    s = re.sub(r"(?<=[\d}])\s*(?:\\[,;!: ]|~|\s)*\\(?:text|mbox|mathrm)\{\s*~?[a-zA-Z]+(?:\s+[a-zA-Z]+)*\s*\}(?:\^\{?\d\}?)?\s*$", "", s)
    for cmd in ("text", "textbf", "textit", "mbox", "mathrm", "mathbf", "boldsymbol", "displaystyle", "operatorname"):
        s = _unwrap(s, cmd)  # font and text wrappers change the look, not the value
    s = re.sub(r"\\(?:left|right|big|Big|bigg|Bigg)(?![a-zA-Z])\.?", "", s)  # delimiter sizing
    s = re.sub(r"\\[dt]frac", r"\\frac", s)
    s = re.sub(r"\\(?:displaystyle|!|quad|qquad)", "", s)
    s = re.sub(r"(?<!\\)\\[,;:> ]|~", " ", s)  # LaTeX spaces (but not the row break \\ of a matrix)
    s = s.replace("\\%", "%").replace("°", "")
    s = re.sub(r"\^\s*\{?\\circ\}?|\\circ", "", s)  # degrees: 30^\circ is the number 30
    s = re.sub(r"(?<=\d)\{,\}(?=\d)", "", s)  # 1{,}000: LaTeX's spacing-free comma is a separator
    s = s.replace("\\infty", "oo").replace("∞", "oo").replace("\\emptyset", "\\{\\}").replace("\\varnothing", "\\{\\}")
    s = re.sub(r"\\(?:dots|ldots|cdots)", "...", s)
    s = s.strip().rstrip(".").strip()
    # thousands separators: only a whole number in groups of three, so the list "2,4" stays a list
    if re.fullmatch(r"[+-]?\d{1,3}(?:(?:,|\s)\d{3})+(?:\.\d+)?", s):
        s = re.sub(r"[,\s]", "", s)
    # "x = 3", "f(x) = 2x", "\theta = \pi" -> the right-hand side; the variable's name is not the answer
    m = re.fullmatch(r"[a-zA-Z](?:_\{?\w+\}?)?(?:\([a-z]\))?\s*=\s*(.+)|\\[a-z]+\s*=\s*(.+)", s)
    if m:
        s = (m.group(1) or m.group(2)).strip()
    return re.sub(r"\s+", " ", s)


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
    """'x > 3' -> '(3,oo)', '-2 \\le x < 5' -> '[-2,5)': inequalities and intervals are one answer."""
    s = s.replace("\\leq", "\\le").replace("\\geq", "\\ge").replace("≤", "\\le").replace("≥", "\\ge")
    rel = r"\s*(<|>|\\le|\\ge)\s*"
    m = re.fullmatch(r"([^<>\\=]+?)" + rel + r"([a-z])" + rel + r"([^<>\\=]+)", s)
    if m and {m.group(2), m.group(4)} <= {"<", "\\le"}:
        lo, hi = m.group(1), m.group(5)
        return ("[" if m.group(2) == "\\le" else "(") + f"{lo},{hi}" + ("]" if m.group(4) == "\\le" else ")")
    m = re.fullmatch(r"([a-z])" + rel + r"([^<>=]+)", s) or re.fullmatch(r"([^<>=]+?)" + rel + r"([a-z])", s)
    if not m:
        return None
    left_is_var = len(m.group(1)) == 1 and m.group(1).isalpha()
    op, val = m.group(2), (m.group(3) if left_is_var else m.group(1))
    upper = (op in ("<", "\\le")) == left_is_var  # x < a and a > x both bound x from above
    closed = op in ("\\le", "\\ge")
    return f"(-oo,{val}" + ("]" if closed else ")") if upper else ("[" if closed else "(") + f"{val},oo)"


def _matrix(s):
    m = re.fullmatch(r"\\begin\{[pbvB]?matrix\}(.*)\\end\{[pbvB]?matrix\}", s, re.S)
    if not m:
        return None
    return [[c.strip() for c in row.split("&")] for row in re.split(r"\\\\", m.group(1)) if row.strip()]


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


FUNCS = {"sqrt", "log", "ln", "exp", "sin", "cos", "tan", "cot", "sec", "csc", "pi", "oo", "E", "I",
         "asin", "acos", "atan", "sinh", "cosh", "tanh", "binom", "factorial", "Abs"}


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
            s = s[:m.start()] + new + s[j:]
    s = s.replace("\\cdot", "*").replace("\\times", "*").replace("\\div", "/").replace("\\pi", " pi ")
    s = re.sub(r"\\(ln|log|exp|sin|cos|tan|cot|sec|csc|sinh|cosh|tanh)", r" \1 ", s)
    s = re.sub(r"\|([^|]+)\|", r"Abs(\1)", s)
    s = re.sub(r"(\d+)!", r"factorial(\1)", s)
    s = s.replace("{", "(").replace("}", ")").replace("^", "**").replace("\\", "")
    s = re.sub(r"\be\b", "E", s)  # a lone e in an expression is Euler's number (e^2, 3e); 1e5 never gets here
    if re.search(r"[^\w\s+\-*/().,]|_", s) or any(w not in FUNCS and len(w) > 1 for w in re.findall(r"[a-zA-Z]+", s)):
        return None  # unknown words (units, prose) are not mathematics we can compare
    if re.search(r"\*\*\s*\(?\s*\d{4,}|\*\*\s*\(*[\w.]+\s*\*\*|\de[+-]?\d{4,}", s, re.I):
        return None  # 9^{99999}, 9^{9^9}, 1e99999: C-level big-number work no alarm can stop
    try:
        tr = standard_transformations + (implicit_multiplication_application, convert_xor)
        return parse_expr(s.replace("binom", "binomial").replace("ln", "log"), transformations=tr, evaluate=True,
                          local_dict={"E": sympy.E, "I": sympy.I, "pi": sympy.pi})
    except Exception:
        return None


def _sympy_equal(a, b):
    ea, eb = _to_sympy(a), _to_sympy(b)
    if ea is None or eb is None or ea.free_symbols != eb.free_symbols:
        return False
    rng = random.Random(0)
    symbols = sorted(ea.free_symbols, key=str)
    # equal at random points <=> equal as functions (with overwhelming probability); no simplify() hangs
    for _ in range(3 if symbols else 1):
        point = {x: rng.uniform(0.5, 2.5) for x in symbols}
        va, vb = complex(ea.evalf(subs=point)), complex(eb.evalf(subs=point))
        if not all(map(math.isfinite, (va.real, va.imag, vb.real, vb.imag))):
            return False
        if abs(va - vb) > 1e-6 * max(abs(va), abs(vb)) and abs(va - vb) > 1e-12:
            return False
    return True


def _equal(pred, gold):
    if pred == gold or pred.lower() == gold.lower():
        return True
    if _choice(gold):
        return _choice(pred) == _choice(gold)
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
    if "\\cup" in gold or "\\cup" in pred:
        return _same_multiset(_split_top(pred, "\\cup"), _split_top(gold, "\\cup"))
    pe, ge = _split_top(pred, ","), _split_top(gold, ",")
    if len(pe) > 1 or len(ge) > 1 or _brackets(gold) or _brackets(pred):
        return _structure_equal(pred, gold)
    return _sympy_equal(pred, gold)


def _brackets(s):
    if s.startswith("\\{") and s.endswith("\\}"):
        return "{}"
    return s[0] + s[-1] if len(s) > 1 and s[0] in "([" and s[-1] in ")]" and _split_top(s[1:-1], ",")[0] != s[1:-1] else None


def _structure_equal(pred, gold):
    """Tuples and intervals keep order and brackets; sets and bare lists of answers ignore order."""
    bp, bg = _brackets(pred), _brackets(gold)
    inner = lambda s, b: s[2:-2] if b == "{}" else (s[1:-1] if b else s)
    pe, ge = _split_top(inner(pred, bp), ","), _split_top(inner(gold, bg), ",")
    if bg in (None, "{}") and bp in (None, "{}"):
        return _same_multiset(pe, ge)
    return bp == bg and len(pe) == len(ge) and all(map(_equal, pe, ge))


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
