"""grading.py: table-driven cases by category, cases built from the benchmarks' gold answers, and fuzz."""
import glob
import os
import random
import re
import time

import pytest

import grading
from conftest import BENCHMARKS

B = lambda s: "The answer is therefore \\boxed{" + s + "}."  # a response that boxes s
X = lambda s: "\\boxed{" + s + "}"  # a box alone
FS = lambda s: "Final Answer: The final answer is " + s + ". I hope it is correct."  # the MATH few-shot format

EXTRACT = [  # (response, extracted answer)
    ("so \\boxed{5}", "5"),
    ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    ("first \\boxed{3}, then corrected: \\boxed{4}", "4"),  # the LAST box
    ("\\boxed{\\{1, \\{2\\}\\}}", "\\{1, \\{2\\}\\}"),  # nested braces
    ("\\boxed {7}", "7"),
    ("$\\boxed{x^{2}}$", "x^{2}"),
    ("\\[\\boxed{\\sqrt{3}}\\]", "\\sqrt{3}"),
    ("\\fbox{12}", "12"),
    ("\\boxed{\\boxed{9}}", "9"),
    ("The final answer is $42$. I hope it is correct.", "42"),
    ("Final Answer: 3.5", "3.5"),
    ("Thus the answer is 17.", "17"),
    ("the answer is \\(x+1\\)", "x+1"),
    ("no answer here", None),
    ("\\boxed{unclosed", None),
    ("", None),
    (None, None),
]


@pytest.mark.parametrize("text, want", EXTRACT)
def test_extract_answer(text, want):
    assert grading.extract_answer(text) == want


