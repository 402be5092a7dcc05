"""Configuration: one table of defaults, overridden by a TOML file, the environment, then flags.

Every key lives in the dataclasses below, with its default and a comment (the ``doc`` metadata,
also shown by ``finews-feeds config --defaults``); ``finews-feeds config`` shows the value in
effect of each and where it came from (:func:`layer_config`). ``config/finews.toml`` documents the same keys; a test
keeps the two in step. Values from the environment are ``FINEWS_<SECTION>_<KEY>`` strings,
parsed by the key's type. Secrets come only from the environment (:data:`SECRET_VARIABLES`).

A key of the site section left at ``None`` means "take it from the Jekyll site's
``_config.yml``, else Jekyll's own default" (see :func:`finews_feeds.site.resolve_site`).
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import re
import sys
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union
from urllib.parse import urlsplit, urlunsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .errors import ConfigError

log = logging.getLogger(__name__)

#: Environment variables read for secrets; they are never accepted in a file or a flag.
SECRET_VARIABLES = ("FINEWS_SMTP_PASSWORD", "FINEWS_SECRET_KEY", "FINEWS_IMAP_PASSWORD", "FINEWS_MAILGUN_SIGNING_KEY",
                    "FINEWS_POSTMARK_WEBHOOK_PASSWORD")
#: Environment variable naming the config file when ``--config`` is not given.
CONFIG_VARIABLE = "FINEWS_CONFIG"
#: ``FINEWS_`` variables read by the project's benchmarks and tests, not by the tool: they share
#: the environment of the commands they run, so they must not be reported as mistyped settings.
OTHER_VARIABLES = ("FINEWS_MAKE_SITE", "FINEWS_UPDATE_GOLDEN", "FINEWS_UPDATE_SCREENSHOTS")
DEFAULT_CONFIG_PATH = Path("config/finews.toml")
#: The id part of a List-Id (RFC 2919: ``list-label "." list-id-namespace``, dot-atoms of ASCII).
LIST_ID = re.compile(r"(?P<phrase>.*?)\s*<(?P<id>[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)+)>\s*")


def _key(default: Any, doc: str, choices: tuple[str, ...] = ()) -> Any:
    """A config key: its default, what it is for, and (for enumerations) its choices."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"doc": doc, "choices": choices})
    return field(default=default, metadata={"doc": doc, "choices": choices})


@dataclass(frozen=True)
class SiteConfig:
    source: str = _key(".", "Folder of the Jekyll site (holds _config.yml and _posts/).")
    url: str | None = _key(None, "Public URL of the site, e.g. https://finews.withounder.com; default: _config.yml `url`.")
    baseurl: str | None = _key(None, "Path prefix of the site under url; default: _config.yml `baseurl`, else empty.")
    title: str | None = _key(None, "Site title used in feeds and the digest; default: _config.yml `title`.")
    timezone: str | None = _key(None, "Zone for dates without offset and for day boundaries; default: _config.yml `timezone`, else Asia/Shanghai.")
    language: str = _key("zh-CN", "Language of the feeds and the digest (BCP 47).")
    permalink: str | None = _key(None, "Jekyll permalink style or pattern; default: _config.yml `permalink`, else `date`.")
    category_url: str = _key("/category/{slug}.html", "Path of a category's page on the site; {slug} is the category slug.")
    tag_url: str = _key("", "Path of a tag's page on the site ({slug}); empty: tag feeds link to the site's home page.")
    future: bool | None = _key(None, "Publish posts dated in the future; default: _config.yml `future`, else false.")
    encoding: str | None = _key(None, "Text encoding of post files; default: _config.yml `encoding`, else utf-8.")
    summary_chars: int = _key(120, "Target length of a post's plain-text summary, in characters (cut at a sentence end).")
    extensions: list[str] = _key([".md", ".markdown", ".html"], "File name endings read as posts.")  # noqa: RUF009
    cache_dir: str = _key(".finews-cache", "Folder for the collector's cache, relative to the working folder.")


@dataclass(frozen=True)
class CollectorConfig:
    # Each limit is far beyond a real post, and stops a hostile one (a YAML alias bomb: 1 KB
    # that names hundreds of millions of values) before it is expanded; a post over one is a
    # rejected file naming the key.
    max_front_matter_chars: int = _key(100000, "Most characters in one post's front matter, checked before it is parsed (parsing costs in proportion); more: rejected.")
    max_front_matter_aliases: int = _key(1000, "Most aliases (*name) in one post's front matter; more: the file is rejected.")
    max_front_matter_nodes: int = _key(10000, "Most values one front matter may expand to, every alias written out (mappings, lists, keys, scalars); more: rejected.")
    max_front_matter_depth: int = _key(32, "Most lists and mappings nested inside one another in a front matter (a mapping of strings is 1); more: rejected.")
    max_tags: int = _key(1000, "Most distinct tags of one post (each tag gets feeds); more: the file is rejected.")
    max_categories: int = _key(100, "Most distinct categories of one post, folder categories included; more: the file is rejected.")


@dataclass(frozen=True)
class CategoryConfig:
    title: str = _key("", "Display name of the category, e.g. 财联社新闻; empty: the slug.")
    order: int = _key(1000, "Position of the category in the digest and listings (lower first).")


