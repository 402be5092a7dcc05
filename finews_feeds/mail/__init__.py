"""The newsletter: the digest's variants, MIME messages, SMTP, subscribers and the delivery ledger.

Owns the daily digest (HTML and text), building messages, sending them (``mailer``), the store
of subscribers, the ledger and the outbox, and the runs that send through them. Reads posts
through :mod:`finews_feeds.site`.
"""
