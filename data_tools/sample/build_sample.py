#!/usr/bin/env python3
"""Build the bundled sample Stack Exchange dump ``data_tools/sample/Posts.xml``.

Usage::

    python data_tools/sample/build_sample.py            # writes data_tools/sample/Posts.xml
    python data_tools/sample/build_sample.py -o OUT.xml # writes elsewhere

Standard library only and fully deterministic: the same ``threads/*.json``
give a byte-identical ``Posts.xml`` (no clock, no ``random``; every "random"
choice is a SHA-256 hash of stable keys).

Sources
-------
``threads/*.json`` are read in sorted file-name order.  Each file holds a list
of threads written for this project (original content, not copied from any
real dump)::

    {"title": str,          # plain text (NOT HTML-escaped), as the dump stores titles
     "tags": [str, ...],
     "score": int,
     "body": str,           # HTML as Stack Exchange stores it: <p>, $..$ MathJax,
                            # and a < > & inside math written as &lt; &gt; &amp;
     "answers": [{"score": int, "body": str}, ...],
     "accepted": int}       # optional: index of the accepted answer, or -1 for none

Output format (as the real data dump)
-------------------------------------
* UTF-8 BOM, ``<?xml version="1.0" encoding="utf-8"?>``, root ``<posts>``,
  one ``<row .../>`` per line indented by two spaces, no newline after
  ``</posts>``.
* Every field is an attribute; values are escaped like the dump does:
  ``&`` ``<`` ``>`` ``"`` become ``&amp;`` ``&lt;`` ``&gt;`` ``&quot;`` and
  newlines become ``&#xA;``.  Because bodies are already HTML, a ``<`` in math
  ends up as ``&amp;lt;`` in the file, as on the real math site.
* Attribute order follows the dump: Id, PostTypeId, AcceptedAnswerId,
  ParentId, CreationDate, Score, ViewCount, Body, OwnerUserId,
  OwnerDisplayName, LastEditorUserId, LastEditDate, LastActivityDate, Title,
  Tags, AnswerCount, CommentCount, FavoriteCount, ClosedDate,
  CommunityOwnedDate, ContentLicense.
* Rows are sorted by Id; Ids grow with CreationDate and have gaps (deleted
  posts).  Threads from all source files are interleaved on one timeline
  (2011-2023).  Most answers come minutes to days after their question, some
  months or years later, so they appear in the file after other questions.

Deliberate irregularities (fixtures for the data pipeline tests)
----------------------------------------------------------------
* Tags use BOTH formats: the older half of the questions (by date) use
  ``Tags="&lt;a&gt;&lt;b&gt;"`` (and some carry FavoriteCount), the newer half
  ``Tags="|a|b|"``.  A real dump uses one format; the sample mixes them.
* Tag-wiki rows: PostTypeId 4 (excerpt, plain text) and 5 (wiki, HTML; one
  with an empty Body), some carrying a Title attribute (to be ignored).
* One PostTypeId 6 (moderator nomination) and one PostTypeId 7 (wiki
  placeholder) row.
* One orphan answer whose ParentId names an Id that is not in the file.
* One question whose AnswerCount disagrees with its actual answers (+1).
* One question without ViewCount and without LastEditor*/LastEditDate, one
  question with OwnerDisplayName instead of OwnerUserId, one closed question
  (ClosedDate), one community-wiki question (CommunityOwnedDate).
* Questions without answers, negative/zero/tied and multi-digit scores come
  from the sources themselves.
* ContentLicense: "CC BY-SA 3.0" before 2018-05-02, "CC BY-SA 4.0" after.
"""
from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
THREADS_DIR = os.path.join(HERE, "threads")
DEFAULT_OUT = os.path.join(HERE, "Posts.xml")

START = dt.datetime(2011, 3, 7, 9, 14, 27, 310000)
END = dt.datetime(2023, 11, 20, 18, 0, 0)
LICENSE_SWITCH = dt.datetime(2018, 5, 2)
COMMUNITY = -1