@dataclass(frozen=True)
class FeedsConfig:
    output: str = _key("_feeds", "Folder the feeds are written to.")
    base_url: str = _key("", "Public URL of the output folder; empty: <site url>/feeds.")
    limit: int = _key(50, "Entries per feed.")
    category_limit: int = _key(0, "Entries per category feed; 0: same as limit.")
    tag_limit: int = _key(0, "Entries per tag feed; 0: same as limit.")
    formats: list[str] = _key(["rss", "atom", "json"], "Formats written: rss, atom, json.", ("rss", "atom", "json"))  # noqa: RUF009
    full_content: bool = _key(True, "Put each post's full HTML in the feed; false: summary only.")
    websub_hub: str = _key("", "URL of a WebSub hub announced in every feed (rel=hub) and told of every feed a build changes (hub.mode=publish); empty: none.")
    # W3C WebSub leaves the publisher's request to the hub open; Google's hub takes several
    # hub.url values in one POST, not every hub does.
    websub_batch: int = _key(1, "Most feed URLs announced to the hub in one POST (several hub.url values); 1: one URL a request, which every hub accepts.")
    websub_timeout: float = _key(10.0, "Seconds one request to the WebSub hub may take.")
    websub_retry_backoff: float = _key(30.0, "Seconds before an announcement the hub did not take (no answer, 408, 429, 5xx) is tried again; doubled each time, at most an hour.")
    websub_build_wait: float = _key(15.0, "Seconds `build` spends announcing changed feeds to the hub before leaving the rest queued for the daemon or `finews-feeds websub`.")
    tags: bool = _key(True, "Write a feed for every tag.")
    stylesheet: bool = _key(True, "Write an XSL stylesheet and reference it from RSS and Atom files.")
    # RFC 5005 archived feeds: the whole history of a feed, in pages that never change once full
    # (docs/feeds.md). Tags are off by default: a site has thousands of tags of a few posts each,
    # and their history is already in the site and category archives.
    archives: bool = _key(True, "Publish the whole history of the site and category feeds as RFC 5005 archive pages (<feed folder>/archive/<N>/), linked from the feed.")
    archive_page_size: int = _key(0, "Entries per archive page; 0: the feed's own limit. At most the feed's limit (the feed shows what no full page holds yet); changing it rewrites every page.")
    tag_archives: bool = _key(False, "Archive the tag feeds too (many small pages for posts the site and category archives already hold).")
    pages: bool = _key(True, "Write an HTML page of each feed for browsers (index.html in a category's or tag's folder, feed.html for the site's); the daemon shows it to a browser that opens a feed URL.")
    # jekyll-feed's author is the post's (`author`, the first of `authors`, looked up in
    # _data/authors), else the site's (`author` in _config.yml); this key says what stands in when
    # neither names one. The bundled config sets "source" for the finews demo site.
    author_fallback: str = _key("none", "Author of a post that names none (nor does _config.yml `author`): none (no author, as jekyll-feed), source (the news source its body names, e.g. 财联社, else its first category's display name), site (the site title).", ("none", "source", "site"))


@dataclass(frozen=True)
class DigestConfig:
    send_at: str = _key("07:30", "Local time (HH:MM) the daily digest is sent.")
    timezone: str | None = _key(None, "Zone of send_at and of the digest's day; default: the site's time zone.")
    covers: str = _key("previous_day", "Day a digest covers: previous_day or same_day (relative to the send time).", ("previous_day", "same_day"))
    subject: str = _key("{site_title} 每日精选 · {date} · {count}篇", "Subject template; fields: {site_title}, {date} (2022年4月20日), {count}, {top_title} (first article's title).")
    from_: str = _key("finews <digest@localhost>", "From header, e.g. `finews <digest@example.com>`.")
    reply_to: str = _key("", "Reply-To header; empty: none.")
    postal_address: str = _key("", "Sender's postal address shown in the footer (required by anti-spam law).")
    max_per_category: int = _key(10, "Articles shown per category; the rest become an `and N more` link.")
    send_empty: bool = _key(False, "Send a digest on a day without articles.")
    templates: str = _key("", "Folder with templates overriding the bundled ones (digest.html.j2, digest.txt.j2, confirm.html.j2, confirm.txt.j2, manage.html.j2, manage.txt.j2; any of them); empty: bundled. Copies to start from: the project's templates/ folder.")
    confirm_subject: str = _key("请确认订阅 {site_title} 每日精选", "Subject of the confirmation mail of a new subscriber; field: {site_title}.")
    manage_subject: str = _key("管理您的 {site_title} 每日精选订阅", "Subject of the mail with the link to the manage page, sent to an active subscriber who submits the subscribe form again; field: {site_title}.")
    weekly_subject: str = _key("{site_title} 每周精选 · {start}至{date} · {count}篇", "Subject of a weekly subscriber's digest; fields: {site_title}, {start} and {date} (the week's first and last day), {count}, {top_title}.")
    list_id: str = _key("", "List-Id header value, e.g. `finews digest <digest.finews.example>`; empty: derived from the site.")
    unsubscribe_mailbox: str = _key("", "Address also offered in List-Unsubscribe as mailto:ADDRESS?subject=unsubscribe%20TOKEN (the subscriber's signed token), for mail clients without one-click; set it only if something acts on that mail: the bounces mailbox reader does when this address is delivered to it (docs/bounces.md). Empty: the one-click link alone.")
    archive_per_page: int = _key(30, "Digests listed on each page of the archive (digests/ under feeds.output, /digests/ in the web app).")
    archive_feed_limit: int = _key(20, "Digests in the archive's Atom feed (digests/atom.xml), newest first.")
    # Only a worker that stops answering while its session lives on (stopped, or its machine cut
    # off before the server notices) is waited for this long: one whose process dies is taken over
    # at once. Each message renews its row's lease when it starts, so the lease need only outlast
    # one attempt (smtp.send_deadline_seconds) with room to spare.
    lease_seconds: float = _key(300.0, "PostgreSQL with several workers: how long a worker holds the subscribers it has claimed; if it stops answering, another worker takes them over after this (at once when its process dies). Must exceed smtp.send_deadline_seconds.")


