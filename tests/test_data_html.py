"""HTML body -> text: math kept exactly, structure turned into plain-text layout."""

import html
import string

from hypothesis import given, settings
from hypothesis import strategies as st

from data_tools.html_text import html_to_text


def test_math_with_less_than_escaped_as_in_the_dump_is_kept():
    assert html_to_text("<p>If $a&lt;b$ and $c&gt;d$ then $a-d &lt; b-c$.</p>") == \
        "If $a<b$ and $c>d$ then $a-d < b-c$."


def test_math_with_a_literal_less_than_before_a_letter_is_kept():
    # A naive HTML parse reads "<b$ and $c>" as a <b> tag and loses the text.
    assert html_to_text("<p>$a<b$ and $c>d$</p>") == "$a<b$ and $c>d$"
    assert html_to_text("<p>$x<1$, $y <z$, $p<q_i$</p>") == "$x<1$, $y <z$, $p<q_i$"


def test_real_tags_next_to_math_still_parse_as_tags():
    assert html_to_text("<p><b>Claim.</b> $a<b$ <em>always</em></p>") == "Claim. $a<b$ always"


def test_display_math_and_align_kept_with_ampersands_and_newlines():
    body = "<p>$$\n\\begin{align}\nf(x) &amp;= x^2 &lt; 4 \\\\\ng &amp;\\ge 0\n\\end{align}\n$$</p>"
    assert html_to_text(body) == "$$\n\\begin{align}\nf(x) &= x^2 < 4 \\\\\ng &\\ge 0\n\\end{align}\n$$"


def test_code_block_keeps_indentation_and_blank_lines():
    body = "<pre><code>def f(x):\n    if x &lt; 0:\n        return -x\n\n\n    return x\n</code></pre>"
    assert html_to_text(body) == "def f(x):\n    if x < 0:\n        return -x\n\n\n    return x"


def test_inline_code_keeps_its_text():
    assert html_to_text("<p>Use <code>a  &lt;  b</code> here</p>") == "Use a  <  b here"


def test_paragraphs_are_separated_by_one_blank_line_and_blank_runs_collapse():
    assert html_to_text("<p>one</p>\n\n\n<p>two\n\n\n\nthree</p>") == "one\n\ntwo\n\nthree"


def test_lists_get_markers_one_item_per_line():
    body = "<ul><li>apple</li><li>pear<ul><li>small</li></ul></li></ul><ol><li>first</li><li>second</li></ol>"
    assert html_to_text(body) == "- apple\n- pear\n  - small\n\n1. first\n2. second"


def test_ordered_list_start_attribute():
    assert html_to_text('<ol start="4"><li>d</li><li>e</li></ol>') == "4. d\n5. e"


def test_br_is_a_newline_and_blockquote_prefixed():
    assert html_to_text("<p>a<br>\nb<br/>c</p>") == "a\nb\nc"
    assert html_to_text("<blockquote><p>q1</p><p>q2</p></blockquote>") == "> q1\n>\n> q2"


def test_links_keep_text_images_dropped_entities_decoded_unicode_kept():
    body = '<p>See <a href="http://x.org">this proof</a><img src="i.png" alt="diagram"> &amp; &eacute;&#8704;\u03b5 ok</p>'
    assert html_to_text(body) == "See this proof & \u00e9\u2200\u03b5 ok"


def test_empty_and_whitespace_bodies():
    assert html_to_text("") == ""
    assert html_to_text("  \n ") == ""
    assert html_to_text("<p></p>") == ""


def test_comments_and_scripts_dropped():
    assert html_to_text("<p>a<!-- hidden -->b</p><script>x=1</script>") == "ab"


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=string.ascii_letters + string.digits + " <>&$\\{}^_=+-()[]|;:'\".,!?/#%*~`@\u00e9\u03b1\u2200",
               max_size=80))
def test_escaped_text_comes_back_exactly(text):
    assert html_to_text("<p>" + html.escape(text) + "</p>") == text.strip()


def test_each_list_item_on_its_own_line_even_with_paragraphs_inside():
    body = "<ul>\n<li><p>first $a<b$</p></li>\n<li><p>second</p>\n<pre><code>  x\n</code></pre></li>\n</ul>"
    assert html_to_text(body) == "- first $a<b$\n- second\n    x"
