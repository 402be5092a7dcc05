<?xml version="1.0" encoding="UTF-8"?>
<!-- Shows an RSS 2.0 or Atom 1.0 feed as a readable page when a browser opens it.
     Feed readers ignore this file; it only changes what a person sees. -->
<xsl:stylesheet version="1.0"
    xmlns:xsl="http://www.w3.org/1999/XSL/Transform"
    xmlns:atom="http://www.w3.org/2005/Atom"
    xmlns:content="http://purl.org/rss/1.0/modules/content/"
    exclude-result-prefixes="atom content">
  <xsl:output method="html" encoding="UTF-8" indent="yes" doctype-system="about:legacy-compat"/>

  <xsl:variable name="title" select="/rss/channel/title | /atom:feed/atom:title"/>
  <xsl:variable name="home" select="/rss/channel/link | /atom:feed/atom:link[@rel='alternate']/@href"/>
  <xsl:variable name="self" select="/rss/channel/atom:link[@rel='self']/@href | /atom:feed/atom:link[@rel='self']/@href"/>

  <xsl:template match="/">
    <html>
      <head>
        <meta charset="utf-8"/>
        <meta name="viewport" content="width=device-width, initial-scale=1"/>
        <title><xsl:value-of select="$title"/></title>
        <style>
          body { font: 16px/1.6 -apple-system, "PingFang SC", "Microsoft YaHei", "Noto Sans CJK SC", sans-serif; max-width: 48rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
          .note { background: #fff8dc; border: 1px solid #eedc82; padding: .75rem 1rem; border-radius: 6px; }
          code { background: #f3f3f3; padding: .1rem .3rem; word-break: break-all; }
          ol { padding-left: 1.2rem; } li { margin: .8rem 0; }
          .date { color: #666; font-size: .9rem; } a { color: #0a58ca; }
        </style>
      </head>
      <body>
        <p class="note">这是一个订阅源（RSS/Atom）。把下面的地址复制到 RSS 阅读器即可订阅：<br/>
          This is a web feed. Copy its address into your feed reader to subscribe:<br/>
          <code><xsl:value-of select="$self"/></code></p>
        <h1><a href="{$home}"><xsl:value-of select="$title"/></a></h1>
        <p><xsl:value-of select="/rss/channel/description | /atom:feed/atom:subtitle"/></p>
        <ol>
          <xsl:apply-templates select="/rss/channel/item | /atom:feed/atom:entry"/>
        </ol>
      </body>
    </html>
  </xsl:template>

  <xsl:template match="item">
    <li>
      <a href="{link}"><xsl:value-of select="title"/></a>
      <div class="date"><xsl:value-of select="pubDate"/></div>
    </li>
  </xsl:template>

  <xsl:template match="atom:entry">
    <li>
      <a href="{atom:link[@rel='alternate']/@href}"><xsl:value-of select="atom:title"/></a>
      <div class="date"><xsl:value-of select="substring(atom:published, 1, 16)"/></div>
    </li>
  </xsl:template>
</xsl:stylesheet>