@dataclass(frozen=True)
class SmtpConfig:
    host: str = _key("localhost", "SMTP server host.")
    port: int = _key(0, "SMTP server port; 0: 25, 587 or 465 by security.")
    security: str = _key("starttls", "Connection security: none, starttls or tls.", ("none", "starttls", "tls"))
    username: str = _key("", "Login user; empty: no login. The password comes from FINEWS_SMTP_PASSWORD.")
    rate_per_second: float = _key(10.0, "Most messages sent per second; 0: no limit.")
    connections: int = _key(8, "Most SMTP connections one digest run keeps open to the relay at once (one sending thread each; the rate limit holds across all of them). A run opens one per 50 open messages up to this. 8 keeps well under the 20 a Postfix relay accepts from one client by default (smtpd_client_connection_count_limit, default_destination_concurrency_limit) while hiding a remote relay's latency; raise it for a relay of your own (listmonk's max_conns).")
    processes: int = _key(0, "Processes that build and send a digest run's messages, sharing smtp.connections: 1: the run's own process (one interpreter lock for the ledger, the messages and SMTP); 2 or more: that many sender processes while the run's own keeps the ledger; 0: one per CPU core (the local workers of --workers share the cores out) for a send of 2,000 messages or more, else 1.")
    max_retries: int = _key(5, "Retries of a temporary failure (4xx, dropped connection) before giving up for this run.")
    retry_backoff: float = _key(1.0, "First wait before a retry, in seconds; doubled at each retry.")
    timeout: float = _key(30.0, "Seconds one read or write on the connection may wait for the server before it counts as a connection error.")
    send_deadline_seconds: float = _key(60.0, "Seconds one message may take in all (connecting, EHLO/STARTTLS/login, MAIL/RCPT/DATA and the final reply): a server that trickles its answers is dropped at this point and the message retried as a temporary failure.")
    bounce_after: int = _key(3, "Permanent failures (5xx) after which a subscriber is marked bounced.")
    dkim_selector: str = _key("", "DKIM selector; DKIM signing is on when selector, domain and key_file are set.")
    dkim_domain: str = _key("", "DKIM signing domain (d=).")
    dkim_key_file: str = _key("", "Path of the DKIM private key (PEM).")


@dataclass(frozen=True)
class DatabaseConfig:
    url: str = _key("sqlite:///var/finews.sqlite3", "SQLAlchemy URL: sqlite:///path or postgresql+psycopg://user@host/db.")


@dataclass(frozen=True)
class WebConfig:
    host: str = _key("127.0.0.1", "Address the web app listens on.")
    port: int = _key(8080, "Port the web app listens on.")
    public_url: str = _key("", "Public URL of the web app, used in confirm and unsubscribe links; empty: http://host:port.")
    subscribe_per_minute: int = _key(5, "Subscribe requests accepted per client address per minute.")
    rate_limit_clients: int = _key(50000, "Most client addresses the subscribe rate limit remembers at once (bounds its memory; past it the least recently seen is forgotten).")
    max_body_bytes: int = _key(16384, "Largest request body accepted.")
    trusted_origins: list[str] = _key([], "Origins besides web.public_url's whose pages may POST the subscribe form, e.g. https://news.example.org when the site embeds it; a browser's cross-site POST from any other origin gets 403.")  # noqa: RUF009


@dataclass(frozen=True)
class OutboxConfig:
    poll_seconds: float = _key(30.0, "Seconds between the outbox worker's looks for mail that has come due (a new subscribe wakes it at once).")
    backoff_seconds: float = _key(60.0, "Wait after a mail's first temporary failure (4xx, no connection), in seconds; doubled at each further failure.")
    max_backoff_seconds: float = _key(3600.0, "Longest wait between two attempts at one mail, in seconds.")
    lifetime_hours: float = _key(120.0, "Give up on a mail (logged) once it has been queued this long without being accepted (Postfix's maximal_queue_lifetime: 5 days).")
    lease_seconds: float = _key(600.0, "How long a daemon owns an outbox row it is working on; another daemon on the same database may take it after that. Keep it above the longest send.")


@dataclass(frozen=True)
class SchedulerConfig:
    rebuild_every_minutes: int = _key(10, "Rebuild the feeds every N minutes; 0: only on start and on file changes.")
    watch: bool = _key(False, "Rebuild as soon as a post file appears or changes (watchdog).")
    misfire_grace_minutes: int = _key(720, "How late a missed digest run may still start (minutes).")
    build_stuck_after_seconds: float = _key(600.0, "A feed build still running after this many seconds makes /healthz answer 503 (a hung build); 0: never.")


