"""The hostile-input table (issue 7): one row per case, each with the outcome
DESIGN §4/§8 and man/sj.7 name for it. tests/test_hostile.py runs every row
against the live programs (sj-proxy with its four daemons under tcpclient,
sj-c2s under tcpserver, raw FIFO clients) and writes tests/hostile_results.md.

A row is Case(name, category, side, data, expect, opts):

side      where `data` goes in
--------  ---------------------------------------------------------------
server-pre  the scripted server's whole reply to sj-proxy's stream header
            (header included), before authentication
server      after a complete session (bind, daemons started): one sj-proxy
            per row, since a stream error ends it
live        after a complete session, all rows in ONE sj-proxy session (each
            row is followed by a marker message, the barrier for "nothing of
            this row reached a client")
c2s-pre     raw TCP to sj-c2s (tcpserver), from the first byte
c2s         raw TCP to sj-c2s after PLAIN and bind
c2s-live    one long-lived bound raw TCP session to sj-c2s
c2s-bind    `data` is the resource a raw TCP client of sj-c2s asks to bind
fifo        one line into DIR/clients/hostile/out (opts via='in': DIR/in)
flood       a session of its own: many records, bounded

expect      meaning
--------    ---------------------------------------------------------------
error:COND  the peer receives a stream error <COND/>
            (urn:ietf:params:xml:ns:xmpp-streams) and then a clean end of the
            connection (FIN, never a reset: RFC 6120 §4.4), and the process
            exits 1 (a protocol error by the peer); opts['trailer'] bytes
            more are written right behind the payload, without waiting
dropped     not delivered to any client; the log line opts['log'] appears;
            the session stays up (the next row's marker is delivered); with
            opts['answer'], the sender gets a policy-violation stanza error
refused:C   an iq error <C/> goes back upstream; nothing reaches a client
delivered   every client gets it; the raw client gets exactly opts['want']
            (default: `data` itself), byte for byte
accepted    (header rows) the stream goes on: features are offered
restamped   the server gets it with no `from`; for a message, a sibling's
            sent copy names BARE/<origin> as the sender
answered    an iq result goes back upstream
stored      (iq results) iqd writes DIR/iq/<component(id)>, a file directly
            in DIR/iq whose percent-decoded name is the id; no client gets it
delegated   (iq get) iqd finds no handler and hands it to the primary client
            (the first by name) with its id unchanged
kept        (bind) the client is named as it asked: DIR/clients/<resource>
renamed     (bind) the client gets a generated name sj-XXXXXXXX instead
counted     (flood rows) the bounded effect in opts['check']

opts['files'] names a check of DIR after the row (see test_hostile.FILES).
Every row is also checked for: no 'panicked' on stderr, the designed exit
code, and no file created outside DIR.
"""

from collections import namedtuple

Case = namedtuple("Case", "name category side data expect opts")

BOB = b"bob@localhost/x"
UP = b"alice@localhost/scripted"   # the upstream full JID the scripted server binds
STREAMS = b"http://etherx.jabber.org/streams"

HDR_XMLDECL = b"<?xml version='1.0'?>"
SERVER_HDR = (b"<stream:stream xmlns='jabber:client' xmlns:stream='" + STREAMS
              + b"' from='localhost' id='h1' version='1.0' xml:lang='en'>")
C2S_HDR = (b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='"
           + STREAMS + b"' to='localhost' version='1.0'>")


def msg(inner, frm=BOB, attrs=b""):
    """A chat message from `frm` to the upstream JID with `inner` as content."""
    return (b"<message from='" + frm + b"' to='" + UP + b"' type='chat'" + attrs + b">"
            + inner + b"</message>")


def body(text):
    return msg(b"<body>" + text + b"</body>")


def out_msg(inner, attrs=b""):
    """A message a client sends (to a contact)."""
    return b"<message to='bob@localhost' type='chat'" + attrs + b">" + inner + b"</message>"


def header(attrs, **kw):
    """A stream header with `attrs`, changed by kw (a__b is a:b; None drops)."""
    attrs = dict(attrs)
    for k, v in kw.items():
        k = k.replace("__", ":")
        if v is None:
            attrs.pop(k, None)
        else:
            attrs[k] = v
    return (HDR_XMLDECL + b"<stream:stream "
            + b" ".join(k.encode() + b"='" + v + b"'" for k, v in attrs.items()) + b">")


def hdr_c2s(**kw):
    return header({"xmlns": b"jabber:client", "xmlns:stream": STREAMS, "to": b"localhost",
                   "version": b"1.0"}, **kw)


def hdr_server(**kw):
    return header({"xmlns": b"jabber:client", "xmlns:stream": STREAMS, "from": b"localhost",
                   "id": b"h1", "version": b"1.0"}, **kw)


def nested(n, leaf=b"x"):
    """n levels of elements (inside whatever holds them)."""
    return b"<a>" * n + leaf + b"</a>" * n


def attrs(n):
    return b"".join(b" a%d='v'" % i for i in range(n))


CASES = []


def add(category, side, name, data, expect, **opts):
    CASES.append(Case(name, category, side, data, expect, opts))


# ---------------------------------------------------------------- restricted XML
C = "restricted XML (comments, PIs, DTDs, entities, CDATA)"
add(C, "server", "comment-top-level", b"<!-- hi -->", "error:restricted-xml")
add(C, "server", "comment-in-stanza", body(b"a<!-- c -->b"), "error:restricted-xml")
add(C, "server", "comment-in-stanza-then-1m", body(b"a<!-- c -->b"), "error:restricted-xml",
    trailer=1024 * 1024)
add(C, "server", "comment-in-1m-stanza", body(b"a" * (1024 * 1024) + b"<!-- c -->b"),
    "error:restricted-xml", trailer=1024 * 1024)
