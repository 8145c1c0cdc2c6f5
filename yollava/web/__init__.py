"""``yollava serve``: a web page to teach concepts from photos, watch them train, chat with them and compare methods (needs the ``web`` extra)."""