@dataclass(frozen=True)
class BouncesConfig:
    # Bounces and complaints that arrive after the SMTP session (docs/bounces.md): from a
    # mailbox read over IMAP, and from a provider's webhook.
    address: str = _key("", "Envelope sender (Return-Path) of digests and confirmation mail, e.g. bounces@list.example, an address delivered to the mailbox below; empty: the From address, as before (and no VERP).")
    verp: bool = _key(True, "With address set: encode each recipient in the envelope sender (bounces+ann=example.org@list.example, Postfix's VERP), so a bounce names its subscriber even when the report itself is mangled; false: address as it is.")
    soft_weight: float = _key(0.5, "How much a soft bounce (a report with a 4.x.x status: mailbox full, ...; the relay gave up) counts towards smtp.bounce_after, a hard bounce (5.x.x) counting 1; 0: soft bounces are recorded only.")
    window_days: int = _key(30, "Reported bounces count towards smtp.bounce_after for this many days (a relay's 250 says nothing of delivery, so no send clears them; a new confirmation does); 0: for ever.")
    imap_host: str = _key("", "IMAP server of the mailbox that receives bounces, complaints and mailed unsubscribe requests; empty: no mailbox is read.")
    imap_port: int = _key(0, "IMAP port; 0: 993 for tls, 143 otherwise.")
    imap_security: str = _key("tls", "IMAP connection security: tls (IMAPS), starttls or none.", ("tls", "starttls", "none"))
    imap_username: str = _key("", "IMAP login; the password comes from FINEWS_IMAP_PASSWORD.")
    imap_folder: str = _key("INBOX", "Folder whose unseen messages are read.")
    imap_done_folder: str = _key("", "Folder each message acted on is moved to (created when missing); empty: it is flagged seen where it is. Messages not understood are left unseen for a person.")
    imap_timeout: float = _key(60.0, "Seconds one IMAP read or write may wait for the server.")
    poll_minutes: int = _key(10, "The daemon reads the mailbox every N minutes (when imap_host is set); 0: only `finews-feeds bounces`.")
    postmark_username: str = _key("postmark", "User name Postmark's webhooks send (HTTP Basic, in the webhook URL https://postmark:PASSWORD@host/webhooks/postmark); the password comes from FINEWS_POSTMARK_WEBHOOK_PASSWORD.")
    webhook_max_age_seconds: int = _key(300, "A provider webhook whose signed timestamp is older (or further in the future) than this is refused as a replay; signing key: FINEWS_MAILGUN_SIGNING_KEY.")


@dataclass(frozen=True)
class Config:
    site: SiteConfig = field(default_factory=SiteConfig)
    collector: CollectorConfig = field(default_factory=CollectorConfig)
    categories: dict[str, CategoryConfig] = field(default_factory=dict)
    feeds: FeedsConfig = field(default_factory=FeedsConfig)
    digest: DigestConfig = field(default_factory=DigestConfig)
    smtp: SmtpConfig = field(default_factory=SmtpConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    web: WebConfig = field(default_factory=WebConfig)
    outbox: OutboxConfig = field(default_factory=OutboxConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    bounces: BouncesConfig = field(default_factory=BouncesConfig)
    #: Secrets, from the environment only.
    smtp_password: str = field(default="", repr=False)
    secret_key: str = field(default="", repr=False)
    imap_password: str = field(default="", repr=False)
    mailgun_signing_key: str = field(default="", repr=False)
    postmark_webhook_password: str = field(default="", repr=False)
    #: The file the values came from, if any.
    path: Path | None = None

    def category_title(self, slug: str) -> str:
        category = self.categories.get(slug)
        return category.title if category and category.title else slug

    def category_order(self, slug: str) -> int:
        category = self.categories.get(slug)
        return category.order if category else CategoryConfig().order


SECTIONS: dict[str, type] = {
    "site": SiteConfig,
    "collector": CollectorConfig,
    "feeds": FeedsConfig,
    "digest": DigestConfig,
    "smtp": SmtpConfig,
    "database": DatabaseConfig,
    "web": WebConfig,
    "outbox": OutboxConfig,
    "scheduler": SchedulerConfig,
    "bounces": BouncesConfig,
}


def _toml_name(field_name: str) -> str:
    # `from` is a Python keyword; the dataclass field is `from_`.
    return field_name.rstrip("_")


def section_keys(section_cls: type) -> dict[str, dataclasses.Field[Any]]:
    """The keys of a section by their name in TOML."""
    return {_toml_name(f.name): f for f in dataclasses.fields(section_cls)}


def _convert(where: str, value: Any, annotation: Any, choices: tuple[str, ...], from_text: bool) -> Any:
    """Check (and, for environment strings, parse) one value against its key's type."""
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        inner = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value is None or (from_text and value == ""):
            return None
        return _convert(where, value, inner[0], choices, from_text)
    if origin is list:
        if from_text and isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where} = {value!r}: expected a list of strings")
        for item in value:
            if choices and item not in choices:
                raise ConfigError(f"{where} = {value!r}: {item!r} is not one of {', '.join(choices)}")
        return list(value)
    if annotation is bool:
        if from_text and isinstance(value, str):
            lowered = value.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where} = {value!r}: expected true or false")
    if annotation is int:
        if from_text and isinstance(value, str):
            try:
                value = int(value.strip())
            except ValueError:
                raise ConfigError(f"{where} = {value!r}: expected a whole number") from None
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} = {value!r}: expected a whole number")
        if value < 0:
            raise ConfigError(f"{where} = {value!r}: must not be negative")
        return value
    if annotation is float:
        if from_text and isinstance(value, str):
            try:
                value = float(value.strip())
            except ValueError:
                raise ConfigError(f"{where} = {value!r}: expected a number") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} = {value!r}: expected a number")
        if value < 0:
            raise ConfigError(f"{where} = {value!r}: must not be negative")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} = {value!r}: expected a string")
        if choices and value not in choices:
            raise ConfigError(f"{where} = {value!r}: expected one of {', '.join(choices)}")
        return value
    raise AssertionError(f"unsupported config type {annotation!r}")  # pragma: no cover