add(C, "server", "comment-split-dashes", body(b"a<!-"), "error:restricted-xml")
add(C, "server", "pi-top-level", b"<?foo bar?>", "error:restricted-xml")
add(C, "server", "pi-in-stanza", body(b"a<?foo?>b"), "error:restricted-xml")
add(C, "server", "xml-decl-mid-stream", b"<?xml version='1.0'?>", "error:restricted-xml")
add(C, "server", "doctype", b"<!DOCTYPE message>", "error:restricted-xml")
add(C, "server", "entity-declaration", b"<!ENTITY x 'y'>", "error:restricted-xml")
add(C, "server", "element-declaration-in-stanza", msg(b"<!ELEMENT x ANY>"),
    "error:restricted-xml")
add(C, "server", "conditional-section", msg(b"<![INCLUDE[ x ]]>"), "error:restricted-xml")
add(C, "server", "undefined-entity-text", body(b"&foo;"), "error:restricted-xml")
add(C, "server", "undefined-entity-attribute", msg(b"", attrs=b" id='&foo;'"),
    "error:restricted-xml")
add(C, "server", "html-entity-nbsp", body(b"a&nbsp;b"), "error:restricted-xml")
add(C, "server", "cdata-top-level", b"<![CDATA[x]]>", "error:not-well-formed")
add(C, "server", "cdata-end-in-text", body(b"a]]>b"), "error:not-well-formed")
add(C, "live", "cdata-in-body-kept", body(b"<![CDATA[<b>&amp;</b>]]>"), "delivered")
add(C, "live", "cdata-line-break-split", body(b"<![CDATA[a\nb]]>"), "delivered",
    want=body(b"<![CDATA[a]]>&#10;<![CDATA[b]]>"))
add(C, "live", "predefined-entities-and-char-refs-kept",
    body(b"&lt;&gt;&amp;&quot;&apos;&#65;&#x42;&#x1F600;"), "delivered")
add(C, "c2s-pre", "comment-before-header", b"<!-- x -->" + C2S_HDR, "error:restricted-xml")
add(C, "c2s-pre", "pi-before-header", b"<?foo?>" + C2S_HDR, "error:restricted-xml")
add(C, "c2s-pre", "doctype-before-header", b"<!DOCTYPE stream>" + C2S_HDR,
    "error:restricted-xml")
add(C, "c2s-pre", "entity-in-header", hdr_c2s(to=b"&foo;"), "error:restricted-xml")
add(C, "c2s-pre", "comment-after-header", C2S_HDR + b"<!-- x -->", "error:restricted-xml")
add(C, "c2s", "comment-in-stanza", out_msg(b"<body>a<!--x-->b</body>"), "error:restricted-xml")
add(C, "c2s", "comment-in-stanza-then-1m", out_msg(b"<body>a<!--x-->b</body>"),
    "error:restricted-xml", trailer=1024 * 1024)
add(C, "c2s", "pi-in-stanza", out_msg(b"<?pi x?>"), "error:restricted-xml")
add(C, "c2s", "doctype", b"<!DOCTYPE x [<!ENTITY a 'b'>]>", "error:restricted-xml")
add(C, "c2s", "undefined-entity", out_msg(b"<body>&xxe;</body>"), "error:restricted-xml")
add(C, "fifo", "comment", out_msg(b"<body>a<!--x-->b</body>"), "dropped", log="restricted-xml")
add(C, "fifo", "pi", b"<?pi x?>", "dropped", log="restricted-xml")
add(C, "fifo", "doctype", b"<!DOCTYPE x [<!ENTITY a 'b'>]>", "dropped", log="restricted-xml")
add(C, "fifo", "undefined-entity", out_msg(b"<body>&xxe;</body>"), "dropped",
    log="restricted-xml")
add(C, "fifo", "undefined-entity-dir-in", out_msg(b"<body>&xxe;</body>"), "dropped",
    log="restricted-xml", via="in")
add(C, "fifo", "cdata-top-level", b"<![CDATA[x]]>", "dropped", log="not-well-formed")

# ---------------------------------------------------------------- invalid UTF-8
C = "invalid UTF-8 and encodings"
for name, seq in [
    ("overlong-2-byte-slash", b"\xc0\xaf"),
    ("overlong-2-byte-nul", b"\xc0\x80"),
    ("overlong-3-byte", b"\xe0\x80\xaf"),
    ("overlong-4-byte", b"\xf0\x80\x80\xaf"),
    ("surrogate-high", b"\xed\xa0\x80"),
    ("surrogate-low", b"\xed\xbf\xbf"),
    ("surrogate-pair-cesu8", b"\xed\xa0\xbd\xed\xb8\x80"),
    ("truncated-2-byte", b"\xc3"),
    ("truncated-3-byte", b"\xe2\x82"),
    ("truncated-4-byte", b"\xf0\x9f\x98"),
    ("above-10ffff", b"\xf4\x90\x80\x80"),
    ("lead-byte-f5", b"\xf5\x80\x80\x80"),
    ("lone-continuation", b"\x80"),
    ("byte-ff", b"\xff"),
    ("byte-fe", b"\xfe"),
]:
    add(C, "server", name + "-in-text", body(b"a" + seq + b"b"), "error:not-well-formed")
add(C, "server", "invalid-in-attribute-value", msg(b"", attrs=b" id='\xc0\xaf'"),
    "error:not-well-formed")
add(C, "server", "invalid-in-element-name", msg(b"<b\xffody/>"), "error:not-well-formed")
add(C, "server", "invalid-in-attribute-name", msg(b"<x a\xed\xa0\x80='1'/>"),
    "error:not-well-formed")
add(C, "server-pre", "declared-iso-8859-1",
    b"<?xml version='1.0' encoding='ISO-8859-1'?>" + SERVER_HDR, "error:unsupported-encoding")
add(C, "server-pre", "declared-utf-16",
    b"<?xml version='1.0' encoding='UTF-16'?>" + SERVER_HDR, "error:unsupported-encoding")
add(C, "server-pre", "utf-16le-stream",
    b"\xff\xfe" + (HDR_XMLDECL + SERVER_HDR).decode().encode("utf-16-le"),
    "error:unsupported-encoding")
add(C, "server-pre", "utf-16be-stream-no-bom",
    (HDR_XMLDECL + SERVER_HDR).decode().encode("utf-16-be"), "error:unsupported-encoding")
