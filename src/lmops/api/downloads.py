"""The ``content-disposition`` header of a download, for any file name.

A header value is Latin-1 on the wire (Starlette encodes it so, and fails on anything else), while an
uploaded file keeps the name its client gave, in any script. RFC 6266 sends both: ``filename`` in plain
ASCII for old clients, and ``filename*`` (RFC 8187: UTF-8, percent-encoded) with the exact name, which
every current browser and HTTP library prefers. Starlette's ``FileResponse`` builds the same header inline
(no helper to call), and without the ASCII fallback.
"""

from __future__ import annotations

from urllib.parse import quote


def attachment(filename: str) -> str:
    """``attachment; filename="<ASCII>"; filename*=UTF-8''<percent-encoded>`` for ``filename``.

    The fallback keeps printable ASCII only: anything else (other scripts, quotes, backslashes, CR, LF and
    other control characters) becomes ``_``, so nothing in it can end the quoted string or the header.
    """
    fallback = "".join(c if " " <= c <= "~" and c not in '"\\' else "_" for c in filename) or "download"
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"
