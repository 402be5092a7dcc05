#!/usr/bin/env python3
# ruff: noqa
# A verbatim copy of ../shared/corpus/make_site.py, so the edge-case tests run on a clean clone.
"""Generate a Jekyll news site shaped like finews (financial news aggregated by source).

Every post follows the format of `sample-site/_posts/2022-04-20-NW202204202349219681.md`:
YAML front matter (layout, title, date with +0800 offset, categories, tags) over an HTML body
with paragraphs, <strong>, images on a CDN, a related-reports block, the source line, an
autolink to the original article and Markdown links back to the category page and home.

    make_site.py OUT_DIR --posts 20000 [--days 400] [--seed 1] [--edge-cases]

Deterministic for a given seed. Standard library only. --edge-cases adds a folder of hostile
and unusual files (bad YAML, bad encodings, control characters, path-traversal tags, ...)
that a robust collector must survive; `EDGE_CASES.md` in OUT_DIR lists what each one is.
"""
from __future__ import annotations

import argparse
import datetime as dt
import random
from pathlib import Path

TZ = dt.timezone(dt.timedelta(hours=8))

# category slug -> (display name, source line, source tag)
SOURCES = {
    "cailianshe": ("财联社新闻", "财联社", "财联社新闻"),
    "eastmoney": ("东方财富", "东方财富网", "东方财富"),
    "yicai": ("第一财经", "第一财经", "第一财经"),
    "stcn": ("证券时报", "证券时报网", "证券时报"),
    "jrj": ("金融界", "金融界", "金融界"),
    "sina": ("新浪财经", "新浪财经", "新浪财经"),
    "21jingji": ("21世纪经济报道", "21世纪经济报道", "21世纪经济报道"),
    "xinhua": ("新华财经", "新华社", "新华财经"),
}
SOURCE_WEIGHTS = [30, 20, 10, 10, 8, 12, 6, 4]

TOPICS = [
    "数字经济", "数字政府", "A股", "港股", "美股", "央行", "新能源", "半导体", "房地产", "基金",
    "期货", "宏观经济", "科创板", "北交所", "IPO", "汇率", "黄金", "原油", "人工智能", "光伏",
    "储能", "锂电池", "医药", "消费", "银行", "券商", "保险", "债券", "外资", "北向资金",
    "稀土", "军工", "芯片", "5G", "云计算", "数据要素", "碳中和", "新基建", "电子政务", "财政",
]
COMPANIES = [
    "宁德时代", "贵州茅台", "比亚迪", "隆基绿能", "中芯国际", "招商银行", "中国平安", "腾讯控股",
    "阿里巴巴", "美团", "京东", "小米集团", "万科A", "恒瑞医药", "迈瑞医疗", "紫金矿业",
    "中信证券", "东方财富", "海康威视", "立讯精密", "三一重工", "长江电力", "中国移动", "工商银行",
]
SUBJECTS = ["国务院", "证监会", "央行", "发改委", "财政部", "工信部", "国家统计局", "银保监会",
            "上交所", "深交所", "多家券商", "机构", "分析师", "外资机构", "公募基金", "私募"]
VERBS = ["发布", "印发", "表示", "预测", "强调", "提出", "指出", "认为", "披露", "宣布"]
OBJECTS = ["政策要求", "实施方案", "指导意见", "行业报告", "三季度数据", "投资机会", "风险提示",
           "发展规划", "试点方案", "监管规则", "市场展望", "年度目标"]
NUMBERS = ["9.21亿", "6859亿元", "9255亿元", "89.2%", "9.2%", "3.5万亿元", "12.7%", "1.8倍",
           "4200点", "150亿元", "0.25个百分点", "2.3%"]
TITLE_FORMS = [
    "{s}{v}{t}{o} {c}迎来发展新机遇？",
    "{t}板块午后拉升 {c}涨超{n}",
    "{s}：加快{t}建设 推动{o}落地",
    "{c}{v}{o} 机构称{t}已到加速关键时刻",
    "{t}规模有望突破{n} {s}{v}{o}",
    "盘中异动 | {c}大涨 {t}概念股走强",
    "{s}{v}关于{t}的{o}",
    "早报：{t}、{c}、{o}",
]


