"""The preference centre over real HTTP (the web app on uvicorn, a real store, the outbox worker and an
aiosmtpd sink, as in test_web.py): the manage link in the mails, the page and its POSTs, the pause,
the subscriber's data download and "delete everything"."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from email.message import EmailMessage
from typing import Any

import httpx
import lxml.html
from smtp_fakes import SECRET, make_collection, wait_until
from test_web import DAY, T0, Web, digest_for, shifted
from test_web import web as web  # the fixture

from finews_feeds.mail.migrations import METADATA
from finews_feeds.mail.tokens import make_token, read_token


def text_of(msg: EmailMessage) -> str:
    return str(msg.get_body(("plain",)).get_content())  # type: ignore[union-attr]


def html_of(msg: EmailMessage) -> str:
    return str(msg.get_body(("html",)).get_content())  # type: ignore[union-attr]


def manage_path(web: Web, msg: EmailMessage) -> str:
    """The manage link of a mail's text part, as a path; the HTML part links to the same."""
    [link] = re.findall(rf"{re.escape(web.base)}/manage/[^\s\"<]+", text_of(msg))
    hrefs = lxml.html.fromstring(html_of(msg)).xpath("//a[text()='管理订阅']/@href")
    assert hrefs == [link]
    return link.removeprefix(web.base)


def form_field(page: str, action: str) -> str:
    [value] = lxml.html.fromstring(page).xpath("//form[@action=$a]//input[@name='form']/@value", a=action)
    return str(value)


def active(web: Web, email: str, **choices: Any) -> str:
    """An active subscriber; their manage path (as a digest would carry it)."""
    web.store.add_subscriber(email, confirmed=True, now=T0, **choices)
    return f"/manage/{make_token(SECRET, 'manage', email)}"


def post(client: httpx.Client, path: str, action: str, **fields: Any) -> httpx.Response:
    """POST the form of ``action`` on the page at ``path``, with the page's own form field."""
    page = client.get(path)
    assert page.status_code == 200
    return client.post(f"{path}/{action}", data={"form": form_field(page.text, f"{path}/{action}"), **fields})


# -- A: the link, the page, the changes --------------------------------------------------------


def test_the_confirmation_mail_and_every_digest_carry_the_subscribers_own_manage_link(web: Web) -> None:
    with web.client() as client:
        assert client.post("/subscribe", data={"email": "reader@example.org"}).status_code == 200
        assert wait_until(lambda: len(web.sink.messages) == 1)
        confirmation = web.sink.messages[0].message
        path = manage_path(web, confirmation)
        assert read_token(SECRET, "manage", path.removeprefix("/manage/")) == "reader@example.org"
        confirm = next(w for w in text_of(confirmation).split() if w.startswith(f"{web.base}/confirm/"))
        assert client.post(confirm.removeprefix(web.base)).status_code == 200

        digest_for(web, DAY, make_collection())
        [digest] = [m.message for m in web.sink.messages[1:]]
        link = manage_path(web, digest)
        assert read_token(SECRET, "manage", link.removeprefix("/manage/")) == "reader@example.org"
        page = client.get(link)
        assert page.status_code == 200
        assert "reader@example.org：订阅中。" in page.text
        assert (page.headers["referrer-policy"], page.headers["cache-control"]) == ("no-referrer", "no-store")


def test_an_active_subscriber_who_submits_the_form_again_is_mailed_the_manage_link_and_nothing_changes(
        web: Web) -> None:
    active(web, "known@example.org", categories=["yicai"])
    with web.client() as client:
        known = client.post("/subscribe", data={"email": "known@example.org", "category": "cailianshe"})
        fresh = client.post("/subscribe", data={"email": "fresh@example.org", "category": "cailianshe"})
    # The same answer whether or not the address is known (the outbox decides afterwards).
    assert (known.status_code, fresh.status_code) == (200, 200)
    assert known.text.replace("known@", "X@") == fresh.text.replace("fresh@", "X@")
    assert wait_until(lambda: len(web.sink.messages) == 2)
    mails = {m.rcpt_tos[0]: m.message for m in web.sink.messages}
    mail = mails["known@example.org"]
    assert mail["Subject"] == "管理您的 finews 财经新闻 每日精选订阅"
    assert "它已经订阅了finews 财经新闻每日精选" in text_of(mail)
    path = manage_path(web, mail)
    assert read_token(SECRET, "manage", path.removeprefix("/manage/")) == "known@example.org"
    assert mails["fresh@example.org"]["Subject"] == "请确认订阅 finews 财经新闻 每日精选"
    sub = web.store.get_subscriber("known@example.org")
    assert sub is not None and (sub.status, sub.categories) == ("active", ("yicai",))
    assert [r.last_error for r in web.store.outbox_rows("subscribe")] == ["manage", "confirm"]