ATTR_ORDER = [
    "Id", "PostTypeId", "AcceptedAnswerId", "ParentId", "CreationDate", "Score",
    "ViewCount", "Body", "OwnerUserId", "OwnerDisplayName", "LastEditorUserId",
    "LastEditDate", "LastActivityDate", "Title", "Tags", "AnswerCount",
    "CommentCount", "FavoriteCount", "ClosedDate", "CommunityOwnedDate",
    "ContentLicense",
]

# ---------------------------------------------------------------- special rows
# Tag wikis written for this project: (tag, excerpt, wiki body, excerpt has Title)
TAG_WIKIS = [
    ("number-theory",
     "Questions on the properties of the integers: divisibility, primes, congruences, "
     "Diophantine equations and arithmetic functions.",
     "<p>Number theory studies the integers $\\mathbb{Z}$ and related structures. Typical "
     "topics are divisibility and the Euclidean algorithm, prime numbers, congruences "
     "$a \\equiv b \\pmod n$, quadratic residues and Diophantine equations such as "
     "$x^2 + y^2 = z^2$.</p>\n\n<p>For questions that need only congruences and the "
     "Euclidean algorithm, prefer <a href=\"https://math.example.org/tags/elementary-number-theory\">"
     "elementary-number-theory</a>.</p>\n", True),
    ("group-theory",
     "Questions about groups: sets with an associative operation, an identity element "
     "and inverses; subgroups, homomorphisms, quotients and actions.",
     "<p>A <strong>group</strong> is a set $G$ with an associative binary operation, an "
     "identity $e$ and, for each $g \\in G$, an inverse $g^{-1}$.</p>\n\n<ul>\n<li>Lagrange: "
     "if $H \\le G$ and $G$ is finite then $|H|$ divides $|G|$.</li>\n<li>Every group of "
     "prime order is cyclic.</li>\n</ul>\n", False),
    ("induction",
     "For questions about proofs by mathematical induction, strong induction and "
     "well-ordering.",
     "<p>To prove $P(n)$ for all $n \\ge n_0$, prove $P(n_0)$ and that $P(k)$ implies "
     "$P(k+1)$ for every $k \\ge n_0$. In strong induction one assumes $P(j)$ for all "
     "$n_0 \\le j \\le k$.</p>\n", True),
    ("combinatorics",
     "Counting, arrangements, the pigeonhole principle, generating functions and "
     "graphs viewed as finite structures.",
     "", False),
]

NOMINATION = (
    "<p>I have been active here for several years, mostly answering questions in "
    "<em>elementary number theory</em> and <em>combinatorics</em>, and I review the "
    "close and reopen queues most days.</p>\n\n<p>I believe a moderator should act "
    "rarely and explain every action. I would focus on duplicate detection: many "
    "questions about $a^n \\bmod m$ or about induction proofs are asked again and again, "
    "and good canonical answers save everybody time.</p>\n"
)
PLACEHOLDER = "<p>This is a placeholder for the privilege wiki.</p>\n"
ORPHAN_ANSWER = (
    "<p>Reduce modulo $9$: a number is congruent to the sum of its decimal digits, "
    "because $10 \\equiv 1 \\pmod 9$ and so $10^k \\equiv 1$ for every $k \\ge 0$.</p>\n\n"
    "<p>Hence $\\sum_k d_k 10^k \\equiv \\sum_k d_k \\pmod 9$, which is the whole "
    "divisibility test.</p>\n"
)


# ---------------------------------------------------------------- helpers
def h(*keys) -> int:
    """Deterministic 64-bit hash of the keys (stand-in for a RNG)."""
    s = "\x1f".join(str(k) for k in keys).encode("utf-8")
    return int.from_bytes(hashlib.sha256(s).digest()[:8], "big")


