"""The feed build: posts in, RSS 2.0, Atom 1.0, JSON Feed and their listings out.

Owns feed slugs, the plan (which feeds exist and which posts each shows), the pure rendering of
documents, the writer (atomic files, the manifest and the build's intent) and the build that
ties them together. Reads posts through :mod:`finews_feeds.site`.
"""