def test_the_page_saves_categories_tags_daily_or_weekly_and_the_weekday_and_redirects_back(web: Web) -> None:
    path = active(web, "a@example.org", categories=["yicai"])
    with web.client() as client:
        page = client.get(path)
        doc = lxml.html.fromstring(page.text)
        assert doc.xpath("//input[@name='category' and @checked]/@value") == ["yicai"]
        assert doc.xpath("//input[@name='frequency' and @checked]/@value") == ["daily"]
        saved = post(client, path, "preferences", category=["cailianshe", "yicai"], tags="IPO， A股",
                     frequency="weekly", weekday="4")
        assert (saved.status_code, saved.headers["location"]) == (303, f"{path}?done=saved")
        sub = web.store.get_subscriber("a@example.org")
        assert sub is not None
        assert (sub.categories, sub.tags, sub.frequency, sub.weekday) == (
            ("cailianshe", "yicai"), ("A股", "IPO"), "weekly", 4)
        shown = client.get(saved.headers["location"])
        doc = lxml.html.fromstring(shown.text)
        assert doc.xpath("//p[@role='status']/text()") == ["已保存。"]
        assert doc.xpath("//input[@name='category' and @checked]/@value") == ["cailianshe", "yicai"]
        assert doc.xpath("//input[@name='tags']/@value") == ["A股，IPO"]
        assert doc.xpath("//input[@name='frequency' and @checked]/@value") == ["weekly"]
        assert doc.xpath("//select[@name='weekday']/option[@selected]/text()") == ["星期五"]
        # Everything: no category and no tag.
        post(client, path, "preferences", frequency="daily", weekday="4")
        sub = web.store.get_subscriber("a@example.org")
        assert sub is not None and (sub.categories, sub.tags, sub.frequency) == ((), (), "daily")
        for bad in ({"category": "nope"}, {"tags": "不存在"}, {"frequency": "monthly"}, {"weekday": "7"}):
            answer = post(client, path, "preferences", **{"frequency": "daily", **bad})
            assert answer.status_code == 400, bad
    sub = web.store.get_subscriber("a@example.org")
    assert sub is not None and (sub.categories, sub.tags, sub.frequency, sub.weekday) == ((), (), "daily", 4)


def test_a_post_without_this_pages_form_field_or_from_another_site_is_refused_and_changes_nothing(
        web: Web) -> None:
    path = active(web, "a@example.org")
    other = active(web, "b@example.org")
    with web.client() as client:
        page = client.get(path).text
        field = form_field(page, f"{path}/unsubscribe")
        foreign = form_field(client.get(other).text, f"{other}/unsubscribe")
        for data in ({"days": "3"}, {"form": "forged"}, {"form": foreign}, {"form": field + "x"}):
            refused = client.post(f"{path}/unsubscribe", data=data)
            assert refused.status_code == 403, data
            assert "请求被拒绝" in refused.text
        cross = client.post(f"{path}/unsubscribe", data={"form": field}, headers={"Origin": "https://evil.example"})
        assert cross.status_code == 403
        tampered = client.post(f"{path}x/unsubscribe", data={"form": field})
        assert tampered.status_code == 400
        assert web.statuses() == {"a@example.org": "active", "b@example.org": "active"}
        # The page's own field, from this site: it goes through.
        done = client.post(f"{path}/unsubscribe", data={"form": field}, headers={"Origin": web.base})
        assert (done.status_code, done.headers["location"]) == (303, f"{path}?done=unsubscribed")
    assert web.statuses() == {"a@example.org": "unsubscribed", "b@example.org": "active"}