def sentence(rng: random.Random) -> str:
    return (f"{rng.choice(SUBJECTS)}{rng.choice(VERBS)}，{rng.choice(TOPICS)}领域的"
            f"{rng.choice(OBJECTS)}将在{rng.choice(['今年', '十四五期间', '下半年', '明年'])}"
            f"陆续落地，相关规模{rng.choice(['有望达到', '预计增长', '同比增长', '较上年提高'])}"
            f"{rng.choice(NUMBERS)}。")


def paragraph(rng: random.Random) -> str:
    sents = [sentence(rng) for _ in range(rng.randint(2, 5))]
    if rng.random() < 0.35:
        i = rng.randrange(len(sents))
        sents[i] = f"<strong>{sents[i]}</strong>"
    return "<p>" + "".join(sents) + "</p>"


def image(rng: random.Random) -> str:
    w, h = rng.randint(600, 2400), rng.randint(300, 1900)
    code = rng.randrange(10**19, 10**20)
    eh = round(580 * h / w)
    return (f'<center><img src="https://dfscdn.dfcfw.com/download/D{code}_w{w}h{h}.jpg" '
            f'alt="image" width="580" emheight="{eh}" style="border:#d1d1d1 1px solid;'
            f'padding:3px;margin:5px 0;" /></center>')


def info_code(when: dt.datetime, rng: random.Random) -> str:
    return f"NW{when:%Y%m%d}{rng.randrange(10**9, 10**10)}"


def body(rng: random.Random, cat: str, when: dt.datetime) -> str:
    name, source, _ = SOURCES[cat]
    parts = []
    for i in range(rng.randint(2, 8)):
        parts.append(paragraph(rng))
        if rng.random() < 0.3:
            parts.append(image(rng))
    if rng.random() < 0.5:
        parts.append('<h3 class="emh3">相关报道</h3>')
        for _ in range(rng.randint(1, 3)):
            code = f"{when:%Y%m%d}{rng.randrange(10**9, 10**10)}"
            parts.append(f'<p><a href="http://finance.eastmoney.com/a/{code}.html">'
                         f'{rng.choice(SUBJECTS)}：{rng.choice(TOPICS)}{rng.choice(OBJECTS)}</a><br /></p>')
    parts.append(f'<p class="em_media">（文章来源：{source}）</p>')
    html = "".join(parts)
    code = info_code(when, rng)
    return (f"{html}\n\n<http://finews.zning.xyz/html_News/NewsShare.html?infoCode={code}>\n\n"
            f"[返回{name}](//finews.withounder.com/category/{cat}.html)｜"
            f"[返回首页](//finews.withounder.com/)\n")


def yaml_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def post(rng: random.Random, when: dt.datetime, cat: str) -> tuple[str, str]:
    _, _, source_tag = SOURCES[cat]
    topic = rng.choice(TOPICS)
    title = rng.choice(TITLE_FORMS).format(
        s=rng.choice(SUBJECTS), v=rng.choice(VERBS), t=topic, o=rng.choice(OBJECTS),
        c=rng.choice(COMPANIES), n=rng.choice(["5%", "10%", "20%", "3%"]))
    tags = [source_tag]
    if rng.random() < 0.6:
        tags.append(topic)
    if rng.random() < 0.25:
        tags.append(rng.choice(COMPANIES))
    if rng.random() < 0.05:
        tags.append(f"专题{rng.randrange(1, 2000)}")  # long tail of rare tags
    tags = list(dict.fromkeys(tags))
    style = rng.random()
    if style < 0.7:  # the seed's style: scalar category, scalar tag
        cats_yaml, tags_yaml = cat, " ".join(tags) if len(tags) == 1 else None
        if tags_yaml is None:
            tags_yaml = "[" + ", ".join(tags) + "]"
    elif style < 0.85:
        cats_yaml, tags_yaml = f"[{cat}]", "[" + ", ".join(tags) + "]"
    else:  # block lists
        cats_yaml = f"\n  - {cat}"
        tags_yaml = "".join(f"\n  - {t}" for t in tags)
    code = info_code(when, rng)
    front = (f"---\nlayout: post\ntitle: {yaml_str(title)}\n"
             f"date: {when:%Y-%m-%d %H:%M:%S} +0800\ncategories: {cats_yaml}\ntags: {tags_yaml}\n---\n")
    name = f"{when:%Y-%m-%d}-{code}.md"
    return name, front + body(rng, cat, when)


