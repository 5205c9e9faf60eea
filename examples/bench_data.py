"""Measure `data_tools clean` on a large generated Posts.xml: speed (MB/s) and peak memory.

    python examples/bench_data.py                     # 500 MB file, default workers
    python examples/bench_data.py --size-mb 1024      # the 1 GB memory check
    python examples/bench_data.py --bpe-mb 5          # also time BPE training on 5 MB of text

The file is generated in a temporary directory (deleted afterwards): rows in Id order, questions
with titles and both tag formats, answers a random distance after their question, tag-wiki rows,
orphan answers, and HTML bodies with inline and display math (with `<` stored as `&amp;lt;` as in
the real dump), code blocks, lists, quotes, links and entities. Clean runs in a child process;
peak RSS comes from resource.getrusage in that process (its own peak, and the largest of its
worker processes).
"""

import argparse
import html
import itertools
import json
import os
import random
import subprocess
import sys
import tempfile
import time

WORDS = ("the of and to in is that for it as with be on by this we are function set group prove "
         "show let then where integral limit sequence series matrix vector space since hence "
         "converges number prime real complex continuous derivative").split()


def sentence(rng, n):
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


def inline_math(rng):
    a, b = rng.choice("xyzabn"), rng.choice("xyzabn")
    return rng.choice([f"${a}<{b}$", f"$\\frac{{{a}}}{{{b}}} > 0$", f"$|{a}-{b}| < \\epsilon$",
                       f"$a_{{n}} \\le {a}^2$", "$\\sum_{k=1}^n k = \\frac{n(n+1)}{2}$"])


def html_body(rng):
    blocks = []
    for _ in range(rng.randint(1, 5)):
        kind = rng.random()
        if kind < 0.55:
            parts = [sentence(rng, rng.randint(5, 25)) for _ in range(rng.randint(1, 4))]
            parts.insert(rng.randint(0, len(parts)), inline_math(rng))
            text = html.escape(" ".join(parts), quote=False)
            blocks.append(f"<p>{text.replace('. ', '. <em>so</em> ', 1)}</p>")
        elif kind < 0.7:
            blocks.append("<p>$$" + html.escape("\\begin{align} f(x) &= \\int_0^x g(t)\\,dt < M \\\\ "
                                                "g(t) &> 0 \\end{align}", quote=False) + "$$</p>")
        elif kind < 0.8:
            items = "".join(f"<li>{sentence(rng, rng.randint(3, 10))}</li>" for _ in range(rng.randint(2, 5)))
            tag = rng.choice(["ul", "ol"])
            blocks.append(f"<{tag}>\n{items}\n</{tag}>")
        elif kind < 0.9:
            code = "\n".join("    " * rng.randint(0, 2) + f"x{i} = f(x{i - 1}) &lt; {i}" for i in range(rng.randint(2, 8)))
            blocks.append(f"<pre><code>def f(x):\n{code}\n</code></pre>")
        else:
            blocks.append(f"<blockquote>\n  <p>{sentence(rng, 12)} <a href=\"https://example.org/{rng.randint(1, 99)}\">"
                          f"link</a> &amp; more&nbsp;text</p>\n</blockquote>")
    return "\n\n".join(blocks) + "\n"


