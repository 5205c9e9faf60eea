"""One Stack Exchange post body (HTML) -> readable plain text, with math kept exactly.

The body is parsed with lxml's HTML parser and the tree is rendered block by block:

- paragraphs, headings, code blocks, lists, quotes and tables are blocks separated by one blank line;
- a list item is one line starting with "- " (or "1. ", "2. ", ... in an ordered list), its
  continuation lines indented to line up after the marker;
- `<pre>` keeps its text exactly (newlines, indentation, blank lines);
- inline code keeps its text; link text is kept; images, scripts and comments are dropped;
- `<br>` is a newline; a block quote's lines start with "> ";
- entities are decoded by the parser; MathJax/LaTeX source such as `$a<b$`, `$$...$$` or
  `\\begin{align}...\\end{align}` is plain text to the parser, so it comes out unchanged;
- outside code blocks, runs of blank lines collapse to one.

A literal `<` in the HTML (the real dump stores it as `&lt;`, but hand-written HTML may not) would be
read by an HTML parser as the start of a tag and the text after it lost. Before parsing, every `<`
that does not start a tag name HTML posts use (or a comment or closing tag) is escaped to `&lt;`,
so `$a<b$ ... $c>d$` survives either way.
"""

import re

from lxml import etree

# Tags a Stack Exchange body may contain (the sites' sanitiser allow-list, plus a few harmless
# ones), the most frequent first since the pattern tries them in order at every "<".
_KNOWN_TAGS = (
    "p a code em strong li ul ol pre br blockquote hr img b i h1 h2 h3 span div sup sub "
    "abbr caption center col colgroup dd del details dl dt font h4 h5 h6 ins kbd q s samp small "
    "strike summary table tbody td tfoot th thead tr tt u var html head body script style"
).split()
_STRAY_LESS_THAN = re.compile(
    r"<(?!/?(?:" + "|".join(_KNOWN_TAGS) + r")(?=[\s/>])|!--|!\[CDATA\[)", re.IGNORECASE
)

_PARSER = etree.HTMLParser(remove_comments=True, remove_pis=True, no_network=True)

_DROPPED = frozenset({"img", "script", "style", "head", "title", "meta", "link"})
_PARAGRAPH_LIKE = frozenset({
    "p", "div", "h1", "h2", "h3", "h4", "h5", "h6", "dl", "dt", "dd", "details", "summary",
    "center", "caption", "html", "body", "tbody", "thead", "tfoot",
})
_BLOCKS = _PARAGRAPH_LIKE | {"pre", "ul", "ol", "li", "blockquote", "table", "tr", "hr"}

_BLANK_LINE_RUN = re.compile(r"\n[ \t]*\n(?:[ \t]*\n)*")


def html_to_text(html):
    """Return the readable text of one HTML post body ('' for an empty body)."""
    if not html or not html.strip():
        return ""
    if "<" in html:
        html = _STRAY_LESS_THAN.sub("&lt;", html)
    root = etree.HTML(html, _PARSER)
    if root is None:
        return ""
    return "\n\n".join(_blocks_of(root))


def _blocks_of(element):
    """Render an element's children into a list of blocks (strings without blank edges)."""
    blocks = []
    inline = [element.text] if element.text else []
    for child in element:
        tag = child.tag
        if tag in _BLOCKS:  # a comment's tag is a function, never in the set
            if inline:
                _add_paragraph(blocks, inline)
                inline = []
            blocks.extend(_render_block(child))
        else:
            inline.append(_render_inline(child))
        tail = child.tail
        if tail:
            if tag == "br" and tail[0] == "\n":
                tail = tail[1:]  # "a<br>\nb" is one line break, not a blank line
            inline.append(tail)
    if inline:
        _add_paragraph(blocks, inline)
    return blocks


def _add_paragraph(blocks, pieces):
    text = "".join(pieces)
    if "\n" in text:
        text = _BLANK_LINE_RUN.sub("\n\n", text)
    text = text.strip()
    if text:
        blocks.append(text)


def _render_inline(element):
    """Text of an inline element (its tail is handled by the caller)."""
    tag = element.tag
    if not isinstance(tag, str) or tag in _DROPPED:
        return ""
    if tag == "br":
        return "\n"
    if tag == "code":
        return "".join(element.itertext())
    if len(element) == 0:
        return element.text or ""
    parts = [element.text or ""]
    for child in element:
        child_tag = child.tag
        if isinstance(child_tag, str) and child_tag in _BLOCKS:
            parts.append("\n\n" + "\n\n".join(_render_block(child)) + "\n\n")
        else:
            parts.append(_render_inline(child))
        tail = child.tail
        if tail:
            if child_tag == "br" and tail[0] == "\n":
                tail = tail[1:]
            parts.append(tail)
    return "".join(parts)


def _render_block(element):
    """Render one block-level element into a list of blocks."""
    tag = element.tag
    if tag == "pre":
        code = "".join(element.itertext()).strip("\n")
        return [code] if code.strip() else []
    if tag in ("ul", "ol"):
        return _render_list(element, ordered=(tag == "ol"))
    if tag == "li":
        return _render_list_item(element, "- ")
    if tag == "blockquote":
        inner = "\n\n".join(_blocks_of(element))
        if not inner:
            return []
        return ["\n".join(("> " + line) if line else ">" for line in inner.split("\n"))]
    if tag == "table":
        rows = [row for row in element.iter("tr")]
        lines = []
        for row in rows:
            cells = [" ".join(_blocks_of(cell)) for cell in row if cell.tag in ("td", "th")]
            if any(cells):
                lines.append(" | ".join(cells))
        return ["\n".join(lines)] if lines else []
    if tag == "tr":
        cells = [" ".join(_blocks_of(cell)) for cell in element if cell.tag in ("td", "th")]
        return [" | ".join(cells)] if any(cells) else []
    if tag == "hr":
        return ["---"]
    return _blocks_of(element)


def _render_list(element, ordered):
    number = 1
    if ordered:
        try:
            number = int(element.get("start", "1"))
        except ValueError:
            number = 1
    items = []
    for child in element:
        if child.tag == "li":
            marker = f"{number}. " if ordered else "- "
            number += 1
            items.extend(_render_list_item(child, marker))
        elif isinstance(child.tag, str):
            items.extend(_render_block(child) if child.tag in _BLOCKS else [_render_inline(child).strip()])
    items = [item for item in items if item]
    return ["\n".join(items)] if items else []


def _render_list_item(element, marker):
    inner = "\n".join(_blocks_of(element))
    indent = " " * len(marker)
    lines = inner.split("\n")
    rest = [(indent + line) if line.strip() else "" for line in lines[1:]]
    return ["\n".join([marker + lines[0]] + rest)]
