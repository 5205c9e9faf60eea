"""Helpers for the data_tools tests: small Posts.xml files written in tmp_path (no tests here)."""

import os
import subprocess
import sys
from xml.sax.saxutils import quoteattr

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def row(post_id, post_type, body="", *, parent=None, score=None, title=None, tags=None,
        answer_count=None):
    """One <row/> line; `body` is HTML, escaped here the way the dump escapes it."""
    attrs = {"Id": post_id, "PostTypeId": post_type}
    if parent is not None:
        attrs["ParentId"] = parent
    if score is not None:
        attrs["Score"] = score
    attrs["Body"] = body
    if title is not None:
        attrs["Title"] = title
    if tags is not None:
        attrs["Tags"] = tags
    if answer_count is not None:
        attrs["AnswerCount"] = answer_count
    text = " ".join(f"{name}={quoteattr(str(value), {chr(10): '&#xA;'})}" for name, value in attrs.items())
    return f"  <row {text} />"


def write_posts(path, rows, bom=False):
    """Write a Posts.xml holding `rows` (strings from row()); return its path as str."""
    text = '<?xml version="1.0" encoding="utf-8"?>\n<posts>\n' + "\n".join(rows) + "\n</posts>\n"
    with open(path, "wb") as file:
        file.write((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    return str(path)


def run_cli(*args, env=None, cwd=None):
    """Run `python -m data_tools ARGS`; return the CompletedProcess (text mode)."""
    full_env = dict(os.environ if env is None else env)
    full_env["PYTHONPATH"] = REPO_ROOT + os.pathsep + full_env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "data_tools", *map(str, args)], capture_output=True,
                          text=True, env=full_env, cwd=cwd, timeout=120)