def write_posts_xml(path, size_bytes, seed=0):
    """Write a synthetic Posts.xml of about `size_bytes`; return (questions, answers)."""
    rng = random.Random(seed)
    bodies = [html.escape(html_body(rng), quote=True).replace("\n", "&#xA;") for _ in range(3000)]
    recent_questions = []
    questions = answers = 0
    post_id = 0
    with open(path, "w", encoding="utf-8") as out:
        out.write('\ufeff<?xml version="1.0" encoding="utf-8"?>\n<posts>\n')
        written = 0
        while written < size_bytes:
            post_id += 1
            roll = rng.random()
            body = rng.choice(bodies)
            if roll < 0.35 or not recent_questions:
                tags = "|calculus|real-analysis|" if post_id % 2 else "&lt;algebra&gt;&lt;limits&gt;"
                row = (f'  <row Id="{post_id}" PostTypeId="1" CreationDate="2015-01-01T00:00:00.000" '
                       f'Score="{rng.randint(-3, 40)}" ViewCount="{rng.randint(1, 9999)}" Body="{body}" '
                       f'OwnerUserId="{rng.randint(1, 99999)}" Title="Question {post_id} about $x&lt;y$" '
                       f'Tags="{tags}" AnswerCount="{rng.randint(0, 4)}" CommentCount="0" '
                       f'ContentLicense="CC BY-SA 3.0" />\n')
                recent_questions.append(post_id)
                if len(recent_questions) > 2000:
                    del recent_questions[:1000]
                questions += 1
            elif roll < 0.99:
                parent = rng.choice(recent_questions) if rng.random() > 0.01 else 10 ** 9
                row = (f'  <row Id="{post_id}" PostTypeId="2" ParentId="{parent}" '
                       f'CreationDate="2015-01-02T00:00:00.000" Score="{rng.randint(-2, 120)}" Body="{body}" '
                       f'OwnerUserId="{rng.randint(1, 99999)}" CommentCount="1" ContentLicense="CC BY-SA 4.0" />\n')
                answers += 1
            else:
                row = (f'  <row Id="{post_id}" PostTypeId="{rng.choice([4, 5])}" Score="0" Body="{body}" '
                       f'Title="tag wiki" CommentCount="0" />\n')
            out.write(row)
            written += len(row)
        out.write("</posts>\n")
    return questions, answers


_CHILD = """
import json, resource, sys, time
from data_tools import clean
start = time.perf_counter()
stats = clean(sys.argv[1], sys.argv[2], workers=int(sys.argv[3]) if sys.argv[3] != "None" else None,
              progress=False)
print(json.dumps({"seconds": time.perf_counter() - start, "documents": stats.documents,
                  "input_bytes": stats.input_bytes, "output_bytes": stats.output_bytes,
                  "main_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "largest_worker_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
                  "main_cpu_seconds": sum(resource.getrusage(resource.RUSAGE_SELF)[:2]),
                  "workers_cpu_seconds": sum(resource.getrusage(resource.RUSAGE_CHILDREN)[:2])}))
"""


def bench_clean(posts_path, corpus_path, workers):
    result = subprocess.run([sys.executable, "-c", _CHILD, posts_path, corpus_path, str(workers)],
                            capture_output=True, text=True, check=True)
    return json.loads(result.stdout)


def zipf_text(n_chars, seed=0, lexicon_size=60000):
    """Text whose word frequencies follow Zipf's law over a large made-up lexicon, with some math.

    The generated Posts.xml repeats a small word list, which would make BPE training look faster
    than it is on real text; this has the tens of thousands of distinct words real prose has.
    """
    rng = random.Random(seed)
    syllables = [a + b for a in "bcdfghklmnprstvwz" for b in ("a", "e", "i", "o", "u", "ou", "ea", "in", "er")]
    lexicon = ["".join(rng.choice(syllables) for _ in range(rng.choice((1, 1, 2, 2, 2, 3, 3, 4))))
               for _ in range(lexicon_size)]
    cumulative = list(itertools.accumulate(1 / (rank + 1) for rank in range(lexicon_size)))
    math = ["$x<y$", "$\\frac{a}{b}$", "$\\sum_{k=1}^n k^2$", "$f(x) = x^2 + 1$", "$\\int_0^1 f(t)\\,dt$"]
    parts = []
    total = 0
    while total < n_chars:
        words = rng.choices(lexicon, cum_weights=cumulative, k=rng.randint(8, 25))
        words[0] = words[0].capitalize()
        if rng.random() < 0.3:
            words.insert(rng.randrange(len(words)), rng.choice(math))
        sentence = " ".join(words) + rng.choice((".", ".", "?", ",")) + rng.choice((" ", " ", "\n\n"))
        parts.append(sentence)
        total += len(sentence)
    return "".join(parts)