def _section(name: str, cls: type, values: Mapping[str, Any], where_prefix: str, from_text: bool) -> Any:
    keys = section_keys(cls)
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        where = f"{where_prefix}{name}.{key}"
        if key not in keys:
            known = ", ".join(sorted(keys))
            raise ConfigError(f"unknown key {where} = {value!r}", hint=f"keys of [{name}]: {known}")
        f = keys[key]
        kwargs[f.name] = _convert(where, value, hints[f.name], f.metadata.get("choices", ()), from_text)
    return cls(**kwargs)


def check_public_url(config: Config) -> None:
    """``web.public_url`` must be an http(s) URL when set: confirm, unsubscribe and manage links are built
    from it, and mail clients act only on http(s) links."""
    if config.web.public_url and urlsplit(config.web.public_url).scheme not in ("http", "https"):
        raise ConfigError(f"web.public_url = {config.web.public_url!r}: expected an http:// or https:// URL",
                          hint="unsubscribe links in the digest are built from it")


def _validate(config: Config) -> None:
    def zone(where: str, value: str | None) -> None:
        if value:
            try:
                ZoneInfo(value)
            except (ZoneInfoNotFoundError, ValueError):
                raise ConfigError(f"{where} = {value!r}: not a known time zone (e.g. Asia/Shanghai)") from None

    zone("site.timezone", config.site.timezone)
    zone("digest.timezone", config.digest.timezone)
    mailbox = config.digest.unsubscribe_mailbox
    if mailbox and not re.fullmatch(r"[^@\s<>,;:\"?&]+@[^@\s<>,;:\"?&]+\.[^@\s<>,;:\"?&.]+", mailbox):
        raise ConfigError(f"digest.unsubscribe_mailbox = {mailbox!r}: expected a bare address, e.g. unsubscribe@example.com")
    bounce_address = config.bounces.address
    if bounce_address and not re.fullmatch(r"[A-Za-z0-9._-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+", bounce_address):
        raise ConfigError(f"bounces.address = {bounce_address!r}: expected a plain ASCII address without + or =, "
                          "e.g. bounces@list.example", hint="VERP appends +recipient to its local part")
    if config.bounces.poll_minutes and config.bounces.imap_host and not config.bounces.imap_username:
        raise ConfigError(f"bounces.imap_username = '': expected the login of the mailbox on {config.bounces.imap_host}",
                          hint="the password comes from FINEWS_IMAP_PASSWORD")
    if config.bounces.imap_port > 65535:
        raise ConfigError(f"bounces.imap_port = {config.bounces.imap_port!r}: expected a port number up to 65535")
    if config.digest.list_id and not LIST_ID.fullmatch(config.digest.list_id):
        raise ConfigError(f"digest.list_id = {config.digest.list_id!r}: expected a name and an id in angle brackets, "
                          "e.g. finews digest <digest.finews.example>",
                          hint="the id is ASCII letters, digits and dots (RFC 2919); list filters match on it")
    if not re.fullmatch(r"([01]?\d|2[0-3]):[0-5]\d", config.digest.send_at):
        raise ConfigError(f"digest.send_at = {config.digest.send_at!r}: expected HH:MM, e.g. 07:30")
    if not config.site.extensions or not all(e.startswith(".") for e in config.site.extensions):
        raise ConfigError(f"site.extensions = {config.site.extensions!r}: expected endings like \".md\"")
    if config.web.port > 65535:
        raise ConfigError(f"web.port = {config.web.port!r}: expected a port number up to 65535")
    check_public_url(config)
    if config.smtp.port > 65535:
        raise ConfigError(f"smtp.port = {config.smtp.port!r}: expected a port number up to 65535")
    if config.smtp.connections < 1:
        raise ConfigError(f"smtp.connections = {config.smtp.connections!r}: expected 1 or more")
    if config.smtp.send_deadline_seconds <= 0:
        raise ConfigError(f"smtp.send_deadline_seconds = {config.smtp.send_deadline_seconds!r}: expected a positive number of seconds",
                          hint="without a deadline a server that trickles its replies holds the sender forever")
    for key in ("poll_seconds", "backoff_seconds", "max_backoff_seconds", "lifetime_hours", "lease_seconds"):
        if getattr(config.outbox, key) <= 0:
            raise ConfigError(f"outbox.{key} = {getattr(config.outbox, key)!r}: expected more than 0")
    if config.outbox.lease_seconds <= config.smtp.send_deadline_seconds:
        raise ConfigError(f"outbox.lease_seconds = {config.outbox.lease_seconds!r}: expected more than "
                          f"smtp.send_deadline_seconds ({config.smtp.send_deadline_seconds!r})",
                          hint="a lease that ends while its mail is still being sent lets another worker send it again")
    if config.digest.lease_seconds <= config.smtp.send_deadline_seconds:
        raise ConfigError(f"digest.lease_seconds = {config.digest.lease_seconds!r}: expected more than "
                          f"smtp.send_deadline_seconds ({config.smtp.send_deadline_seconds!r})",
                          hint="a lease that ends while its message is still being sent lets another worker send it again")
    hub = config.feeds.websub_hub
    if hub and not re.fullmatch(r"https?://[^/\s?#]+(/\S*)?", hub):
        raise ConfigError(f"feeds.websub_hub = {hub!r}: expected an http(s) URL, e.g. https://pubsubhubbub.appspot.com/")
    if config.feeds.websub_batch < 1:
        raise ConfigError(f"feeds.websub_batch = {config.feeds.websub_batch!r}: expected 1 or more")
    for key in ("websub_timeout", "websub_retry_backoff"):
        if getattr(config.feeds, key) <= 0:
            raise ConfigError(f"feeds.{key} = {getattr(config.feeds, key)!r}: expected more than 0")
    if config.feeds.websub_build_wait < 0:
        raise ConfigError(f"feeds.websub_build_wait = {config.feeds.websub_build_wait!r}: expected 0 or more")
    for origin in config.web.trusted_origins:
        if not re.fullmatch(r"https?://[^/\s?#]+", origin):
            raise ConfigError(f"web.trusted_origins = {config.web.trusted_origins!r}: {origin!r} is not an origin",
                              hint="write scheme and host only, e.g. https://news.example.org")
    if config.digest.archive_per_page < 1:
        raise ConfigError(f"digest.archive_per_page = {config.digest.archive_per_page!r}: expected at least 1")
    if config.digest.archive_feed_limit < 0:
        raise ConfigError(f"digest.archive_feed_limit = {config.digest.archive_feed_limit!r}: expected 0 or more")
    if config.site.summary_chars < 10:
        raise ConfigError(f"site.summary_chars = {config.site.summary_chars!r}: expected at least 10")
    for key in ("limit", "category_limit", "tag_limit"):
        if key == "limit" and config.feeds.limit < 1:
            raise ConfigError(f"feeds.limit = {config.feeds.limit!r}: expected at least 1")
    _check_archive_page_size(config.feeds)
    for key in ("confirm_subject", "manage_subject"):
        value = getattr(config.digest, key)
        try:
            value.format(site_title="")
        except (KeyError, IndexError, ValueError) as exc:
            raise ConfigError(f"digest.{key} = {value!r}: bad template field {exc}", hint="field: {site_title}") from None
    try:
        config.digest.weekly_subject.format(site_title="", start="", date="", count=0, top_title="")
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigError(
            f"digest.weekly_subject = {config.digest.weekly_subject!r}: bad template field {exc}",
            hint="fields: {site_title}, {start}, {date}, {count}, {top_title}",
        ) from None
    try:
        config.digest.subject.format(site_title="", date="", count=0, top_title="")
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigError(
            f"digest.subject = {config.digest.subject!r}: bad template field {exc}",
            hint="fields: {site_title}, {date}, {count}, {top_title}",
        ) from None


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for section, values in override.items():
        if isinstance(values, Mapping):
            merged.setdefault(section, {})
            if not isinstance(merged[section], dict):
                merged[section] = {}
            for key, value in values.items():
                if isinstance(value, Mapping) and isinstance(merged[section].get(key), dict):
                    merged[section][key] = {**merged[section][key], **value}
                else:
                    merged[section][key] = value
        else:
            merged[section] = values
    return merged


