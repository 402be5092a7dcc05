"""The long-running service: the schedule, the web app and the daemon that runs both.

Drives :mod:`finews_feeds.feeds` and :mod:`finews_feeds.mail`; nothing below imports it.
"""
