"""A test send: a day's real digest message to one address, outside the delivery ledger.

A publisher checks the digest in real mail clients before the list gets it. The message is the
one delivery builds (:func:`~finews_feeds.mail.delivery.digest_message`: the selection's variant,
List-Unsubscribe, List-Id, DKIM through the transport), with the categories, tags and name of the
subscriber given with ``--as``. What is bound to an address is the test address's: the To header,
the "sent to" line and the unsubscribe link (clicking it in the test never unsubscribes the
subscriber), and a Message-ID of its own, so a mail client does not take the real digest, later,
for a copy of the test. The store is only read; no ledger row or run claim is made.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from email.utils import make_msgid
from zoneinfo import ZoneInfo

from ..config import Config, check_public_url
from ..errors import DigestError, SubscriberError
from ..models import Posts
from ..site.collector import collect_site
from .addresses import normalize_email
from .delivery import digest_message, envelope_sender
from .digest import DigestRenderer, Selection, posts_of_day
from .mailer import SmtpTransport, transport_from_config
from .message import domain_of
from .store import Store
from .tokens import secret_of

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SendTestReport:
    day: date
    to: str
    #: The subscriber whose selection and name were used, or "" (everything, no name).
    as_email: str
    count: int
    subject: str
    message_id: str

    def summary(self) -> str:
        who = f" as {self.as_email}" if self.as_email else ""
        return (f"test: the {self.day} digest{who} ({self.count} articles) sent to {self.to}, "
                f"Message-ID {self.message_id}; no subscriber's ledger changed")


def send_test(
    config: Config,
    day: date,
    to: str,
    now: datetime,
    *,
    as_email: str = "",
    collect: Callable[[Config], Posts] | None = None,
    transport_factory: Callable[[], SmtpTransport] | None = None,
) -> SendTestReport:
    """Send ``day``'s digest to ``to`` as ``as_email`` (a subscriber) would get it; nothing is recorded.

    Raises :class:`SubscriberError` for an unknown subscriber or a bad address, :class:`DigestError`
    when the selection has no message that day, a :class:`DeliveryError` when the server refuses it.
    """
    secret = secret_of(config)
    check_public_url(config)  # Config objects made in code are not validated on the way in
    to = normalize_email(to)
    name = ""
    selection = Selection()
    if as_email:
        with Store.open(config.database.url) as store:
            sub = store.get_subscriber(normalize_email(as_email))
        if sub is None:
            raise SubscriberError(f"{as_email} is not a subscriber", hint="see `finews-feeds subscribers list`")
        as_email, name, selection = sub.email, sub.name, Selection(frozenset(sub.categories), frozenset(sub.tags))
    collection = (collect or collect_site)(config)
    zone = ZoneInfo(config.digest.timezone) if config.digest.timezone else collection.site.timezone
    renderer = DigestRenderer(config, collection.site, collection.content)
    variant = renderer.render(day, posts_of_day(collection, day, zone), selection)
    if variant is None:
        whose = f"{as_email}'s categories and tags" if as_email else "the day"
        raise DigestError(f"no digest of {day} for {whose}: no article matches, so nobody would get one",
                          hint="pick another --date, or set digest.send_empty = true")
    msg_id = make_msgid("test", domain=domain_of(config.digest.from_))
    msg = digest_message(config, collection.site, variant, secret, to, name, msg_id, now)
    with (transport_factory or (lambda: transport_from_config(config)))() as transport:
        transport.send(msg, sender=envelope_sender(config), recipients=(to,))
    log.info("test digest of %s sent (%d articles)", day, variant.count,
             extra={"day": day.isoformat(), "articles": variant.count, "message_id": msg_id})
    return SendTestReport(day=day, to=to, as_email=as_email, count=variant.count, subject=variant.subject,
                          message_id=msg_id)
