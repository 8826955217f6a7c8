"""The interactive playground (`optimlab serve`): a FastAPI app serving one page and a JSON API.

`create_app()` builds it; `app.py` documents the routes, `models.py` the request and response models,
`static/` holds the page (index.html, playground.js, playground.css).
"""

from __future__ import annotations

from .._extras import requires_extra

with requires_extra("optimlab.serve"):
    from .app import create_app

__all__ = ["create_app"]