def bench_bpe(megabytes, vocab_size):
    from data_tools import BPETokenizer
    text = zipf_text(int(megabytes * 1e6))
    start = time.perf_counter()
    tokenizer = BPETokenizer.train(text, vocab_size)
    train_seconds = time.perf_counter() - start
    start = time.perf_counter()
    ids = tokenizer.encode(text)
    encode_seconds = time.perf_counter() - start
    assert tokenizer.decode(ids) == text
    return {"bpe_train_mb": len(text.encode()) / 1e6, "bpe_vocab_size": tokenizer.vocab_size,
            "bpe_train_seconds": train_seconds, "bpe_encode_mb_per_s": len(text.encode()) / 1e6 / encode_seconds,
            "bpe_chars_per_token": len(text) / len(ids)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=float, default=500, help="size of the generated Posts.xml (default 500; 0 skips clean)")
    parser.add_argument("--workers", type=int, default=None, help="clean --workers (default: one per CPU)")
    parser.add_argument("--bpe-mb", type=float, default=0, help="also time BPE training on this many MB of text")
    parser.add_argument("--vocab-size", type=int, default=4096, help="BPE vocab size for --bpe-mb (default 4096)")
    parser.add_argument("--dir", default=None, help="where to make the temporary directory")
    args = parser.parse_args()
    if args.size_mb < 0 or args.bpe_mb < 0:
        parser.error(f"--size-mb and --bpe-mb must not be negative, got {args.size_mb} and {args.bpe_mb}")
    if args.workers is not None and args.workers < 1:
        parser.error(f"argument --workers: need at least 1, got {args.workers}")
    if args.bpe_mb and args.vocab_size < 257:
        parser.error(f"argument --vocab-size: a byte-level BPE vocabulary needs at least 257, got {args.vocab_size}")

    result = {"load_average_before": os.getloadavg()[0]}
    if args.size_mb > 0:
        with tempfile.TemporaryDirectory(prefix="bench_data-", dir=args.dir) as tmp:
            posts = os.path.join(tmp, "Posts.xml")
            start = time.perf_counter()
            questions, answers = write_posts_xml(posts, int(args.size_mb * 1e6))
            size = os.path.getsize(posts)
            print(f"generated {size / 1e6:.0f} MB Posts.xml ({questions:,} questions, {answers:,} answers) "
                  f"in {time.perf_counter() - start:.0f} s", flush=True)
            result.update(bench_clean(posts, os.path.join(tmp, "corpus.txt"), args.workers))
        result["workers"] = args.workers or os.cpu_count()
        result["mb_per_s"] = result["input_bytes"] / 1e6 / result["seconds"]
        print(f"clean: {result['input_bytes'] / 1e6:.0f} MB in {result['seconds']:.1f} s = "
              f"{result['mb_per_s']:.1f} MB/s with {result['workers']} workers (CPU: main "
              f"{result['main_cpu_seconds']:.0f} s, workers {result['workers_cpu_seconds']:.0f} s; load average "
              f"before {result['load_average_before']:.1f}); peak RSS main {result['main_peak_rss_mb']:.0f} MB, "
              f"largest worker {result['largest_worker_peak_rss_mb']:.0f} MB; {result['documents']:,} documents, "
              f"{result['output_bytes'] / 1e6:.0f} MB corpus", flush=True)
    if args.bpe_mb:
        result.update(bench_bpe(args.bpe_mb, args.vocab_size))
        print(f"bpe: trained vocab {result['bpe_vocab_size']} on {result['bpe_train_mb']:.1f} MB of Zipf-distributed "
              f"text in {result['bpe_train_seconds']:.1f} s; encodes {result['bpe_encode_mb_per_s']:.1f} MB/s, "
              f"{result['bpe_chars_per_token']:.2f} chars/token")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