# RFC 6120 §11.6: U+FEFF is a zero-width no-break space, never a BOM: text.
add(C, "server-pre", "utf-8-bom-is-text", b"\xef\xbb\xbf" + HDR_XMLDECL + SERVER_HDR,
    "error:not-well-formed")
add(C, "c2s-pre", "declared-latin-1",
    b"<?xml version='1.0' encoding='latin1'?>" + C2S_HDR[len(HDR_XMLDECL):],
    "error:unsupported-encoding")
add(C, "c2s-pre", "utf-16le-stream", b"\xff\xfe" + C2S_HDR.decode().encode("utf-16-le"),
    "error:unsupported-encoding")
add(C, "c2s-pre", "invalid-in-header-to", hdr_c2s(to=b"local\xc0\xafhost"),
    "error:not-well-formed")
add(C, "c2s", "overlong-in-body", out_msg(b"<body>\xc0\xaf</body>"), "error:not-well-formed")
add(C, "c2s", "surrogate-in-body", out_msg(b"<body>\xed\xa0\x80</body>"), "error:not-well-formed")
add(C, "c2s", "lone-continuation-in-attribute", out_msg(b"", attrs=b" id='\x80'"),
    "error:not-well-formed")
add(C, "c2s", "above-10ffff", out_msg(b"<body>\xf4\x90\x80\x80</body>"), "error:not-well-formed")
add(C, "fifo", "overlong", out_msg(b"<body>\xc0\xaf</body>"), "dropped", log="not-well-formed")
add(C, "fifo", "surrogate", out_msg(b"<body>\xed\xbf\xbf</body>"), "dropped",
    log="not-well-formed")
add(C, "fifo", "truncated", out_msg(b"<body>\xe2\x82</body>"), "dropped", log="not-well-formed")
add(C, "fifo", "above-10ffff-dir-in", out_msg(b"<body>\xf4\x90\x80\x80</body>"), "dropped",
    log="not-well-formed", via="in")

# ---------------------------------------------------------------- illegal characters
C = "characters illegal in XML"
for name, seq in [("nul", b"\x00"), ("soh", b"\x01"), ("backspace", b"\x08"),
                  ("vertical-tab", b"\x0b"), ("form-feed", b"\x0c"), ("esc", b"\x1b"),
                  ("us-0x1f", b"\x1f"), ("u+fffe", b"\xef\xbf\xbe"), ("u+ffff", b"\xef\xbf\xbf")]:
    add(C, "server", name + "-in-text", body(b"a" + seq + b"b"), "error:not-well-formed")
add(C, "server", "soh-in-attribute", msg(b"", attrs=b" id='a\x01b'"), "error:not-well-formed")
add(C, "server", "u+ffff-in-attribute", msg(b"", attrs=b" id='a\xef\xbf\xbfb'"),
    "error:not-well-formed")
add(C, "server", "control-in-element-name", msg(b"<bo\x01dy/>"), "error:not-well-formed")
add(C, "server", "nul-in-from", msg(b"", frm=b"bob\x00@localhost"), "error:not-well-formed")
add(C, "server", "name-starts-with-digit", msg(b"<1body>x</1body>"), "error:not-well-formed")
add(C, "server", "name-starts-with-dash", msg(b"<-x/>"), "error:not-well-formed")
# Character references must name a Char (XML 1.0, WFC: Legal Character).
for name, ref in [("ref-0-decimal", b"&#0;"), ("ref-0-hex", b"&#x0;"), ("ref-1", b"&#1;"),
                  ("ref-1f", b"&#x1F;"), ("ref-d800", b"&#xD800;"), ("ref-dfff", b"&#xDFFF;"),
                  ("ref-fffe", b"&#xFFFE;"), ("ref-ffff", b"&#xFFFF;"),
                  ("ref-110000", b"&#x110000;"), ("ref-huge", b"&#99999999999999999999;")]:
    add(C, "server", name + "-in-text", body(b"a" + ref + b"b"), "error:not-well-formed")
add(C, "server", "ref-0-in-attribute", msg(b"", attrs=b" id='&#0;'"), "error:not-well-formed")
add(C, "server", "ref-0-in-from", msg(b"", frm=b"bob&#0;@localhost"), "error:not-well-formed")
add(C, "server", "ref-malformed", body(b"&#x;"), "error:not-well-formed")
add(C, "server", "bare-ampersand", body(b"a & b"), "error:not-well-formed")
add(C, "server", "bare-ampersand-then-1m", body(b"a & b"), "error:not-well-formed",
    trailer=1024 * 1024)
add(C, "server", "control-in-65-levels-then-1m", msg(nested(64, b"a\x01b")),
    "error:not-well-formed", trailer=1024 * 1024)
add(C, "server", "control-in-1700k-body", body(b"a" * (1700 * 1024) + b"\x01"),
    "error:not-well-formed")
add(C, "live", "legal-edge-refs-kept", body(b"&#9;&#xD7FF;&#xE000;&#xFFFD;&#x10FFFF;"),
    "delivered")
add(C, "c2s-pre", "control-in-header", hdr_c2s(to=b"local\x01host"), "error:not-well-formed")
add(C, "c2s", "nul-in-text", out_msg(b"<body>a\x00b</body>"), "error:not-well-formed")
add(C, "c2s", "ref-0", out_msg(b"<body>&#0;</body>"), "error:not-well-formed")
add(C, "c2s", "ref-ffff-in-attribute", out_msg(b"", attrs=b" id='&#xFFFF;'"),
    "error:not-well-formed")
add(C, "fifo", "soh", out_msg(b"<body>a\x01b</body>"), "dropped", log="not-well-formed")
add(C, "fifo", "ref-0", out_msg(b"<body>&#0;</body>"), "dropped", log="not-well-formed")
add(C, "fifo", "u+fffe", out_msg(b"<body>\xef\xbf\xbe</body>"), "dropped",
    log="not-well-formed")

# ---------------------------------------------------------------- oversize
C = ("oversize stanzas (from the server after auth: 1.5 MiB + 64 KiB delivered, over it dropped, "
     "over 16 MiB a stream error; 256 KiB from a client after auth, 8 KiB before)")