def read_file(path: Path) -> dict[str, Any]:
    """Read a TOML config file; a missing or broken file is a :class:`ConfigError`."""
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found", hint="pass --config FILE or create config/finews.toml") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror}") from None


def environment_name(section: str, key: str) -> str:
    """The variable that sets ``section.key``, e.g. ``FINEWS_SMTP_HOST``."""
    return f"FINEWS_{section}_{key}".upper()


def _environment_names() -> list[str]:
    """Every variable the tool itself reads: one per key, the secrets and the config file."""
    keys = [environment_name(section, key) for section, cls in SECTIONS.items() for key in section_keys(cls)]
    return [*keys, *SECRET_VARIABLES, CONFIG_VARIABLE]


def unknown_variable_warning(name: str) -> str:
    """What to tell the user about ``name``, a ``FINEWS_`` variable that sets nothing."""
    # Compared without the prefix all names share, which would make any two look alike.
    prefix = len("FINEWS_")
    known = {known_name[prefix:]: known_name for known_name in _environment_names()}
    close = difflib.get_close_matches(name[prefix:].upper(), known, n=1)
    if close:
        return f"{name} is not a setting; did you mean {known[close[0]]}?"
    return f"{name} is not a setting; settings are FINEWS_<SECTION>_<KEY> for the keys `finews-feeds config` lists"