def edge_cases(root: Path, rng: random.Random, start: dt.datetime) -> None:
    """Files that a collector must survive: each is either read correctly or skipped with a
    clear message naming the file, and never stops the build or corrupts a feed."""
    posts = root / "_posts"
    day = start
    notes = []

    def put(name: str, data: bytes, why: str) -> None:
        (posts / name).write_bytes(data)
        notes.append(f"- `_posts/{name}`: {why}")

    ok_body = body(rng, "cailianshe", day)
    put(f"{day:%Y-%m-%d}-edge-bad-yaml.md",
        f"---\ntitle: \"unclosed\ndate: {day:%Y-%m-%d %H:%M:%S} +0800\n---\n<p>x</p>\n".encode(),
        "invalid YAML in front matter: skipped with an error naming the file")
    put(f"{day:%Y-%m-%d}-edge-no-front-matter.md", b"<p>just a body</p>\n",
        "no front matter: Jekyll does not treat it as a post; skipped")
    put(f"{day:%Y-%m-%d}-edge-unclosed-front-matter.md",
        b"---\ntitle: x\ndate: 2022-01-01 00:00:00 +0800\n<p>no closing fence</p>\n",
        "front matter never closed: skipped with an error")
    put(f"{day:%Y-%m-%d}-edge-gbk.md",
        ("---\ntitle: 国务院发布数字政府建设指导意见\ndate: "
         f"{day:%Y-%m-%d} 10:00:00 +0800\ncategories: cailianshe\ntags: 财联社新闻\n---\n<p>中文正文</p>\n"
         ).encode("gbk"),
        "GBK-encoded, not UTF-8: skipped with an encoding error (or decoded, if the site config says so)")
    put(f"{day:%Y-%m-%d}-edge-bom-crlf.md",
        ("\ufeff---\r\ntitle: 带BOM和CRLF的文章\r\ndate: "
         f"{day:%Y-%m-%d} 11:00:00 +0800\r\ncategories: cailianshe\r\ntags: 财联社新闻\r\n---\r\n"
         "<p>正文</p>\r\n").encode("utf-8"),
        "UTF-8 BOM and CRLF line endings: a valid post")
    put(f"{day:%Y-%m-%d}-edge-control-chars.md",
        (f"---\ntitle: \"控制字符\\x0b标题\\x1f测试\"\ndate: {day:%Y-%m-%d} 12:00:00 +0800\n"
         "categories: cailianshe\ntags: 财联社新闻\n---\n<p>正文\x0b含\x08控制\x1b字符</p>\n").encode(),
        "XML-illegal control characters in title and body: a valid post; feeds stay well-formed")
    put(f"{day:%Y-%m-%d}-edge-html-title.md",
        (f"---\ntitle: \"<script>alert(1)</script> A&B \\\"引号\\\" 'single' ]]>\"\n"
         f"date: {day:%Y-%m-%d} 13:00:00 +0800\ncategories: cailianshe\ntags: 财联社新闻\n---\n"
         "<p onclick=\"steal()\">正文<script>alert(2)</script><a href=\"javascript:alert(3)\">链接</a></p>\n"
         "<iframe src=\"https://evil.example/\"></iframe>\n").encode(),
        "markup and script in title and body: escaped in feeds; scripts, handlers and javascript: URLs never reach an email")
    put(f"{day:%Y-%m-%d}-edge-traversal-tag.md",
        (f"---\ntitle: 路径穿越标签\ndate: {day:%Y-%m-%d} 14:00:00 +0800\ncategories: [\"../../etc\"]\n"
         "tags: [\"../../../tmp/pwned\", \"..\", \"/abs\", \"a/b\", \"CON\", \"！！！\"]\n---\n<p>正文</p>\n").encode(),
        "categories and tags that try to leave the output folder or slugify to nothing: no file is written outside the output folder")
    put(f"{day:%Y-%m-%d}-edge-unpublished.md",
        (f"---\ntitle: 未发布\ndate: {day:%Y-%m-%d} 15:00:00 +0800\npublished: false\n"
         "categories: cailianshe\n---\n<p>x</p>\n").encode(),
        "published: false: never in a feed or a digest")
    put("2999-01-01-edge-future.md",
        ("---\ntitle: 未来文章\ndate: 2999-01-01 09:00:00 +0800\ncategories: cailianshe\n---\n<p>x</p>\n").encode(),
        "dated in the future: left out, as Jekyll does by default")
    put(f"{day:%Y-%m-%d}-edge-date-from-filename.md",
        ("---\ntitle: 只有文件名日期\ncategories: cailianshe\ntags: 财联社新闻\n---\n" + ok_body).encode(),
        "no date in front matter: the date comes from the file name (midnight, site time zone)")
    put(f"{day:%Y-%m-%d}-edge-iso-date.md",
        (f"---\ntitle: ISO日期\ndate: {day:%Y-%m-%d}T16:30:00+08:00\ncategories: cailianshe\n"
         "tags: 财联社新闻\n---\n<p>正文</p>\n").encode(),
        "ISO 8601 date: a valid post")
    put(f"{day:%Y-%m-%d}-edge-bad-date.md",
        ("---\ntitle: 错误日期\ndate: 2022-02-30 25:61:00 +0800\ncategories: cailianshe\n---\n<p>x</p>\n").encode(),
        "impossible date: skipped with an error naming the file")
    put(f"{day:%Y-%m-%d}-edge-no-title.md",
        (f"---\ndate: {day:%Y-%m-%d} 17:00:00 +0800\ncategories: cailianshe\ntags: 财联社新闻\n---\n<p>无标题正文</p>\n").encode(),
        "no title: Jekyll derives one from the file name; a valid post")
    put(f"{day:%Y-%m-%d}-edge-empty-body.md",
        (f"---\ntitle: 空正文\ndate: {day:%Y-%m-%d} 18:00:00 +0800\ncategories: cailianshe\n---\n").encode(),
        "empty body: a valid post with no summary")
    put(f"{day:%Y-%m-%d}-edge-string-lists.md",
        (f"---\ntitle: 空格分隔\ndate: {day:%Y-%m-%d} 19:00:00 +0800\ncategory: cailianshe\n"
         "tags: 数字经济 数字政府 A股\n---\n<p>正文</p>\n").encode(),
        "singular `category`, space-separated `tags` string: three tags, as in Jekyll")
    big = "".join(paragraph(rng) for _ in range(4000))
    put(f"{day:%Y-%m-%d}-edge-huge.md",
        (f"---\ntitle: 超长文章\ndate: {day:%Y-%m-%d} 20:00:00 +0800\ncategories: cailianshe\n"
         f"tags: 财联社新闻\n---\n{big}\n").encode(),
        "a body of over 1 MB: a valid post")
    put(f"{day:%Y-%m-%d}-edge-empty-file.md", b"", "an empty file: skipped")
    (root / "_drafts").mkdir(exist_ok=True)
    (root / "_drafts" / "draft-post.md").write_text(
        "---\ntitle: 草稿\ncategories: cailianshe\n---\n<p>draft</p>\n", encoding="utf-8")
    notes.append("- `_drafts/draft-post.md`: a draft: never published")
    (root / "EDGE_CASES.md").write_text(
        "# Edge cases in this site\n\n" + "\n".join(notes) + "\n", encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--posts", type=int, default=2000)
    ap.add_argument("--days", type=int, default=None, help="days spanned (default: posts/50)")
    ap.add_argument("--end", default="2022-04-20", help="last day, YYYY-MM-DD")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--edge-cases", action="store_true")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    days = args.days or max(1, args.posts // 50)
    end = dt.datetime.fromisoformat(args.end).replace(tzinfo=TZ)
    start = end - dt.timedelta(days=days - 1)
    posts_dir = args.out / "_posts"
    posts_dir.mkdir(parents=True, exist_ok=True)
    cats = list(SOURCES)
    for i in range(args.posts):
        when = start + dt.timedelta(days=rng.randrange(days), seconds=rng.randrange(6 * 3600, 86400))
        cat = rng.choices(cats, SOURCE_WEIGHTS)[0]
        name, text = post(rng, when, cat)
        target = posts_dir if rng.random() < 0.9 else args.out / cat / "_posts"
        target.mkdir(parents=True, exist_ok=True)
        (target / name).write_text(text, encoding="utf-8")
    (args.out / "_config.yml").write_text(
        "title: finews 财经新闻\nurl: https://finews.withounder.com\ntimezone: Asia/Shanghai\n"
        "permalink: /:categories/:year/:month/:day/:title:output_ext\n", encoding="utf-8")
    if args.edge_cases:
        edge_cases(args.out, rng, end)


if __name__ == "__main__":
    main()