CASES = {  # category -> [(response, gold, equal?)]
    "integers and separators": [
        (B("1,000"), "1000", True), (B("1\\,000"), "1000", True), (B("1{,}000"), "1000", True),
        (B("1 000 000"), "1000000", True), (B("12,345"), "12345", True), (B("1000"), "1,000", True),
        (B("1001"), "1000", False), (B("-5"), "5", False), (B("05"), "5", True), (B("5.0"), "5", True),
        (B("2,4"), "24", False), (B("100"), "10", False),
    ],
    "decimals and fractions": [
        (B("0.5"), "\\frac12", True), (B("\\frac12"), "0.5", True), (B("\\dfrac{1}{2}"), "\\frac{1}{2}", True),
        (B("1/2"), "\\frac{1}{2}", True), (B("\\tfrac{3}{4}"), "0.75", True), (B("-\\frac{1}{3}"), "-1./3", True),
        (B("\\frac{2}{4}"), "\\frac12", True), (B("0.333"), "\\frac13", False), (B("\\frac{1}{3}"), "\\frac{1}{4}", False),
        (B("\\frac{3}{2}"), "\\frac{2}{3}", False), (B(".5"), "0.5", True), (B("\\frac{-1}{2}"), "-0.5", True),
    ],
    "percent": [
        (B("10\\%"), "10", True), (B("10"), "10\\%", True), (B("0.1"), "10\\%", True), (B("10\\%"), "0.1", True),
        (B("20\\%"), "10\\%", False), (B("12.5\\%"), "12.5", True), (B("11"), "10\\%", False),
    ],
    "scientific notation": [
        (B("4.5e33"), "4.5 \\times 10^{33}", True), (B("4.5 \\times 10^{33}"), "4.5e33", True),
        (B("6.5e-27"), "6.5 \\times 10^{-27}", True), (B("1.3e-5"), "1.3 \\times 10^{-5}", True),
        (B("10^{5}"), "100000", True), (B("4.5e32"), "4.5 \\times 10^{33}", False), (B("2e3"), "2000", True),
        (B("1.6"), "1.6e0", True), (B("3 \\cdot 10^{8}"), "3e8", True),
    ],
    "text and units": [
        (B("5\\text{ cm}"), "5", True), (B("5 \\mbox{ inches}"), "5", True), (B("30^\\circ"), "30", True),
        (B("30^{\\circ}"), "30", True), (B("90°"), "90", True), (B("\\mathrm{12}"), "12", True),
        (B("\\text{Evelyn}"), "\\text{Evelyn}", True), (B("Evelyn"), "\\text{Evelyn}", True),
        (B("\\text{yes}"), "Yes", True), (B("\\text{no}"), "yes", False), (B("\\$18.90"), "18.90", True),
        (B("6\\mathrm{~m}"), "6", True), (B("7\\text{ cm}"), "6", False), (B("\\textbf{4}"), "4", True),
    ],
    "equations": [
        (B("x = 3"), "3", True), (B("3"), "x=3", True), (B("y = 2x + 1"), "2x+1", True), (B("k=-2"), "-2", True),
        (B("x = 4"), "3", False), (B("f(x) = x^2"), "x^2", True), (B("\\theta = \\frac{\\pi}{2}"), "\\frac{\\pi}{2}", True),
    ],
    "roots, pi, algebra": [
        (B("2\\sqrt{3}"), "\\sqrt{12}", True), (B("\\frac{\\sqrt{2}}{2}"), "\\frac{1}{\\sqrt2}", True),
        (B("\\sqrt{2}"), "1.41421356", True), (B("\\sqrt{3}"), "\\sqrt{2}", False), (B("\\frac{\\pi}{2}"), "\\pi/2", True),
        (B("2\\pi"), "\\pi", False), (B("x^2+2x+1"), "(x+1)^2", True), (B("x^2+2x"), "(x+1)^2", False),
        (B("\\frac{x+1}{2}"), "\\frac{1}{2}x+\\frac12", True), (B("3\\sqrt[3]{2}"), "\\sqrt[3]{54}", True),
        (B("a+b"), "b+a", True), (B("a-b"), "b-a", False), (B("\\pi r^2"), "r^2\\pi", True),
        (B("2^{10}"), "1024", True), (B("\\binom{5}{2}"), "10", True), (B("5!"), "120", True),
        (B("e^2"), "e^{2}", True), (B("\\ln 2"), "\\log 2", True), (B("\\sin(\\pi/6)"), "\\frac12", True),
        (B("x+y"), "x+z", False), (B("4-2\\sqrt{3}"), "(\\sqrt3-1)^2", True),
    ],
    "intervals and inequalities": [
        (B("(-\\infty, 3]"), "x \\le 3", True), (B("x \\leq 3"), "(-\\infty,3]", True), (B("x > 2"), "(2, \\infty)", True),
        (B("[2,5)"), "2 \\le x < 5", True), (B("(2,5)"), "[2,5)", False), (B("x < 3"), "x \\le 3", False),
        (B("(-\\infty,0)\\cup(1,\\infty)"), "(-\\infty, 0) \\cup (1, \\infty)", True),
        (B("(1,\\infty)\\cup(-\\infty,0)"), "(-\\infty,0)\\cup(1,\\infty)", True),
        (B("[0,1]"), "[0, 1)", False), (B("3 < x"), "(3,\\infty)", True), (B("\\left[ 1, 2 \\right]"), "[1,2]", True),
    ],
    "tuples, coordinates and sets": [
        (B("(1,2)"), "(1, 2)", True), (B("(1,2)"), "(2,1)", False), (B("\\left( 3, \\frac{\\pi}{2} \\right)"), "(3,\\pi/2)", True),
        (B("\\{1,2,3\\}"), "\\{3,2,1\\}", True), (B("1, 2, 3"), "3,2,1", True), (B("1,2"), "1,2,3", False),
        (B("(0.5, 1)"), "(\\frac12, 1)", True), (B("\\{1,2\\}"), "\\{1,3\\}", False), (B("-2, 5"), "5, -2", True),
        (B("(1,2,3)"), "(1,2)", False), (B("\\emptyset"), "\\varnothing", True),
    ],
    "matrices": [
        (B("\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}"), "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", True),
        (B("\\begin{bmatrix} 1 & 2 \\\\ 3 & 4 \\end{bmatrix}"), "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", True),
        (B("\\begin{pmatrix} 1 & 2 \\\\ 3 & 5 \\end{pmatrix}"), "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", False),
        (B("\\begin{pmatrix} \\frac12 \\\\ 2 \\end{pmatrix}"), "\\begin{pmatrix} 0.5 \\\\ 2 \\end{pmatrix}", True),
        (B("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}"), "(1,2)", False),
    ],
    "multiple choice": [
        (B("(B)"), "B", True), (B("\\text{(B)}"), "B", True), (B("B"), "(B)", True), (B("(C)"), "B", False),
        (B("\\textbf{(D) }17"), "D", True), (B("E"), "\\text{(E)}", True), (B("A"), "B", False),
    ],
    "latex noise": [
        (B("\\left( 1, 2 \\right)"), "(1,2)", True), (B("1\\!000"), "1000", True), (B("3\\;"), "3", True),
        (B("$5$"), "5", True), (B("\\displaystyle\\frac{1}{2}"), "0.5", True), (B("5."), "5", True),
        (B("\\big(1,2\\big)"), "(1,2)", True), (B("10\\ \\text{dollars}"), "10", True), (B("\\left( 1, 3 \\right)"), "(1,2)", False),
    ],
    "real benchmark answers": [
        (B("(3, \\frac{\\pi}{2})"), "\\left( 3, \\frac{\\pi}{2} \\right)", True),  # MATH-500 #1
        (B("(3, \\pi/2)"), "\\left( 3, \\frac{\\pi}{2} \\right)", True),
        (B("(3, \\pi)"), "\\left( 3, \\frac{\\pi}{2} \\right)", False),
        (B("204 \\text{ minutes}"), "204", True), (B("27"), "27", True), (B("70"), "70", True),  # AIME, AMC
        (B("1.60 \\mathrm{~cm}"), "1.6", True), (B("1.63"), "1.6", False),  # Minerva: values, not rounding
        (B("2 \\times 10^{-3}"), "0.002", True), (B("7.5 \\times 10^{-4}"), "7.5e-4", True),
        (B("\\frac{1}{2 n+2}"), "\\frac{1}{2n+2}", True), (B("2n-2"), "2 n-2", True),  # OlympiadBench
        (B("2n-1"), "2 n-2", False), (B("-\\frac{n-1}{2}"), "-(n-1)/2", True),
        (B("\\frac{14}{3}"), "\\dfrac{14}{3}", True), (B("4.67"), "\\frac{14}{3}", False),
        (B("\\text{Tuesday}"), "\\text{Monday}", False), (B("6 - 5i"), "6-5i", True), (B("5i + 6"), "6-5i", False),
        (B("\\$ 32,348"), "\\$32,\\!348", True), (B("10\\sqrt{2}"), "\\sqrt{200}", True),
    ],
}
FS = lambda s: "Final Answer: The final answer is " + s + ". I hope it is correct."
CASES.update({
    "few-shot final answer sentence": [
        (FS("$3,000,014$"), "3000014", True), (FS("3000014"), "3,000,014", True), (FS("$\\frac{x+1}{2}$"), "\\frac{1}{2}x+\\frac12", True),
        (FS("\\(12\\)") + "<|im_end|>", "12", True), (FS("$12$") + "<|endoftext|>", "12", True), (FS("$13$"), "12", False),
        ("Final Answer: The final answer is 7. I hope it is correct.\n\nProblem: 5+5\nSolution: The final answer is 10.", "10", True),
        (FS("$x^2 + 1$"), "x^2+2", False),
    ],
    "inequality spellings and solution sets": [
        (B("x \\geq 3"), "[3,\\infty)", True), (B("x \\ge 3"), "x\\geqslant 3", True), (B("x >= 3"), "x \\geq 3", True),
        (B("x \\lt 2"), "(-\\infty, 2)", True), (B("x \\gt 2"), "x>2", True), (B("x<=1"), "x \\leq 1", True),
        (B("-x > -1"), "x < 1", True), (B("2x + 1 \\le 5"), "x \\le 2", True), (B("x \\neq 3"), "(-\\infty,3)\\cup(3,\\infty)", True),
        (B("x != 3"), "x \\ne 3", True), (B("x > 1"), "x < 1", False), (B("-x > -1"), "x > 1", False),
        (B("x \\geq 3"), "x > 3", False), (B("x \\neq 3"), "x \\neq 2", False), (B("x < -1 \\text{ or } x > 2"), "(-\\infty,-1)\\cup(2,\\infty)", True),
        (B("5 > x > -2"), "(-2, 5)", True), (B("x < -1 \\text{ or } x > 3"), "(-\\infty,-1)\\cup(2,\\infty)", False),
    ],
    "labels, several answers, plus-minus": [
        (B("(5,1)"), "(a,b)=(5,1)", True), (B("(1,5)"), "(a,b)=(5,1)", False), (B("3:8"), "S_1:S_2 = 3:8", True),
        (B("4"), "|PQ| = 4", True), (B("5"), "|PQ| = 4", False), (B("2"), "\\frac{PM}{MQ} = 2", True),
        (B("1 \\text{ and } 2"), "1, 2", True), (B("1 and 3"), "1, 2", False), (B("-1 or 4"), "4, -1", True),
        (B("2; 5"), "5, 2", True), (B("2 \\pm \\sqrt{7}"), "2+\\sqrt{7}, 2-\\sqrt{7}", True),
        (B("2+\\sqrt7, 2-\\sqrt7"), "2 \\pm \\sqrt{7}", True), (B("2 + \\sqrt{7}"), "2 \\pm \\sqrt{7}", False),
        (B("\\pm 17"), "\\{-17, 17\\}", True), (B("17"), "\\pm 17", False), (B("a = 2,\\ b = \\frac{7}{3}"), "(2, \\frac73)", True),
        (B("b = \\frac{7}{3}, a = 2"), "a=2, b=7/3", True), (B("a = 3, b = 2"), "a=2, b=3", False),
        (B("a = \\frac73,\\ b = 2"), "(2, \\frac73)", False), (B("x + y = 5"), "x - y = 5", False), (B("\\{1, 2\\}"), "\\{1, 2, 3\\}", False),
    ],
    "equations as relations": [
        (B("3x-6y+2=0"), "y = \\frac12 x + \\frac13", True), (B("y = \\frac{1}{2}x + \\frac{1}{3}"), "3x - 6y + 2 = 0", True),
        (B("2x + 4y = 8"), "x + 2y = 4", True), (B("x^2 + y^2 = 4"), "2x^2 + 2y^2 - 8 = 0", True),
        (B("3x-6y+3=0"), "3x-6y+2=0", False), (B("y = 2x + 1"), "y = 2x - 1", False), (B("x + 2y = 4"), "2x + y = 4", False),
        (B("y = x^2"), "y = x^3", False),
    ],
    "thousands": [
        (B("3,000,014"), "3000014", True), (B("27{,}305"), "27305", True), (B("20,\\!160"), "20160", True),
        (B("4,\\! 210"), "4210", True), (B("\\$4,\\!210"), "4210", True), (B("3000014"), "3,000,014", True),
        (B("20160"), "20,\\!160", True), (B("3,000,015"), "3000014", False), (B("20,\\!161"), "20160", False),
    ],
    "expressions": [
        (B("2-i\\sqrt5"), "2-\\sqrt5 i", True), (B("2+i\\sqrt5"), "2-\\sqrt5 i", False), (B("\\frac19 q^{-3}"), "\\frac{1}{9q^3}", True),
        (B("\\left\\lfloor \\frac{n}{2} \\right\\rfloor"), "\\lfloor n/2 \\rfloor", True), (B("\\lfloor 7/2 \\rfloor"), "3", True),
        (B("\\lceil 7/2 \\rceil"), "3", False), (B("b R^{2/5}"), "bR^{2/5}", True), (B("b R^{3/5}"), "bR^{2/5}", False),
        (B("3x^2 - 2x + 1"), "1 - 2x + 3x^2", True), (B("ab + cd"), "dc + ba", True), (B("ab - cd"), "dc - ba", False),
        (B("\\frac{1}{9}q^{-2}"), "\\frac{1}{9q^3}", False), (B("\\theta + 1"), "1+\\theta", True),
    ],
    "intervals": [
        (B("x \\in [-1,4]"), "[-1,4]", True), (B("[-1,4]"), "x \\in [-1, 4]", True), (B("(2, +\\infty)"), "(2,\\infty)", True),
        (B("[0.5, 3)"), "[\\frac12, 3)", True), (B("[0.5, 3]"), "[\\frac12, 3)", False), (B("x \\in [-1,5]"), "[-1,4]", False),
        (B("(-\\infty, -\\frac{1}{2}]"), "(-oo, -0.5]", True),
    ],
    "number bases": [
        (B("61_7"), "61_{7}", True), (B("35_{9}"), "35_9", True), (B("61"), "61_7", True), (B("62_7"), "61_7", False),
        (B("1011_2"), "1011_{2}", True), (B("1010_2"), "1011_2", False),
    ],
    "matrices in other environments": [
        (B("\\begin{bmatrix} 1 & 0 \\\\ 0 & 1 \\end{bmatrix}"), "\\begin{pmatrix} 1 & 0 \\\\ 0 & 1 \\end{pmatrix}", True),
        (B("\\left[ \\begin{array}{cc} 1 & 2 \\\\ 3 & 4 \\end{array} \\right]"), "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", True),
        (B("\\left[ \\begin{array}{cc} 1 & 2 \\\\ 3 & 5 \\end{array} \\right]"), "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", False),
    ],
    "percent words, units, degrees, wrappers, radicals": [
        (B("15 pct"), "15\\%", True), (B("15 percent"), "15", True), (B("16 percent"), "15\\%", False),
        (B("12\\textnormal{ km}"), "12", True), (B("3\\text{ m/s}"), "3", True), (B("4\\text{ m/s}"), "3", False),
        (B("40 degrees"), "40", True), (B("40"), "40^\\circ", True), (B("41 degrees"), "40", False),
        (B("\\left( 5 \\right)"), "5", True), (B("\\left( \\frac12 \\right)"), "0.5", True),
        (B("\\sqrt{12.5}"), "\\frac{5\\sqrt{2}}{2}", True), (B("\\sqrt{12.6}"), "\\frac{5\\sqrt{2}}{2}", False),
    ],
})
CASES.update({  # issue 18: no false accepts, and the shapes real models write
    "a label is part of the answer": [
        (B("P = (2, 3)"), "P = (2, 3)", True), (B("(2, 3)"), "P = (2, 3)", True), (B("P = (2, 3)"), "(2, 3)", True),
        (B("P = (2, 3.5)"), "P = (2, 3)", False), (B("Q = (2, 3)"), "P = (2, 3)", False),
        (B("y = 3"), "x = 3", False), (B("X = 3"), "x = 3", True), (B("x = 3"), "x = 3.0", True),
        (B("\\frac{PB}{AP} = \\frac{1}{2}"), "\\frac{AP}{PB} = \\frac{1}{2}", False),
        (B("|QR| = 4"), "|PQ| = 4", False), (B("b = 2, a = 1"), "a = 1, b = 2", True),
        (B("a = 1, c = 2"), "a = 1, b = 2", False),
    ],
    "a base subscript is part of the number": [
        (B("21_3"), "21_4", False), (B("21_4"), "21_{4}", True), (B("1011_2"), "11_{10}", True),
        (B("204_5"), "204_{5}", True), (B("203_5"), "204_5", False), (B("A_{16}"), "10_{16}", False),
        (B("A_{16}"), "10_{10}", True),
    ],
    "several boxes that together are the answer": [
        ("So the pairs are " + X("(1, 4)") + " \\text{ and } " + X("(5, 3)") + ".", "(1, 4), (5, 3)", True),
        ("So the pairs are " + X("(1, 4)") + " \\text{ and } " + X("(5, 4)") + ".", "(1, 4), (5, 3)", False),
        ("The roots are $" + X("2") + "$, $" + X("4") + "$, and $" + X("6") + "$.", "\\{2,4,6\\}", True),
        ("The roots are " + X("2") + ", " + X("4") + ", " + X("7"), "\\{2,4,6\\}", False),
        (B("2, 4, 6"), X("2") + ", " + X("4") + ", " + X("6"), True),
        (B("2, 4"), X("2") + ", " + X("4") + ", " + X("6"), False),
        ("first " + X("3") + " is only a step, so the answer is " + X("5"), "5", True),
        ("first " + X("3") + " is only a step, so the answer is " + X("5"), "3, 5", False),
        ("The answer is " + X("5") + ".\n\n" + X("5"), "5", True), ("x = " + X("5") + " or " + X("-5"), "\\pm 5", True),
    ],
    "a sentence in the box": [
        (B("So $y \\leq 4$ is the answer."), "y \\le 4", True), (B("So $y \\leq 5$ is the answer."), "y \\le 4", False),
        (B("The zero matrix $\\begin{pmatrix}0&0\\\\0&0\\end{pmatrix}$ works."),
         "\\begin{pmatrix}0&0\\\\0&0\\end{pmatrix}", True),
        (B("The zero matrix $\\begin{pmatrix}0&1\\\\0&0\\end{pmatrix}$ works."),
         "\\begin{pmatrix}0&0\\\\0&0\\end{pmatrix}", False),
        (B("It is not $2$."), "2", False), (B("The answer is $2$ or $3$."), "2", False),
    ],
    "an unboxed final line": [
        ("Final Answer: The smallest $k$ is 12.", "12", True), ("Final Answer: The smallest $k$ is 13.", "12", False),
        ("So we are done.\nAnswer $ 7 $", "7", True), ("Answer \\[ 7 \\]", "7", True), ("Answer $ 8 $", "7", False),
        ("**Answer:** $\\frac{1}{2}$", "0.5", True), ("**Answer:** $\\frac{1}{3}$", "0.5", False),
        ("We compute and find the answer 12 after a long time", "12", False),
    ],
    "cfrac, bold units, percentage": [
        (B("\\cfrac{1}{3}"), "1/3", True), (B("\\cfrac{1}{4}"), "1/3", False),
        (B("\\frac{1}{3} \\textbf{meters}"), "\\frac13", True), (B("\\frac{1}{4} \\textbf{meters}"), "\\frac13", False),
        (B("28 percentage"), "28\\%", True), (B("29 percentage"), "28\\%", False),
    ],
    "a relation against its solution set": [  # a chain a < f(x) < b is the interval (a, b): a range is a set
        (B("x \\in [-3, 5]"), "-3 \\le x \\le 5", True), (B("-3 \\le x \\le 5"), "[-3, 5]", True),
        (B("x \\in [-3, 5)"), "-3 \\le x \\le 5", False), (B("2 < g(x) < 3"), "(2, 3)", True),
        (B("2 < g(x) < 4"), "(2, 3)", False), (B("(2, 3)"), "2 < f(x) < 3", True),
    ],
    "a decimal comma": [
        (B("3,75"), "3.75", True), (B("3,76"), "3.75", False), (B("0,111"), "0.111", True),
        (B("1000,99"), "1000.99", True), (B("3,75"), "3, 75", True), (B("1,000"), "1000", True),
        (B("1,000"), "1", False), (B("2,4"), "\\{2,4\\}", True), (B("-3"), "-3,0", False), (B("3,0"), "3", False),
    ],
})
TABLE = [(cat, *case) for cat, cases in CASES.items() for case in cases]


