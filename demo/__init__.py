"""Bundled demo data: three companies with file:// CSV feeds and transcripts (see demo/README.md)."""
