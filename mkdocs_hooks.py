"""mkdocs hooks of the documentation site (``hooks:`` in mkdocs.yml)."""

import re

# ``R[T][j]`` outside code reads in Markdown as a reference link ``[T][j]``, which autorefs
# tries to resolve as a cross-reference to ``j`` (a warning, an error under --strict).
MATRIX_CELL = re.compile(r"(?<=\])\[(?=\w[^\]\n]*\])")


def on_page_markdown(markdown, page, **kwargs):
    """Show matrix cells of the shared design (docs/design.md, a verbatim copy) as written."""
    if page.file.src_uri == "design.md":
        return MATRIX_CELL.sub(r"\\[", markdown)
    return markdown