@pytest.mark.parametrize("category, response, gold, want", TABLE, ids=[f"{c}-{i}" for i, (c, *_) in enumerate(TABLE)])
def test_grade_table(category, response, gold, want):
    assert grading.grade(response, gold) is want


def test_the_table_is_large_enough():
    assert len(TABLE) + len(EXTRACT) >= 250
    for category, cases in CASES.items():  # every class is pinned in both directions
        assert {want for _, _, want in cases} == {True, False}, category


def benchmark_golds():
    from plumbing import data
    golds = []
    for path in sorted(glob.glob(os.path.join(BENCHMARKS, "*.parquet"))):
        golds += [q["answer"] for q in data.load_questions(path)]
    return golds


def variants(gold):
    """(equal forms, unequal forms) of a gold answer, by what kind of answer it is."""
    same, other = ["$" + gold + "$", " " + gold + " ", "\\boxed{" + gold + "}"], []
    if re.fullmatch(r"-?\d+", gold):
        n = int(gold)
        same += [f"{n:,}", f"{n}.0", f"x = {n}", f"{n}\\text{{ units}}"]
        other += [str(n + 1), str(n * 10 + 1), str(-n - 1)]
    elif (m := re.fullmatch(r"\\[dt]?frac\{(\d+)\}\{(\d+)\}", gold)) and m.group(1) != m.group(2):
        a, b = m.groups()
        same += [f"{a}/{b}", f"\\dfrac{{{a}}}{{{b}}}"]
        other += [f"\\frac{{{b}}}{{{a}}}", f"\\frac{{{a}}}{{{int(b) + 1}}}"]
    elif re.fullmatch(r"-?\d+\.\d+", gold):
        same += [gold + "0"]
        other += [str(float(gold) + 1)]
    return same, other