def env_overrides(environ: Mapping[str, str]) -> tuple[dict[str, dict[str, str]], list[str]]:
    """``FINEWS_<SECTION>_<KEY>`` variables as a nested mapping of strings, and the names of
    the ``FINEWS_`` variables that set nothing (sorted).

    An unknown name is not an error: the environment is shared with other programs and other
    versions of this one, and a variable that sets nothing does no harm once the user is told.
    """
    out: dict[str, dict[str, str]] = {}
    unknown: list[str] = []
    for name, value in environ.items():
        if not name.startswith("FINEWS_") or name in (*SECRET_VARIABLES, CONFIG_VARIABLE, *OTHER_VARIABLES):
            continue
        rest = name[len("FINEWS_"):].lower()
        for section, cls in SECTIONS.items():
            key = rest[len(section) + 1:]
            if rest.startswith(section + "_") and key in section_keys(cls):
                out.setdefault(section, {})[key] = value
                break
        else:
            unknown.append(name)
    return out, sorted(unknown)


#: Where a value in effect came from, lowest layer first.
SOURCES = ("default", "file", "environment", "flag")


@dataclass(frozen=True)
class Setting:
    """One key's value in effect and where it came from (``finews-feeds config``)."""

    section: str  #: ``site``, ..., or ``categories.<slug>``
    key: str
    value: Any
    source: str  #: one of :data:`SOURCES`
    #: Exactly where: the file, the variable (``FINEWS_SMTP_HOST``) or the flag (``--site``); "" for a default.
    origin: str = ""


@dataclass(frozen=True)
class Effective:
    """A config and the source of each of its keys."""

    config: Config
    #: (section, key) -> (source, origin); keys not listed are defaults.
    sources: Mapping[tuple[str, str], tuple[str, str]]

    def settings(self) -> list[Setting]:
        """Every key of every section, then each configured category's, in the table's order."""
        out: list[Setting] = []
        tables: list[tuple[str, Any]] = [(name, getattr(self.config, name)) for name in SECTIONS]
        tables += [(f"categories.{slug}", category) for slug, category in self.config.categories.items()]
        for name, table in tables:
            for f in dataclasses.fields(table):
                key = _toml_name(f.name)
                source, origin = self.sources.get((name, key), ("default", ""))
                out.append(Setting(name, key, getattr(table, f.name), source, origin))
        return out


def _check_archive_page_size(feeds: FeedsConfig) -> None:
    """An archive page may hold no more than a feed shows: the entries not on a full page yet
    are only in the feed, and one more would be in neither."""
    size = feeds.archive_page_size
    if size < 0:
        raise ConfigError(f"feeds.archive_page_size = {size!r}: expected 0 (the feed's limit) or more")
    if not feeds.archives or size == 0:
        return
    limits = [("limit", feeds.limit), ("category_limit", feeds.category_limit or feeds.limit)]
    if feeds.tag_archives:
        limits.append(("tag_limit", feeds.tag_limit or feeds.limit))
    for key, limit in limits:
        if size > limit:
            raise ConfigError(f"feeds.archive_page_size = {size!r} is more than feeds.{key} = {limit!r}",
                              hint="an archive page can hold at most what the feed shows; 0 uses each feed's limit")


def build_config(
    file_values: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    path: Path | None = None,
) -> Config:
    """Layer file values, then environment variables, then flags over the defaults.

    ``overrides`` holds typed values from flags, as ``{"site": {"source": "..."}}``.
    """
    return layer_config(file_values, environ, overrides, path).config


def layer_config(
    file_values: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    path: Path | None = None,
    flag_names: Mapping[str, str] | None = None,
) -> Effective:
    """:func:`build_config`, also saying where each key's value came from.

    ``flag_names`` names the flag behind an override (``{"site.source": "--site"}``), for the report.
    """
    file_values = dict(file_values or {})
    environ = environ or {}
    flag_names = flag_names or {}
    for secret in ("password",):
        if secret in file_values.get("smtp", {}):
            raise ConfigError("smtp.password must not be in a file", hint="set FINEWS_SMTP_PASSWORD in the environment")
    if "secret_key" in file_values.get("web", {}) or "secret_key" in file_values:
        raise ConfigError("secret_key must not be in a file", hint="set FINEWS_SECRET_KEY in the environment")

    file_origin = str(path) if path is not None else "(values given)"
    sources: dict[tuple[str, str], tuple[str, str]] = {}
    sections: dict[str, Any] = {}
    env, unknown_variables = env_overrides(environ)
    for name in unknown_variables:
        # The value stays out of the log: a mistyped FINEWS_SMTP_PASSWORD is still a password.
        log.warning("%s", unknown_variable_warning(name))
    for name, cls in SECTIONS.items():
        raw = file_values.pop(name, {})
        if not isinstance(raw, Mapping):
            raise ConfigError(f"[{name}] = {raw!r}: expected a table")
        typed = _section(name, cls, raw, "", from_text=False)
        values = {_toml_name(f.name): getattr(typed, f.name) for f in dataclasses.fields(cls) if _toml_name(f.name) in raw}
        sources.update({(name, key): ("file", file_origin) for key in values})
        if name in env:
            from_env = _section(name, cls, env[name], "FINEWS_ env: ", from_text=True)
            values.update({k: getattr(from_env, section_keys(cls)[k].name) for k in env[name]})
            sources.update({(name, key): ("environment", environment_name(name, key)) for key in env[name]})
        if overrides and name in overrides:
            values.update(overrides[name])
            sources.update({(name, key): ("flag", flag_names.get(f"{name}.{key}", "")) for key in overrides[name]})
        sections[name] = _section(name, cls, values, "", from_text=False)

    categories_raw = file_values.pop("categories", {})
    if not isinstance(categories_raw, Mapping):
        raise ConfigError(f"[categories] = {categories_raw!r}: expected tables like [categories.cailianshe]")
    categories: dict[str, CategoryConfig] = {}
    for slug, values in categories_raw.items():
        if not isinstance(values, Mapping):
            raise ConfigError(f"categories.{slug} = {values!r}: expected a table with title and order")
        categories[slug] = _section(f"categories.{slug}", CategoryConfig, values, "", from_text=False)
        sources.update({(f"categories.{slug}", key): ("file", file_origin) for key in values})

    if file_values:
        unknown = next(iter(file_values))
        raise ConfigError(
            f"unknown section [{unknown}]",
            hint=f"sections: {', '.join([*SECTIONS, 'categories'])}",
        )
    config = Config(
        categories=categories,
        smtp_password=environ.get("FINEWS_SMTP_PASSWORD", ""),
        secret_key=environ.get("FINEWS_SECRET_KEY", ""),
        imap_password=environ.get("FINEWS_IMAP_PASSWORD", ""),
        mailgun_signing_key=environ.get("FINEWS_MAILGUN_SIGNING_KEY", ""),
        postmark_webhook_password=environ.get("FINEWS_POSTMARK_WEBHOOK_PASSWORD", ""),
        path=path,
        **sections,
    )
    _validate(config)
    return Effective(config, sources)