K = 1024
M = 1024 * K
LOG_DROP = "dropping a stanza from the server: policy-violation"
# A contact's stanza over the limits is the contact's, not the server's: it
# is dropped and the session stays up (issue 17).
add(C, "live", "1600k-body-dropped", body(b"a" * (1600 * K)), "dropped", log=LOG_DROP,
    answer=True)
add(C, "live", "1600k-attribute-value-dropped",
    msg(b"", attrs=b" id='" + b"a" * (1600 * K) + b"'"), "dropped", log=LOG_DROP)
add(C, "live", "1700k-in-4k-chunks-dropped", body(b"b" * (1700 * K)), "dropped", log=LOG_DROP,
    chunk=4096, answer=True)
add(C, "live", "5m-body-dropped", body(b"e" * (5 * M)), "dropped", log=LOG_DROP, answer=True)
add(C, "server", "17m-body", body(b"a" * (17 * M)), "error:policy-violation")
add(C, "server", "17m-unterminated", msg(b"<body>" + b"a" * (17 * M)), "error:policy-violation")
add(C, "server", "17m-unterminated-start-tag", b"<message id='" + b"a" * (17 * M),
    "error:policy-violation")
add(C, "server", "17m-in-4k-chunks", body(b"b" * (17 * M)), "error:policy-violation",
    chunk=4096)
add(C, "live", "200k-body-delivered", body(b"c" * (200 * K)), "delivered")
# The server may re-serialise a contact's 256 KiB stanza larger (Prosody and
# ejabberd write ' as &apos;) and stamp it with a long from: all delivered.
add(C, "live", "1400k-body-delivered", body(b"d" * (1400 * K)), "delivered")
add(C, "live", "256k-apostrophes-as-the-server-writes-them-delivered",
    msg(b"<body>" + b"&apos;" * (256 * K) + b"</body>", frm=b"bob@localhost/" + b"r" * 1023),
    "delivered")
