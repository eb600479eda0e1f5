"""The dashboard's pages, one module each (``register_page``, ``layout()`` and the page's callbacks)."""