def test_a_pause_sends_nothing_until_it_ends_and_resume_lifts_it_early(web: Web) -> None:
    path = active(web, "p@example.org")
    active(web, "q@example.org")
    with web.client() as client:
        paused = post(client, path, "pause", days="3")
        assert paused.status_code == 303
        sub = web.store.get_subscriber("p@example.org")
        assert sub is not None and sub.paused_until == T0 + timedelta(days=3)
        page = client.get(paused.headers["location"]).text
        assert "已暂停，2022年4月24日 15:30 之后恢复发送。" in page  # shown in the site's zone (UTC+8)
        # (While paused the page offers "resume"; its form field is the page's, good for any of its forms.)
        field = form_field(page, f"{path}/resume")
        for bad in ("0", "366", "x", ""):
            assert client.post(f"{path}/pause", data={"form": field, "days": bad}).status_code == 400

        collection = make_collection()
        digest_for(web, DAY, collection)
        assert [m.rcpt_tos for m in web.sink.messages] == [["q@example.org"]]
        # Resumed by hand: the next day's digest goes to both.
        assert post(client, path, "resume").headers["location"] == f"{path}?done=resumed"
    sub = web.store.get_subscriber("p@example.org")
    assert sub is not None and sub.paused_until is None
    digest_for(web, DAY + timedelta(days=1), shifted(collection, 1))
    assert sorted(m.rcpt_tos[0] for m in web.sink.messages[1:]) == ["p@example.org", "q@example.org"]


def test_unsubscribe_and_subscribe_again_from_the_page_without_a_new_confirmation(web: Web) -> None:
    path = active(web, "a@example.org", categories=["yicai"])
    with web.client() as client:
        post(client, path, "unsubscribe")
        assert web.statuses() == {"a@example.org": "unsubscribed"}
        page = client.get(path).text
        assert "a@example.org：已退订。" in page and f'action="{path}/preferences"' not in page
        back = post(client, path, "resubscribe")
        assert back.headers["location"] == f"{path}?done=resubscribed"
    sub = web.store.get_subscriber("a@example.org")
    assert sub is not None and (sub.status, sub.categories) == ("active", ("yicai",))
    assert web.sink.messages == []


def test_get_and_head_change_nothing_and_links_that_are_not_ours_or_lead_nowhere_say_so(web: Web) -> None:
    path = active(web, "a@example.org")
    with web.client() as client:
        for action in ("unsubscribe", "delete", "pause"):
            assert client.get(f"{path}/{action}").status_code == 405
        assert client.head(path).status_code == 200
        assert client.get("/manage/not-a-token").status_code == 400
        assert client.get(f"/manage/{make_token(SECRET, 'unsubscribe', 'a@example.org')}").status_code == 400
        nobody = client.get(f"/manage/{make_token(SECRET, 'manage', 'nobody@example.org')}")
        assert nobody.status_code == 404 and "没有这个订阅" in nobody.text
        help_page = client.get("/manage")
        assert help_page.status_code == 200 and "再提交一次订阅表单" in help_page.text
    assert web.statuses() == {"a@example.org": "active"}


def test_the_page_works_without_scripts_and_has_nothing_wider_than_a_phone(web: Web) -> None:
    path = active(web, "a@example.org")
    with web.client() as client:
        page = client.get(path)
    doc = lxml.html.fromstring(page.text)
    assert doc.xpath("//script") == [] and "script-src" not in page.headers["content-security-policy"]
    assert doc.xpath("//meta[@name='viewport']/@content") == ["width=device-width, initial-scale=1"]
    assert all(form.get("method") == "post" for form in doc.xpath("//form"))
    # Every field has its label; no fixed widths in the markup.
    for field in doc.xpath("//input[@type='text' or @type='number'] | //select"):
        assert doc.xpath("//label[@for=$i]", i=field.get("id")), field.get("name")
    assert doc.xpath("//*[@width or @style]") == []