add(C, "server-pre", "9k-features",
    SERVER_HDR + b"<stream:features>" + b"<x/>" * (9 * K // 4) + b"</stream:features>",
    "error:policy-violation")
add(C, "server-pre", "9k-header", hdr_server(id=b"i" * (9 * K)), "error:policy-violation")
add(C, "c2s-pre", "10k-auth",
    C2S_HDR + b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>"
    + b"A" * (10 * K) + b"</auth>", "error:policy-violation")
add(C, "c2s-pre", "9k-unterminated-start-tag", C2S_HDR + b"<auth a='" + b"A" * (9 * K),
    "error:policy-violation", partial=True)
add(C, "c2s-pre", "9k-header", hdr_c2s(id=b"i" * (9 * K)), "error:policy-violation")
add(C, "c2s", "300k-message", out_msg(b"<body>" + b"a" * (300 * K) + b"</body>"),
    "error:policy-violation")
add(C, "c2s", "300k-message-then-1m", out_msg(b"<body>" + b"a" * (300 * K) + b"</body>"),
    "error:policy-violation", trailer=M)
add(C, "c2s-pre", "10k-auth-then-1m",
    C2S_HDR + b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>"
    + b"A" * (10 * K) + b"</auth>", "error:policy-violation", trailer=M)
add(C, "fifo", "256k-line", out_msg(b"<body>" + b"a" * (256 * K) + b"</body>"), "dropped",
    log="policy-violation")
add(C, "fifo", "4357k-line-over-the-line-limit",
    out_msg(b"<body>" + b"a" * (17 * 256 * K + 4 * K) + b"</body>"), "dropped", log="line over")

# ---------------------------------------------------------------- nesting
C = "deep nesting (64 levels after auth, 16 before)"
add(C, "live", "65-levels-dropped", msg(nested(64)), "dropped", log=LOG_DROP, answer=True)
add(C, "live", "100000-levels-dropped", msg(nested(100000)), "dropped", log=LOG_DROP)
add(C, "server", "6m-levels-unterminated", msg(b"<a>" * (6 * M)), "error:policy-violation")
add(C, "live", "64-levels-delivered", msg(nested(63)), "delivered")
add(C, "server-pre", "17-levels-in-features",
    SERVER_HDR + b"<stream:features>" + nested(16) + b"</stream:features>",
    "error:policy-violation")
add(C, "c2s-pre", "17-levels",
    C2S_HDR + b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>" + nested(16) + b"</auth>",
    "error:policy-violation")
add(C, "c2s", "65-levels", out_msg(nested(64)), "error:policy-violation")
add(C, "c2s", "100000-levels-unterminated", out_msg(b"<a>" * 100000), "error:policy-violation",
    partial=True)
add(C, "fifo", "65-levels", out_msg(nested(64)), "dropped", log="policy-violation")

# ---------------------------------------------------------------- attribute floods
C = "attribute floods (64 per element after auth, 32 before)"
add(C, "live", "65-attributes-dropped", msg(b"", attrs=attrs(62)), "dropped", log=LOG_DROP,
    answer=True)
add(C, "live", "65-attributes-on-child-dropped", msg(b"<x" + attrs(65) + b"/>"), "dropped",
    log=LOG_DROP, answer=True)
add(C, "live", "10000-attributes-dropped", msg(b"<x" + attrs(10000) + b"/>"), "dropped",
    log=LOG_DROP, answer=True)
add(C, "live", "64-attributes-delivered", msg(b"<x" + attrs(64) + b"/>"), "delivered")
add(C, "server-pre", "33-attributes-in-features",
    SERVER_HDR + b"<stream:features><x" + attrs(33) + b"/></stream:features>",
    "error:policy-violation")
add(C, "server-pre", "33-attributes-on-header", hdr_server(**{"a%d" % i: b"v" for i in range(28)}),
    "error:policy-violation")
add(C, "c2s-pre", "33-attributes-on-header", hdr_c2s(**{"a%d" % i: b"v" for i in range(29)}),
    "error:policy-violation")
add(C, "c2s", "65-attributes", out_msg(b"<x" + attrs(65) + b"/>"), "error:policy-violation")
add(C, "fifo", "65-attributes", out_msg(b"<x" + attrs(65) + b"/>"), "dropped",
    log="policy-violation")

# ---------------------------------------------------------------- duplicate attributes
C = "duplicate attributes (also through namespace prefixes)"
add(C, "server", "same-name", msg(b"", attrs=b" id='1' id='2'"), "error:not-well-formed")
add(C, "server", "two-prefixes-one-uri",
    msg(b"<x xmlns:a='urn:u' xmlns:b='urn:u' a:k='1' b:k='2'/>"), "error:not-well-formed")
add(C, "server", "prefix-and-header-prefix-one-uri",
    msg(b"<x xmlns:s='" + STREAMS + b"' s:k='1' stream:k='2'/>"), "error:not-well-formed")
add(C, "server", "outer-and-inner-prefix-one-uri",
    msg(b"<x xmlns:a='urn:u'><y xmlns:b='urn:u' a:k='1' b:k='2'/></x>"),
    "error:not-well-formed")
add(C, "server", "duplicate-xmlns", msg(b"<x xmlns='urn:a' xmlns='urn:b'/>"),
    "error:not-well-formed")
add(C, "server", "duplicate-prefix-declaration", msg(b"<x xmlns:a='urn:a' xmlns:a='urn:b'/>"),
    "error:not-well-formed")
add(C, "server", "duplicate-xml-lang", msg(b"", attrs=b" xml:lang='en' xml:lang='de'"),
    "error:not-well-formed")
add(C, "live", "same-local-two-uris-kept",
    msg(b"<x xmlns:a='urn:a' xmlns:b='urn:b' a:k='1' b:k='2'/>"), "delivered")
add(C, "live", "prefixed-and-unprefixed-kept", msg(b"<x xmlns:a='urn:a' k='1' a:k='2'/>"),
    "delivered")
add(C, "c2s", "same-name", out_msg(b"", attrs=b" id='1' id='2'"), "error:not-well-formed")
add(C, "c2s", "two-prefixes-one-uri",
    out_msg(b"<x xmlns:a='urn:u' xmlns:b='urn:u' a:k='1' b:k='2'/>"), "error:not-well-formed")
add(C, "fifo", "same-name-from", out_msg(b"", attrs=b" from='a@b' from='c@d'"), "dropped",
    log="not-well-formed")
add(C, "fifo", "two-prefixes-one-uri",
    out_msg(b"<x xmlns:a='urn:u' xmlns:b='urn:u' a:k='1' b:k='2'/>"), "dropped",
    log="not-well-formed")

# ---------------------------------------------------------------- namespaces
C = "unbound prefixes and namespace constraints"
add(C, "server", "unbound-element-prefix", msg(b"<x:body>hi</x:body>"), "error:not-well-formed")
add(C, "server", "unbound-attribute-prefix", msg(b"", attrs=b" x:id='1'"),
    "error:not-well-formed")
add(C, "server", "unbound-top-level-prefix", b"<x:message/>", "error:not-well-formed")
add(C, "server", "prefix-out-of-scope", msg(b"<a:x xmlns:a='urn:a'/><a:y/>"),
    "error:not-well-formed")
add(C, "server", "rebind-xml-prefix", msg(b"<x xmlns:xml='urn:other'/>"), "error:not-well-formed")
add(C, "server", "declare-xmlns-prefix", msg(b"<x xmlns:xmlns='urn:other'/>"),
    "error:not-well-formed")
add(C, "server", "unbind-prefix", msg(b"<x xmlns:a=''/>"), "error:not-well-formed")
add(C, "server", "element-with-xmlns-prefix", msg(b"<xmlns:x/>"), "error:not-well-formed")
add(C, "server", "bind-xml-namespace-to-other-prefix",
    msg(b"<x xmlns:p='http://www.w3.org/XML/1998/namespace'/>"), "error:not-well-formed")
add(C, "live", "header-prefix-declared-on-record", msg(b"<stream:x/>"), "delivered",
    want=(b"<message xmlns:stream='" + STREAMS + b"' from='bob@localhost/x' to='" + UP
          + b"' type='chat'><stream:x/></message>"))
add(C, "live", "xml-prefix-needs-no-declaration", msg(b"<body xml:lang='de'>hallo</body>"),
    "delivered")
add(C, "c2s", "unbound-element-prefix", out_msg(b"<x:body>hi</x:body>"), "error:not-well-formed")
add(C, "c2s", "unbound-attribute-prefix", out_msg(b"", attrs=b" x:id='1'"),
    "error:not-well-formed")
add(C, "c2s", "unbind-prefix", out_msg(b"<x xmlns:a=''/>"), "error:not-well-formed")
add(C, "fifo", "stream-prefix-is-unbound-in-a-fifo", out_msg(b"<stream:x/>"), "dropped",
    log="not-well-formed")
add(C, "fifo", "unbound-attribute-prefix", out_msg(b"", attrs=b" x:id='1'"), "dropped",
    log="not-well-formed")
add(C, "fifo", "rebind-xml-prefix", out_msg(b"<x xmlns:xml='urn:other'/>"), "dropped",
    log="not-well-formed")
add(C, "fifo", "not-jabber-client", b"<message xmlns='urn:evil' to='bob@localhost'/>",
    "dropped", log="not a stanza")

# ---------------------------------------------------------------- end tags
C = "mismatched and prefixed end tags"
add(C, "server", "misspelt", body(b"x").replace(b"</body>", b"</bdy>"), "error:not-well-formed")
add(C, "server", "other-prefix-same-uri",
    msg(b"<a:x xmlns:a='urn:u' xmlns:b='urn:u'></b:x>"), "error:not-well-formed")
add(C, "server", "prefix-dropped", msg(b"<a:x xmlns:a='urn:u'></x>"), "error:not-well-formed")
add(C, "server", "prefix-added", msg(b"<x xmlns:a='urn:u'></a:x>"), "error:not-well-formed")
add(C, "server", "end-tag-at-top-level", b"</message>", "error:not-well-formed")
add(C, "server", "stream-end-other-prefix", b"</s:stream>", "error:not-well-formed")
add(C, "server", "stream-end-inside-stanza", b"<message></stream:stream>",
    "error:not-well-formed")
add(C, "server", "end-tag-with-attribute", msg(b"<x></x a='1'>"), "error:not-well-formed")
add(C, "server", "crossed", msg(b"<a><b></a></b>"), "error:not-well-formed")
add(C, "c2s", "misspelt", out_msg(b"<body>x</bdy>"), "error:not-well-formed")
add(C, "c2s", "other-prefix-same-uri", out_msg(b"<a:x xmlns:a='urn:u' xmlns:b='urn:u'></b:x>"),
    "error:not-well-formed")
add(C, "fifo", "misspelt", out_msg(b"<body>x</bdy>"), "dropped", log="not-well-formed")
add(C, "fifo", "unclosed", out_msg(b"<body>x"), "dropped", log="not-well-formed")

# ---------------------------------------------------------------- stream headers
C = "stream headers (second header, namespaces, version, to)"
add(C, "server", "second-header", SERVER_HDR, "error:bad-format")
add(C, "server", "second-header-self-closing", b"<stream:stream xmlns:stream='" + STREAMS + b"'/>",
    "error:bad-format")
add(C, "server", "second-header-other-prefix",
    b"<s:stream xmlns:s='" + STREAMS + b"' version='1.0'>", "error:bad-format", partial=True)
add(C, "server", "second-header-default-namespace",
    b"<stream xmlns='" + STREAMS + b"' version='1.0'/>", "error:bad-format")
add(C, "server-pre", "wrong-stream-namespace", hdr_server(xmlns__stream=b"urn:not-streams"),
    "error:invalid-namespace")
add(C, "server-pre", "content-namespace-jabber-server", hdr_server(xmlns=b"jabber:server"),
    "error:invalid-namespace")
add(C, "server-pre", "content-namespace-other", hdr_server(xmlns=b"urn:evil"),
    "error:invalid-namespace")
add(C, "server-pre", "wrong-element-name",
    HDR_XMLDECL + b"<stream:strem xmlns='jabber:client' xmlns:stream='" + STREAMS
    + b"' version='1.0'>", "error:invalid-namespace")
add(C, "server-pre", "version-0.9", hdr_server(version=b"0.9"), "error:unsupported-version")
add(C, "server-pre", "version-missing", hdr_server(version=None), "error:unsupported-version")
add(C, "server-pre", "empty-stream-element", hdr_server()[:-1] + b"/>", "error:bad-format")
add(C, "server-pre", "features-before-header",
    b"<stream:features xmlns:stream='" + STREAMS + b"'>", "error:invalid-namespace")
add(C, "c2s-pre", "wrong-stream-namespace", hdr_c2s(xmlns__stream=b"urn:not-streams"),
    "error:invalid-namespace")
add(C, "c2s-pre", "content-namespace-jabber-server", hdr_c2s(xmlns=b"jabber:server"),
    "error:invalid-namespace")
add(C, "c2s-pre", "stream-prefix-undeclared",
    HDR_XMLDECL + b"<stream:stream xmlns='jabber:client' to='localhost' version='1.0'>",
    "error:invalid-namespace")
add(C, "c2s-pre", "version-0.9", hdr_c2s(version=b"0.9"), "error:unsupported-version")
add(C, "c2s-pre", "version-missing", hdr_c2s(version=None), "error:unsupported-version")
add(C, "c2s-pre", "version-2.0-accepted", hdr_c2s(version=b"2.0"), "accepted")
add(C, "c2s-pre", "to-other-domain", hdr_c2s(to=b"example.com"), "error:host-unknown")
add(C, "c2s-pre", "to-full-jid", hdr_c2s(to=b"localhost/res"), "error:host-unknown")
add(C, "c2s-pre", "to-bare-jid", hdr_c2s(to=b"alice@localhost"), "error:host-unknown")
add(C, "c2s-pre", "to-empty", hdr_c2s(to=b""), "error:host-unknown")
add(C, "c2s-pre", "to-3000-bytes", hdr_c2s(to=b"a" * 3000), "error:host-unknown")
add(C, "c2s-pre", "to-path", hdr_c2s(to=b"../../etc"), "error:host-unknown")
add(C, "c2s-pre", "to-uppercase-accepted", hdr_c2s(to=b"LOCALHOST"), "accepted")
add(C, "c2s-pre", "second-header-before-auth", C2S_HDR + C2S_HDR[len(HDR_XMLDECL):],
    "error:bad-format")
add(C, "c2s-pre", "stanza-before-auth", C2S_HDR + out_msg(b"<body>x</body>"),
    "error:not-authorized")
add(C, "c2s", "second-header-after-bind", C2S_HDR[len(HDR_XMLDECL):], "error:bad-format")
add(C, "c2s", "stanza-in-other-namespace", b"<message xmlns='jabber:server'/>",
    "error:invalid-namespace")
add(C, "c2s", "unknown-top-level-element", b"<foo/>", "error:unsupported-stanza-type")

# ---------------------------------------------------------------- forged carbons
C = "forged carbons (believed only from the account's bare JID)"


def carbon(frm, kind=b"received", inner_from=b"bob@localhost/x", inner_to=UP, text=b"c",
           prefix=None, decl=True):
    tag = (prefix + b":" + kind) if prefix else kind
    ns = (b" xmlns:" + prefix if prefix else b" xmlns") + b"='urn:xmpp:carbons:2'"
    return (b"<message from='" + frm + b"' to='" + UP + b"' type='chat'><" + tag
            + (ns if decl else b"") + b"><forwarded xmlns='urn:xmpp:forward:0'>"
            b"<message xmlns='jabber:client' from='" + inner_from + b"' to='" + inner_to
            + b"' type='chat'><body>" + text + b"</body></message></forwarded></" + tag
            + b"></message>")


LOG_CARBON = "forged carbon"
add(C, "live", "sent-from-contact", carbon(b"bob@localhost/x", b"sent", b"alice@localhost/y",
                                           b"eve@localhost", b"forged-1"),
    "dropped", log=LOG_CARBON, files="no-eve")
add(C, "live", "received-from-contact", carbon(b"bob@localhost", text=b"forged-2"), "dropped",
    log=LOG_CARBON)
add(C, "live", "sent-from-other-account", carbon(b"carol@localhost", b"sent",
                                                 b"alice@localhost/y", b"eve@localhost",
                                                 b"forged-3"),
    "dropped", log=LOG_CARBON, files="no-eve")
add(C, "live", "sent-from-own-full-jid", carbon(b"alice@localhost/other", b"sent",
                                                b"alice@localhost/y", b"eve@localhost",
                                                b"forged-4"),
    "dropped", log=LOG_CARBON, files="no-eve")
add(C, "live", "received-from-server-domain", carbon(b"localhost", text=b"forged-5"), "dropped",
    log=LOG_CARBON)
add(C, "live", "sent-from-contact-prefixed", carbon(b"bob@localhost", b"sent",
                                                    b"alice@localhost/y", b"eve@localhost",
                                                    b"forged-6", prefix=b"c"),
    "dropped", log=LOG_CARBON, files="no-eve")
add(C, "live", "sent-from-contact-header-prefix", carbon(b"bob@localhost", b"sent",
                                                         b"alice@localhost/y", b"eve@localhost",
                                                         b"forged-7", prefix=b"cb", decl=False),
    "dropped", log=LOG_CARBON, files="no-eve")
add(C, "live", "own-carbon-believed", carbon(b"alice@localhost", text=b"own-carbon-1"),
    "delivered", files="bob-log:own-carbon-1")
add(C, "live", "own-carbon-uppercase-believed", carbon(b"ALICE@LOCALHOST", text=b"own-carbon-2"),
    "delivered", files="bob-log:own-carbon-2")
add(C, "live", "nested-carbon-inner-not-believed",
    b"<message from='alice@localhost' to='" + UP + b"'><received xmlns='urn:xmpp:carbons:2'>"
    b"<forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client' "
    b"from='bob@localhost/x' to='" + UP + b"' type='chat'><sent xmlns='urn:xmpp:carbons:2'>"
    b"<forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client' "
    b"from='alice@localhost/y' to='eve@localhost' type='chat'><body>nested-lie</body></message>"
    b"</forwarded></sent></message></forwarded></received></message>",
    "delivered", files="no-eve")
add(C, "live", "carbon-not-a-direct-child",
    msg(b"<x><sent xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'>"
        b"<message xmlns='jabber:client' from='alice@localhost/y' to='eve@localhost'>"
        b"<body>deep-lie</body></message></forwarded></sent></x>"),
    "delivered", files="no-eve")

# ---------------------------------------------------------------- forged roster pushes
C = "forged roster pushes and results"


def push(frm, jid=b"eve@localhost", pid=b"push", prefix=None):
    f = b" from='" + frm + b"'" if frm is not None else b""
    if prefix:
        q = (b"<" + prefix + b":query><" + prefix + b":item jid='" + jid
             + b"' subscription='both'/></" + prefix + b":query>")
    else:
        q = (b"<query xmlns='jabber:iq:roster'><item jid='" + jid
             + b"' subscription='both'/></query>")
    return b"<iq type='set' id='" + pid + b"'" + f + b" to='" + UP + b"'>" + q + b"</iq>"


add(C, "live", "push-from-contact", push(b"bob@localhost/x", pid=b"fp1"),
    "refused:service-unavailable", id="fp1", files="no-eve-roster")
add(C, "live", "push-from-other-account", push(b"carol@localhost", pid=b"fp2"),
    "refused:service-unavailable", id="fp2", files="no-eve-roster")
add(C, "live", "push-from-own-full-jid", push(b"alice@localhost/other", pid=b"fp3"),
    "refused:service-unavailable", id="fp3", files="no-eve-roster")
add(C, "live", "push-from-server-domain", push(b"localhost", pid=b"fp4"),
    "refused:service-unavailable", id="fp4", files="no-eve-roster")
add(C, "live", "push-from-contact-header-prefix",
    push(b"bob@localhost", pid=b"fp5", prefix=b"r"), "refused:service-unavailable", id="fp5",
    files="no-eve-roster")
add(C, "live", "result-to-iqd-roster-get-from-contact",
    b"<iq type='result' id='iqd-roster-1' from='bob@localhost/x' to='" + UP + b"'>"
    b"<query xmlns='jabber:iq:roster'><item jid='eve@localhost' subscription='both'/></query></iq>",
    "dropped", log="roster result", files="no-eve-roster")
add(C, "live", "push-without-from-believed", push(None, jid=b"dave@localhost", pid=b"lp1"),
    "answered", id="lp1", files="roster-has:dave@localhost")
add(C, "live", "push-from-own-bare-believed",
    push(b"Alice@Localhost", jid=b"erin@localhost", pid=b"lp2"), "answered", id="lp2",
    files="roster-has:erin@localhost")

# ---------------------------------------------------------------- forged from (clients)
C = "forged from by a client (re-stamped, never sent upstream)"
FORGED = {
    "message-from-contact":
        b"<message from='bob@localhost' to='carol@localhost' type='chat'><body>T</body></message>",
    "message-from-sibling":
        b"<message from='alice@localhost/a-watch' to='carol@localhost' type='chat'>"
        b"<body>T</body></message>",
    "message-from-upstream-jid":
        b"<message from='alice@localhost/scripted' to='carol@localhost' type='chat'>"
        b"<body>T</body></message>",
    "message-prefixed-from-kept":
        b"<message xmlns:x='urn:x' x:from='bob@localhost' from='bob@localhost' "
        b"to='carol@localhost' type='chat'><body>T</body></message>",
    "iq-from-contact":
        b"<iq type='get' id='T' from='bob@localhost' to='carol@localhost'>"
        b"<query xmlns='jabber:iq:version'/></iq>",
    "directed-presence-from-contact":
        b"<presence from='bob@localhost' to='carol@localhost'><status>T</status></presence>",
}
for name, data in FORGED.items():
    add(C, "fifo", name, data, "restamped")
add(C, "fifo", "message-from-contact-dir-in", FORGED["message-from-contact"], "restamped",
    via="in")
for name in ("message-from-contact", "message-from-upstream-jid", "iq-from-contact",
             "directed-presence-from-contact"):
    add(C, "c2s-live", name, FORGED[name], "restamped")

# ---------------------------------------------------------------- hostile JIDs
C = "hostile JIDs (long, '/', '..', reserved names, case, Unicode)"


def said(frm, text):
    return (b"<message from='" + frm + b"' to='" + UP + b"' type='chat'><body>" + text
            + b"</body></message>")


add(C, "live", "3000-byte-localpart", said(b"b" * 3000 + b"@localhost/x", b"j1"), "delivered",
    files="no-new-contact")
add(C, "live", "3000-byte-resource", said(b"bob@localhost/" + b"r" * 3000, b"j2"), "delivered",
    files="no-new-contact")
add(C, "live", "1000-byte-localpart", said(b"b" * 1000 + b"@localhost", b"j3"), "delivered",
    files="no-new-contact")
add(C, "live", "slash-laden-resource", said(b"bob@localhost/../../../sjpwn/x/", b"j4"),
    "delivered", files="log:bob@localhost:j4")
add(C, "live", "dotdot-localpart", said(b"..@localhost", b"j5"), "delivered",
    files="log:%2E.@localhost:j5")
add(C, "live", "dot-localpart", said(b".@localhost", b"j6"), "delivered",
    files="log:%2E@localhost:j6")
add(C, "live", "dotdot-domain", said(b"..", b"j7"), "delivered", files="no-new-contact")
add(C, "live", "percent-localpart", said(b"%2e%2e@localhost", b"j8"), "delivered",
    files="log:%252e%252e@localhost:j8")
for i, name in enumerate([b"in", b"clients", b"iq", b"iq.d", b"state", b"passwd", b"roster",
                          b"mypresence"]):
    n = name.decode()
    enc = "%" + format(ord(n[0]), "02X") + n[1:]
    add(C, "live", "reserved-name-" + n, said(name, b"r%d" % i), "delivered",
        files=f"log:{enc}:r{i}")
add(C, "live", "uppercase", said(b"BOB@LOCALHOST/Res", b"j9"), "delivered",
    files="log:bob@localhost:j9")
add(C, "live", "unicode-uppercase", said("BÖB@LOCALHOST".encode(), b"j10"), "delivered",
    files="log:böb@localhost:j10")
add(C, "live", "fullwidth-not-mapped", said("ｂｏｂ@localhost".encode(), b"j11"), "delivered",
    files="log:ｂｏｂ@localhost:j11")
add(C, "live", "space-in-localpart", said(b"b ob@localhost", b"j12"), "delivered",
    files="no-new-contact")
add(C, "live", "empty-localpart", said(b"@localhost", b"j13"), "delivered",
    files="no-new-contact")
add(C, "live", "presence-from-dotdot",
    b"<presence from='..@localhost/x' to='" + UP + b"'><show>away</show></presence>", "delivered",
    files="presence:%2E.@localhost")

# Resources a client of sj-c2s asks for become DIR/clients/NAME: only safe
# names are kept (sj::path::component), else a generated sj-XXXXXXXX.
for name, res, exp in [("dotdot-path", b"../../sjpwn", "renamed"), ("slash", b"a/b", "renamed"),
                       ("dot", b".", "renamed"), ("dotdot", b"..", "renamed"),
                       ("reserved-in", b"in", "renamed"), ("reserved-clients", b"clients", "renamed"),
                       ("space", b"my phone", "renamed"), ("percent", b"%2e%2e", "renamed"),
                       ("3000-bytes", b"r" * 3000, "renamed"), ("65-bytes", b"r" * 65, "renamed"),
                       ("upstream-resource", b"scripted", "renamed"),
                       ("leading-dot", b".hidden", "renamed"),
                       ("unicode-kept", "телефон".encode(), "kept"), ("plain-kept", b"Phone-2", "kept")]:
    add(C, "c2s-bind", "resource-" + name, res, exp)

# ---------------------------------------------------------------- ids and namespaces
C = "iq ids and namespaces aimed at paths (DIR/iq/<id>, DIR/iq.d/<ns>)"


def result(rid):
    return b"<iq type='result' id='" + rid + b"' from='bob@localhost/x' to='" + UP + b"'/>"


for name, rid in [("dotdot-path", b"../../../sjpwn-1"), ("absolute-path", b"/tmp/sjpwn-2"),
                  ("dotdot", b".."), ("dot", b"."), ("reserved-in", b"in"),
                  ("percent", b"%2e%2e%2fsjpwn-3"), ("unicode", "ид/../x".encode()),
                  ("dotfile", b".sjpwn-4")]:
    add(C, "live", "result-id-" + name, result(rid), "stored", id=rid.decode())
add(C, "live", "result-id-300-bytes", result(b"i" * 300), "dropped", log="cannot name a file")


def get(ns, gid=b"g1"):
    return (b"<iq type='get' id='" + gid + b"' from='bob@localhost/x' to='" + UP + b"'><query xmlns='"
            + ns + b"'/></iq>")


for i, (name, ns) in enumerate([("dotdot", b"../sjpwn-handler"), ("absolute", b"/bin/sh"),
                                 ("dotdot-only", b".."), ("iq.d", b"iq.d"),
                                 ("300-bytes", b"urn:" + b"n" * 300)]):
    add(C, "live", "get-namespace-" + name, get(ns, b"ns%d" % i), "delegated", id="ns%d" % i,
        files="no-handler-run")
add(C, "live", "get-id-path-kept", get(b"urn:nothing", b"../../sjpwn-5"), "delegated",
    id="../../sjpwn-5")

# ---------------------------------------------------------------- floods
C = "huge numbers of contacts and ids (bounded)"
add(C, "flood", "10000-contacts-messages", b"", "counted", check="contacts", n=10000)
add(C, "flood", "10000-contacts-presence", b"", "counted", check="presence", n=10000)
add(C, "flood", "10000-result-ids", b"", "counted", check="result-ids", n=10000)
add(C, "flood", "10000-get-ids", b"", "counted", check="get-ids", n=10000)

assert len({(c.side, c.name) for c in CASES}) == len(CASES), "duplicate case names"