def rewritten(gold):
    """(responses equal to gold, responses not equal), whatever kind of answer gold is: labelled, in the
    few-shot sentence, sets and lists reordered or joined by 'and'; tuples reordered, an element changed or dropped."""
    same = [B(gold) + "<|im_end|>"] + ([] if re.search(r"(?<!\\)\$", gold) else [FS("$" + gold + "$")])
    other = []
    plain = not re.search(r"[=<>]|\\(?:le|ge|ne|text|in)|\\begin|^[A-E]$", gold)
    if plain:
        same.append(B("\\text{answer} = " + gold))
    parts = grading._split_top(grading.clean(gold), ",")
    brackets = grading._brackets(grading.clean(gold))
    if plain and len(parts) > 1 and brackets is None and len(set(parts)) == len(parts):  # a bare list: order-free
        same += [B(", ".join(reversed(parts))), B(" \\text{ and } ".join(parts))]
        other += [B(", ".join(parts[:-1]))]
    if plain and brackets == "()" and len(parts) == 2 and len(set(parts)) == 2:  # a tuple: order matters
        inner = grading._split_top(grading.clean(gold)[1:-1], ",")
        if not grading._equal(inner[0], inner[1]):
            other.append(B(f"({inner[1]}, {inner[0]})"))
    return same, other


