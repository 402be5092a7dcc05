"""Reading a Jekyll site: which files are posts, what each one says, and the cache that remembers it.

Owns the site's settings (``jekyll``), the walk (``walk``), front matter and its limits, the
rendering of a post's body (Liquid: ``liquid``; Markdown: ``markup``), and the collector that keeps the post cache in step
with the files. Imports nothing of the other stages.
"""