def fmt_date(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + "%03d" % (t.microsecond // 1000)


def escape_attr(v: str) -> str:
    bad = [c for c in v if ord(c) < 32 and c not in "\t\n\r"]
    if bad:  # not allowed in XML 1.0 (e.g. a "\f" from an unescaped "\frac")
        raise ValueError("control character %r in %r" % (bad[0], v[:80]))
    return (v.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
             .replace('"', "&quot;").replace("\r", "&#xD;").replace("\n", "&#xA;")
             .replace("\t", "&#x9;"))


def secs(keys, lo, hi) -> dt.timedelta:
    """A deterministic duration between lo and hi seconds (ms resolution)."""
    ms = lo * 1000 + h(*keys) % max(1, (hi - lo) * 1000)
    return dt.timedelta(milliseconds=ms)


def user(keys, pool=900) -> int:
    # A few hundred users, some very active (small ids repeat more often).
    x = h("user", *keys)
    if x % 3 == 0:
        return 11 + (x >> 8) % 40
    return 100 + (x >> 8) % (pool * 97)


def load_threads(threads_dir: str):
    threads = []
    for name in sorted(os.listdir(threads_dir)):
        if not name.endswith(".json"):
            continue
        with open(os.path.join(threads_dir, name), encoding="utf-8") as f:
            data = json.load(f)
        for i, t in enumerate(data):
            for key in ("title", "tags", "score", "body", "answers"):
                if key not in t:
                    raise ValueError(f"{name}[{i}]: missing {key!r}")
            threads.append(dict(t, _src=name, _idx=i))
    return threads


def norm_body(b: str) -> str:
    b = b.strip("\n")
    return b + "\n" if b else ""


# ---------------------------------------------------------------- build
def build(threads):
    # Interleave all sources on one timeline: a deterministic shuffle by hash.
    order = sorted(threads, key=lambda t: h("order", t["_src"], t["title"]))
    n = len(order)
    span = (END - START).total_seconds() * 0.93
    posts = []  # dicts with attrs + "_t" (creation time) + "_kind"
    for qi, t in enumerate(order):
        key = (t["_src"], t["title"])
        base = START + dt.timedelta(seconds=span * qi / max(1, n))
        qt = base + secs(key + ("q",), 0, int(span / max(1, n) * 0.8))
        q = {"_kind": "q", "_t": qt, "_thread": t, "_key": key, "_answers": []}
        posts.append(q)
        for ai, a in enumerate(t["answers"]):
            r = h("late", *key, ai) % 100
            if r < 12:      # much later: months to years
                at = qt + secs(key + ("a", ai), 60 * 86400, 900 * 86400)
            elif r < 40:    # days
                at = qt + secs(key + ("a", ai), 3600, 20 * 86400)
            else:           # minutes to hours
                at = qt + secs(key + ("a", ai), 90, 6 * 3600)
            at = min(at, END)
            ans = {"_kind": "a", "_t": at, "_thread": t, "_key": key, "_ai": ai,
                   "_a": a, "_q": q}
            q["_answers"].append(ans)
            posts.append(ans)

    # Special rows on the same timeline.
    for wi, (tag, excerpt, wiki, titled) in enumerate(TAG_WIKIS):
        wt = START + dt.timedelta(days=200 + 700 * wi) + secs(("wiki", tag), 0, 86400)
        posts.append({"_kind": "excerpt", "_t": wt, "tag": tag, "body": excerpt,
                      "titled": titled})
        posts.append({"_kind": "wiki", "_t": wt, "tag": tag, "body": wiki,
                      "titled": wi == 1})
    posts.append({"_kind": "nomination",
                  "_t": dt.datetime(2016, 10, 4, 20, 3, 11, 870000)})
    posts.append({"_kind": "placeholder",
                  "_t": dt.datetime(2013, 2, 1, 0, 0, 0, 0)})
    posts.append({"_kind": "orphan",
                  "_t": dt.datetime(2015, 6, 18, 7, 41, 55, 20000)})
    posts.append({"_kind": "deleted_parent",  # never written: makes the orphan
                  "_t": dt.datetime(2015, 6, 18, 6, 2, 9, 400000)})

    # Ids by creation time, with gaps; excerpt before its wiki at equal times.
    rank = {"excerpt": 0, "wiki": 1}
    posts.sort(key=lambda p: (p["_t"], rank.get(p["_kind"], 2)))
    nid = 3
    for i, p in enumerate(posts):
        nid += 1 + (h("gap", i) % 7 == 0) * (1 + h("gap2", i) % 4)
        p["Id"] = nid
    deleted_parent = next(p["Id"] for p in posts if p["_kind"] == "deleted_parent")

    questions = [p for p in posts if p["_kind"] == "q"]
    nq = len(questions)
    answered = [q for q in questions if len(q["_answers"]) >= 2]
    # Choose the special questions deterministically by position in time.
    mismatch_q = answered[len(answered) // 3] if answered else None
    bare_q = questions[nq // 5] if questions else None          # no ViewCount/editor
    anon_q = questions[(2 * nq) // 5] if nq > 2 else None       # OwnerDisplayName only
    closed_q = questions[(3 * nq) // 5] if nq > 3 else None
    cw_q = questions[(4 * nq) // 7] if nq > 4 else None
    if cw_q is closed_q and nq > 5:
        cw_q = questions[(4 * nq) // 7 + 1]

    rows = []
    for p in posts:
        kind = p["_kind"]
        t = p["_t"]
        lic = "CC BY-SA 3.0" if t < LICENSE_SWITCH else "CC BY-SA 4.0"
        r = {"Id": p["Id"], "CreationDate": fmt_date(t)}
        if kind == "deleted_parent":
            continue
        if kind == "q":
            th = p["_thread"]
            key = p["_key"]
            r["PostTypeId"] = 1
            r["Score"] = th["score"]
            answers = p["_answers"]
            acc = th.get("accepted")
            if acc is None and answers and h("accept", *key) % 10 < 6:
                best = max(range(len(answers)), key=lambda i: (answers[i]["_a"]["score"], -i))
                acc = best if answers[best]["_a"]["score"] > 0 else -1
            if acc is not None and 0 <= acc < len(answers):
                r["AcceptedAnswerId"] = answers[acc]["Id"]
            age_days = (END - t).days
            r["ViewCount"] = (30 + max(th["score"], 0) * (25 + h("vc", *key) % 60)
                              + age_days // (3 + h("vc2", *key) % 9) + h("vc3", *key) % 400)
            r["Body"] = norm_body(th["body"])
            r["OwnerUserId"] = user(key + ("q",))
            last = t
            if h("edit", *key) % 10 < 4:
                et = t + secs(key + ("edit",), 120, 40 * 86400)
                r["LastEditorUserId"] = r["OwnerUserId"] if h("ed", *key) % 2 else user(key + ("ed",))
                r["LastEditDate"] = fmt_date(et)
                last = max(last, et)
            for a in answers:
                last = max(last, a["_t"])
            r["LastActivityDate"] = fmt_date(last)
            r["Title"] = th["title"]
            qpos = questions.index(p)
            if qpos < nq // 2:
                r["Tags"] = "".join("<%s>" % x for x in th["tags"])
                if h("fav", *key) % 3 == 0:
                    r["FavoriteCount"] = h("fav2", *key) % 12
            else:
                r["Tags"] = "|" + "|".join(th["tags"]) + "|"
            r["AnswerCount"] = len(answers) + (1 if p is mismatch_q else 0)
            r["CommentCount"] = h("cc", *key) % 7 if h("cc0", *key) % 3 else 0
            if p is bare_q:
                r.pop("ViewCount")
                for k in ("LastEditorUserId", "LastEditDate"):
                    r.pop(k, None)
            if p is anon_q:
                r.pop("OwnerUserId")
                r["OwnerDisplayName"] = "user%d" % (1000 + h("anon", *key) % 90000)
            if p is closed_q:
                r["ClosedDate"] = fmt_date(t + secs(key + ("closed",), 3600, 3 * 86400))
            if p is cw_q:
                r["CommunityOwnedDate"] = fmt_date(t + secs(key + ("cw",), 60, 86400))
        elif kind == "a":
            a = p["_a"]
            key = p["_key"] + ("a", p["_ai"])
            r["PostTypeId"] = 2
            r["ParentId"] = p["_q"]["Id"]
            r["Score"] = a["score"]
            r["Body"] = norm_body(a["body"])
            owner = user(key)
            r["OwnerUserId"] = owner
            last = t
            if h("edit", *key) % 10 < 3:
                et = t + secs(key + ("edit",), 60, 300 * 86400)
                r["LastEditorUserId"] = owner if h("ed", *key) % 3 else user(key + ("ed",))
                r["LastEditDate"] = fmt_date(et)
                last = et
            r["LastActivityDate"] = fmt_date(last)
            r["CommentCount"] = h("cc", *key) % 5 if h("cc0", *key) % 2 else 0
        elif kind in ("excerpt", "wiki"):
            r["PostTypeId"] = 4 if kind == "excerpt" else 5
            r["Score"] = 0
            r["Body"] = p["body"] if kind == "excerpt" else norm_body(p["body"])
            r["OwnerUserId"] = COMMUNITY if not p["body"] else user(("wiki", p["tag"], kind))
            r["LastEditorUserId"] = r["OwnerUserId"]
            et = t + secs(("wiki", p["tag"], kind, "edit"), 0, 30 * 86400)
            r["LastEditDate"] = fmt_date(et)
            r["LastActivityDate"] = fmt_date(et)
            if p["titled"]:
                r["Title"] = p["tag"]
            r["CommentCount"] = 0
        elif kind == "nomination":
            r["PostTypeId"] = 6
            r["Score"] = 14
            r["Body"] = NOMINATION
            r["OwnerUserId"] = 27
            r["LastActivityDate"] = fmt_date(t)
            r["CommentCount"] = 3
            r["CommunityOwnedDate"] = fmt_date(t)
        elif kind == "placeholder":
            r["PostTypeId"] = 7
            r["Score"] = 0
            r["Body"] = PLACEHOLDER
            r["OwnerUserId"] = COMMUNITY
            r["LastActivityDate"] = fmt_date(t)
            r["CommentCount"] = 0
        elif kind == "orphan":
            r["PostTypeId"] = 2
            r["ParentId"] = deleted_parent
            r["Score"] = 3
            r["Body"] = ORPHAN_ANSWER
            r["OwnerUserId"] = 33
            r["LastActivityDate"] = fmt_date(t)
            r["CommentCount"] = 0
        r["ContentLicense"] = lic
        rows.append(r)
    return rows


def render(rows) -> bytes:
    lines = ['\ufeff<?xml version="1.0" encoding="utf-8"?>', "<posts>"]
    for r in rows:
        extra = set(r) - set(ATTR_ORDER)
        if extra:
            raise AssertionError("unknown attributes %r" % extra)
        attrs = " ".join('%s="%s"' % (k, escape_attr(str(r[k]))) for k in ATTR_ORDER if k in r)
        lines.append("  <row %s />" % attrs)
    lines.append("</posts>")
    return "\n".join(lines).encode("utf-8")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-o", "--out", default=DEFAULT_OUT)
    ap.add_argument("--threads", default=THREADS_DIR)
    args = ap.parse_args(argv)
    threads = load_threads(args.threads)
    rows = build(threads)
    data = render(rows)
    with open(args.out, "wb") as f:
        f.write(data)

    by_type = {}
    for r in rows:
        by_type[r["PostTypeId"]] = by_type.get(r["PostTypeId"], 0) + 1
    names = {1: "questions", 2: "answers", 4: "tag-wiki excerpts", 5: "tag wikis",
             6: "moderator nominations", 7: "wiki placeholders"}
    print("wrote %s" % os.path.relpath(args.out))
    for src in sorted({t["_src"] for t in threads}):
        ts = [t for t in threads if t["_src"] == src]
        print("  %-14s %3d questions %4d answers" % (src, len(ts), sum(len(t["answers"]) for t in ts)))
    for k in sorted(by_type):
        print("  PostTypeId %d (%s): %d" % (k, names.get(k, "?"), by_type[k]))
    print("  rows: %d, bytes: %d" % (len(rows), len(data)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
