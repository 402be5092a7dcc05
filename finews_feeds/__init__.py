"""finews-feeds: feeds and a daily email digest for a Jekyll news site."""

__version__ = "0.1.0"