def config_path(path: Path | None, environ: Mapping[str, str]) -> Path | None:
    """The file the CLI reads: ``path``, else ``$FINEWS_CONFIG``, else ``config/finews.toml`` when
    it exists, else none (the defaults alone)."""
    if path is None and environ.get(CONFIG_VARIABLE):
        path = Path(environ[CONFIG_VARIABLE])
    if path is None and DEFAULT_CONFIG_PATH.is_file():
        path = DEFAULT_CONFIG_PATH
    return path


def load_config(
    path: Path | None,
    environ: Mapping[str, str],
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Config:
    """Load the config the CLI uses: ``path``, else ``$FINEWS_CONFIG``, else
    ``config/finews.toml`` when it exists, else the defaults alone."""
    return load_effective(path, environ, overrides).config


def load_effective(
    path: Path | None,
    environ: Mapping[str, str],
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    flag_names: Mapping[str, str] | None = None,
) -> Effective:
    """:func:`load_config`, with the source of every value."""
    path = config_path(path, environ)
    file_values = read_file(path) if path is not None else {}
    return layer_config(file_values, environ, overrides, path, flag_names)


#: Shown instead of a secret's value.
MASK = "********"


def _masked_url(url: str) -> str:
    """A database URL with its password masked (``postgresql+psycopg://user:********@host/db``)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:{MASK}@{host}"))


def describe_effective(effective: Effective) -> str:
    """Every key's value in effect and its source, as TOML with a comment per line (secrets masked)."""
    config = effective.config
    lines = [
        "# The configuration in effect. After each value: where it came from (default, file,",
        "# environment or flag, lowest first; see `finews-feeds config --defaults` for what each key is).",
        f"# config file: {config.path if config.path is not None else '(none: defaults, environment and flags)'}",
    ]
    section = ""
    for setting in effective.settings():
        if setting.section != section:
            section = setting.section
            lines += ["", f"[{section}]"]
        value = setting.value
        if (section, setting.key) == ("database", "url"):
            value = _masked_url(value)
        # The file is named once, above; a variable or a flag on its line.
        where = setting.source + (f" {setting.origin}" if setting.origin and setting.source != "file" else "")
        if value is None:
            # A site key left unset is read from the Jekyll site's _config.yml (see site/jekyll.py).
            lines.append(f"# {setting.key} = (unset: the site's _config.yml, else Jekyll's default)  # {where}")
        else:
            lines.append(f"{setting.key} = {_toml_value(value)}  # {where}")
    lines += ["", "# Secrets, from the environment only:"]
    for name, value in (("FINEWS_SECRET_KEY", config.secret_key), ("FINEWS_SMTP_PASSWORD", config.smtp_password),
                        ("FINEWS_IMAP_PASSWORD", config.imap_password),
                        ("FINEWS_MAILGUN_SIGNING_KEY", config.mailgun_signing_key),
                        ("FINEWS_POSTMARK_WEBHOOK_PASSWORD", config.postmark_webhook_password)):
        lines.append(f"# {name} = {MASK if value else '(not set)'}")
    return "\n".join(lines) + "\n"


def describe() -> str:
    """Every key with its default and comment, as TOML (the `config` command prints it)."""
    lines: list[str] = []
    for name, cls in SECTIONS.items():
        lines.append(f"[{name}]")
        for f in dataclasses.fields(cls):
            default = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
            lines.append(f"# {f.metadata['doc']}")
            shown = "(unset)" if default is None else _toml_value(default)
            lines.append(f"{'# ' if default is None else ''}{_toml_name(f.name)} = {shown}")
        lines.append("")
    lines.append("[categories.cailianshe]")
    for f in dataclasses.fields(CategoryConfig):
        lines.append(f"# {f.metadata['doc']}")
        lines.append(f"{f.name} = {_toml_value(f.default)}")
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


if __name__ == "__main__":  # pragma: no cover
    sys.stdout.write(describe())
