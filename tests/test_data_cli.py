"""The command line: happy paths, and every bad input ending in one line on stderr."""

import os
import signal
import stat
import subprocess
import sys
import time

import pytest

from data_tools import DOC_SEPARATOR, load_meta
from data_tools.stackexchange import PostsSource, iter_posts
from test_data_helpers import REPO_ROOT, row, run_cli, write_posts

OLD_OUTPUT = "previous corpus, must survive a failed run\n"

BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE posts [
  <!ENTITY lol "lol">
  <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
  <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
  <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
  <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
  <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
  <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
  <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
  <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
  <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<posts><row Id="1" PostTypeId="1" Title="laughs" Body="&lol9;" /></posts>
"""

XXE = """<?xml version="1.0"?>
<!DOCTYPE posts [<!ENTITY secret SYSTEM "file://{target}">]>
<posts><row Id="1" PostTypeId="1" Title="t" Body="&secret;" /><row Id="2" PostTypeId="1" Title="u">&secret;</row></posts>
"""

GOOD_ROWS = [row(1, 1, "<p>Is $a&lt;b$?</p>", title="Q", tags="|x|"), row(2, 2, "<p>Yes.</p>", parent=1, score=2)]


def bad_inputs(tmp_path):
    """name -> (path to give the CLI, expected line number or None)."""
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-CONTENT")
    cases = {}

    def put(name, data):
        path = tmp_path / name
        path.write_bytes(data if isinstance(data, bytes) else data.encode())
        return str(path)

    cases["missing"] = (str(tmp_path / "nope.xml"), None)
    directory = tmp_path / "a_directory.xml"
    directory.mkdir()
    cases["directory"] = (str(directory), None)
    cases["empty"] = (put("empty.xml", b""), None)
    good = open(write_posts(tmp_path / "full.xml", GOOD_ROWS), "rb").read()
    cases["truncated"] = (put("truncated.xml", good[: len(good) // 2]), 3)
    cases["not_xml"] = (put("binary.xml", bytes(range(256)) * 4), 1)
    cases["wrong_root"] = (put("users.xml", '<?xml version="1.0"?>\n<users>\n  <row Id="1" Reputation="1" />\n</users>\n'), 2)
    cases["html_root"] = (put("page.xml", "<html><body><p>hello</p></body></html>"), 1)
    cases["billion_laughs"] = (put("laughs.xml", BILLION_LAUGHS), 2)
    cases["xxe"] = (put("xxe.xml", XXE.format(target=secret)), 2)
    return cases


CASE_NAMES = ["missing", "directory", "empty", "truncated", "not_xml", "wrong_root", "html_root",
              "billion_laughs", "xxe"]


def assert_one_line_error(result, name_in_message, line=None):
    assert result.returncode != 0
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and "Traceback" not in result.stderr
    assert name_in_message in lines[0]
    if line is not None:
        assert f"{name_in_message}:{line}:" in lines[0]


@pytest.mark.parametrize("case", CASE_NAMES)
def test_bad_input_to_clean_reports_one_line_and_leaves_output_untouched(tmp_path, case):
    path, line = bad_inputs(tmp_path)[case]
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    output = out_dir / "corpus.txt"
    output.write_text(OLD_OUTPUT)
    result = run_cli("clean", path, "-o", output, "--workers", "2")
    assert_one_line_error(result, os.path.basename(path), line)
    assert result.returncode == 1
    assert output.read_text() == OLD_OUTPUT
    assert os.listdir(out_dir) == ["corpus.txt"]
    assert "TOP-SECRET" not in result.stderr


def test_entity_declarations_are_refused_with_a_clear_reason(tmp_path):
    cases = bad_inputs(tmp_path)
    for case in ("billion_laughs", "xxe"):
        result = run_cli("clean", cases[case][0], "-o", tmp_path / "c.txt")
        assert "DOCTYPE declares entities" in result.stderr


def test_external_entities_are_not_resolved_even_past_the_doctype_check(tmp_path, monkeypatch):
    path, _ = bad_inputs(tmp_path)["xxe"]
    monkeypatch.setattr(PostsSource, "check_prolog", lambda self: None)
    seen = []
    with pytest.raises(Exception) as info:
        with PostsSource(path) as source:
            seen.extend(iter_posts(source))
    assert "TOP-SECRET" not in str(info.value) and all("TOP-SECRET" not in p.body + p.title for p in seen)


def test_doctype_without_entities_is_accepted(tmp_path):
    path = tmp_path / "Posts.xml"
    path.write_text('<?xml version="1.0"?>\n<!DOCTYPE posts>\n<posts><row Id="1" PostTypeId="1" Title="T" Body="b"/></posts>')
    result = run_cli("clean", path, "-o", tmp_path / "c.txt")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "c.txt").read_text() == f"T\n\nb\n{DOC_SEPARATOR}\n"


@pytest.mark.parametrize("case", ["missing", "truncated", "xxe"])
def test_bad_input_to_prepare_leaves_no_data_dir(tmp_path, case):
    path, _ = bad_inputs(tmp_path)[case]
    result = run_cli("prepare", path, "-o", tmp_path / "data")
    assert_one_line_error(result, os.path.basename(path))
    assert not (tmp_path / "data").exists()


def test_bad_tokenize_inputs(tmp_path):
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "latin1.txt").write_bytes(b"caf\xe9\n")
    for name in ("empty.txt", "latin1.txt", "missing.txt"):
        result = run_cli("tokenize", tmp_path / name, "-o", tmp_path / "data")
        assert_one_line_error(result, name)
        assert not (tmp_path / "data").exists()
    (tmp_path / "ok.txt").write_text("a\n\nb\n\nc\n")
    result = run_cli("tokenize", tmp_path / "ok.txt", "-o", tmp_path / "data", "--tokenizer", "bpe", "--vocab-size", "100")
    assert_one_line_error(result, "vocab_size")


def test_clean_tokenize_prepare_happy_path(tmp_path):
    posts = write_posts(tmp_path / "Posts.xml", GOOD_ROWS * 1)
    result = run_cli("clean", posts, "-o", tmp_path / "corpus.txt", "--min-score", "1", "--max-answers", "3",
                     "--no-unanswered", "--limit", "10", "--workers", "1")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "corpus.txt").read_text() == f"Q\nTags: x\n\nIs $a<b$?\n\nAnswer (score 2):\nYes.\n{DOC_SEPARATOR}\n"
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(tmp_path / "corpus.txt").st_mode) == 0o666 & ~umask  # not mkstemp's 0600
    result = run_cli("tokenize", tmp_path / "corpus.txt", "-o", tmp_path / "d1", "--tokenizer", "bpe", "--vocab-size", "300")
    assert result.returncode == 0, result.stderr
    assert load_meta(tmp_path / "d1")["tokenizer"] == "bpe"
    result = run_cli("prepare", posts, "-o", tmp_path / "d2", "--tokenizer", "char", "--workers", "2")
    assert result.returncode == 0, result.stderr
    assert load_meta(tmp_path / "d2")["tokens"]["train"] > 0


def test_help_documents_every_option():
    text = run_cli("--help").stdout + run_cli("clean", "--help").stdout + run_cli("prepare", "--help").stdout
    for option in ("--min-score", "--max-answers", "--unanswered", "--no-unanswered", "--limit", "--workers",
                   "--tokenizer", "--vocab-size", "clean", "tokenize", "prepare", "<|endoftext|>", "7z"):
        assert option in text, option


def fake_7z(tmp_path, script):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    program = bin_dir / "7z"
    program.write_text("#!/bin/sh\n" + script)
    program.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


def test_7z_input_is_streamed_through_the_7z_program(tmp_path):
    posts = write_posts(tmp_path / "Posts.xml", GOOD_ROWS)
    (tmp_path / "dump.7z").write_bytes(b"7z\xbc\xaf\x27\x1c not really")
    env = fake_7z(tmp_path, f'[ "$1" = e ] && [ "$2" = -so ] && [ "$4" = Posts.xml ] && exec cat "{posts}"\nexit 2\n')
    result = run_cli("clean", tmp_path / "dump.7z", "-o", tmp_path / "from7z.txt", env=env)
    assert result.returncode == 0, result.stderr
    run_cli("clean", posts, "-o", tmp_path / "plain.txt")
    assert (tmp_path / "from7z.txt").read_bytes() == (tmp_path / "plain.txt").read_bytes()


def test_7z_failure_and_missing_7z_are_one_line_errors(tmp_path):
    (tmp_path / "dump.7z").write_bytes(b"7z\xbc\xaf\x27\x1c broken")
    env = fake_7z(tmp_path, 'echo "ERROR: Data Error in encrypted file" >&2\nexit 2\n')
    result = run_cli("clean", tmp_path / "dump.7z", "-o", tmp_path / "c.txt", env=env)
    assert_one_line_error(result, "dump.7z")
    no_7z = {**os.environ, "PATH": str(tmp_path / "empty-bin")}
    result = subprocess.run([sys.executable, "-m", "data_tools", "clean", str(tmp_path / "dump.7z"), "-o",
                             str(tmp_path / "c.txt")], capture_output=True, text=True,
                            env={**no_7z, "PYTHONPATH": REPO_ROOT})
    assert_one_line_error(result, "dump.7z")
    assert "7z e ARCHIVE Posts.xml" in result.stderr
    assert not (tmp_path / "c.txt").exists()


def test_keyboard_interrupt_exits_130_and_leaves_nothing_behind(tmp_path):
    # A fake 7z sends part of a dump and then stalls, so the run is mid-way when interrupted.
    rows = [row(i, 1, f"<p>body {i}</p>", title=f"T{i}") for i in range(1, 2000)]
    partial = tmp_path / "partial.xml"
    partial.write_text(open(write_posts(tmp_path / "Posts.xml", rows)).read().replace("</posts>\n", ""))
    env = fake_7z(tmp_path, f'cat "{partial}"\nexec sleep 60\n')
    env["PYTHONPATH"] = REPO_ROOT
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "corpus.txt").write_text(OLD_OUTPUT)
    (tmp_path / "dump.7z").write_bytes(b"7z")
    process = subprocess.Popen([sys.executable, "-m", "data_tools", "clean", str(tmp_path / "dump.7z"), "-o",
                                str(out_dir / "corpus.txt"), "--workers", "2"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 30
    while not any(name.startswith(".threads-") for name in os.listdir(out_dir)):
        assert time.time() < deadline and process.poll() is None
        time.sleep(0.05)
    time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=30)
    assert process.returncode == 130
    assert stderr.splitlines() == ["error: interrupted; no output written"]
    assert os.listdir(out_dir) == ["corpus.txt"] and (out_dir / "corpus.txt").read_text() == OLD_OUTPUT


def test_progress_bar_shows_bytes_and_posts_on_stderr(tmp_path):
    posts = write_posts(tmp_path / "Posts.xml", GOOD_ROWS)
    result = run_cli("clean", posts, "-o", tmp_path / "c.txt", "--progress")
    assert result.returncode == 0
    assert "clean" in result.stderr and "posts=2" in result.stderr and "B" in result.stderr
    quiet = run_cli("clean", posts, "-o", tmp_path / "c.txt", "--no-progress")
    assert quiet.stderr == ""