@pytest.mark.skipif(not os.path.isdir(BENCHMARKS), reason="needs ../shared/data/benchmarks beside the checkout")
def test_benchmark_golds_rewritten_are_graded_right_and_perturbed_wrong():
    checked, wrong = 0, []
    for gold in benchmark_golds():
        same, other = rewritten(gold)
        wrong += [("should equal", r, gold) for r in same if not grading.grade(r, gold)]
        wrong += [("should differ", r, gold) for r in other if grading.grade(r, gold)]
        checked += len(same) + len(other)
    assert checked > 4000
    assert not wrong, wrong[:10]


@pytest.mark.skipif(not os.path.isdir(BENCHMARKS), reason="needs ../shared/data/benchmarks beside the checkout")
def test_benchmark_golds_in_other_forms():
    golds = benchmark_golds()
    assert len(golds) > 1500
    checked, wrong = 0, []
    for gold in golds:
        same, other = variants(gold)
        for form in same:
            checked += 1
            if not grading.grade(B(form), gold):
                wrong.append(("should equal", form, gold))
        for form in other:
            checked += 1
            if grading.grade(B(form), gold):
                wrong.append(("should differ", form, gold))
    assert checked > 5000
    assert not wrong, wrong[:10]


def test_fuzz_never_raises_and_returns_fast():
    rng = random.Random(0)
    alphabet = list("0123456789+-*/^_{}()[]\\$.,=<>!|&% xe") + ["\\frac", "\\sqrt", "\\boxed{", "\\left(", "\\right)",
                                                                  "^{9^{9}}", "\\begin{pmatrix}", "\\\\", "\\infty", "1e999"]
    nasty = ["\\boxed{" * 500, "}" * 500 + "\\boxed{1}", "\\boxed{9^{9^{9^{9}}}}", "\\boxed{10^{10^{10^{10}}}}",
             "\\boxed{" + "(" * 300 + ")" * 300 + "}", "\\boxed{1e99999999}", "\\boxed{" + "x^" * 200 + "2}",
             "\\boxed{\\frac{\\frac{\\frac{1}{0}}{0}}{0}}", "\\boxed{__import__('os')}", "\\boxed{" + "9" * 5000 + "}",
             "\\boxed{(2^{100000})!}", "\\boxed{x^{999999}-1}"]
    inputs = nasty + ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 80))) for _ in range(400)]
    worst = 0.0
    for text in inputs:
        for gold in ("1", "x^2", "(1,2)", text):
            t0 = time.perf_counter()
            verdict = grading.grade(text, gold)
            worst = max(worst, time.perf_counter() - t0)
            assert verdict in (True, False)
        grading.extract_answer(text)
    assert worst < 0.8, f"slowest call took {worst:.2f}s"


@pytest.mark.parametrize("text, want", [("so \\boxed{\\frac{1}{2}}.", True), ("\\fbox{4}", True),
                                        ("cut off: \\boxed{\\frac{1}{2}", False), ("The answer is 4.", False),
                                        ("\\boxed{3} then \\boxed{4", True)])
def test_boxed_counts_only_a_closed_box(text, want):
    assert grading.boxed(text) is want