# -- C: their own data ---------------------------------------------------------------------------


def test_the_data_download_is_everything_stored_about_the_subscriber_as_json(web: Web) -> None:
    path = active(web, "a@example.org", name="Ann", categories=["yicai"])
    active(web, "b@example.org")
    digest_for(web, DAY, make_collection())
    with web.client() as client:
        client.post("/subscribe", data={"email": "a@example.org"})
        assert web.settled() and wait_until(lambda: web.store.outbox_counts()["queued"] == 0)
        answer = client.get(f"{path}/data.json")
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/json"
    assert answer.headers["content-disposition"] == 'attachment; filename="finews-subscriber-data.json"'
    assert (answer.headers["cache-control"], answer.headers["referrer-policy"]) == ("no-store", "no-referrer")
    data = json.loads(answer.content)
    assert list(data) == ["format", "exported_at", "subscriber", "deliveries", "events", "outbox"]
    assert sorted(data["subscriber"]) == sorted([
        "id", "email", "email_key", "name", "status", "categories", "tags", "created_at", "confirmed_at",
        "unsubscribed_at", "bounced_at", "permanent_failures", "frequency", "weekday", "paused_until"])
    assert (data["subscriber"]["email"], data["subscriber"]["name"], data["subscriber"]["categories"]) == (
        "a@example.org", "Ann", ["yicai"])
    assert [(d["day"], d["state"], d["kind"]) for d in data["deliveries"]] == [("2022-04-20", "sent", "daily")]
    assert [(o["kind"], o["state"]) for o in data["outbox"]] == [("subscribe", "done"), ("manage", "sent")]
    assert sorted(data["outbox"][0]) == sorted([
        "id", "kind", "email", "email_key", "payload", "message_id", "state", "attempts", "next_attempt_at",
        "lease_owner", "lease_until", "last_error", "created_at", "updated_at", "finished_at"])
    assert "b@example.org" not in answer.text


def rows_naming(web: Web, email: str, subscriber_id: int) -> dict[str, int]:
    """Rows of every table that hold the address or the subscriber's id, by table."""
    found: dict[str, int] = {}
    with web.store.engine.connect() as conn:
        for table in METADATA.sorted_tables:
            for row in conn.execute(table.select()):
                values = row._mapping
                if (values.get("subscriber_id") == subscriber_id
                        or (table.name == "subscribers" and values["id"] == subscriber_id)
                        or any(isinstance(v, str) and email in v.lower() for v in values.values())):
                    found[table.name] = found.get(table.name, 0) + 1
    return found


def test_delete_everything_asks_once_then_leaves_nothing_in_any_table(web: Web) -> None:
    path = active(web, "a@example.org")
    active(web, "b@example.org")
    digest_for(web, DAY, make_collection())
    with web.client() as client:
        client.post("/subscribe", data={"email": "a@example.org"})
        assert wait_until(lambda: len(web.sink.messages) == 3)
        sub = web.store.get_subscriber("a@example.org")
        assert sub is not None
        assert rows_naming(web, "a@example.org", sub.id) == {"subscribers": 1, "deliveries": 1, "outbox": 2}

        asked = post(client, path, "delete")
        assert asked.status_code == 200 and "此操作无法撤销" in asked.text
        assert web.store.get_subscriber("a@example.org") is not None
        [confirm_field] = lxml.html.fromstring(asked.text).xpath("//input[@name='confirm']/@value")
        deleted = client.post(f"{path}/delete", data={"form": form_field(asked.text, f"{path}/delete"),
                                                      "confirm": confirm_field})
        assert deleted.status_code == 200 and "已删除" in deleted.text
        assert rows_naming(web, "a@example.org", sub.id) == {}
        assert client.get(path).status_code == 404
        assert client.get(f"{path}/data.json").status_code == 404
    b = web.store.get_subscriber("b@example.org")
    assert b is not None and rows_naming(web, "b@example.org", b.id) == {"subscribers": 1, "deliveries": 1}
