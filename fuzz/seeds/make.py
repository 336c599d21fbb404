#!/usr/bin/env python3
"""Write the hand-picked seed inputs of every fuzz target (fuzz/seeds/<target>/).

Seeds are real stanzas (the shapes the tests and a busy account send) and
hostile samples; the three-byte prefix of framer inputs is explained in
fuzz/src/lib.rs (Case). Run from anywhere: python3 fuzz/seeds/make.py
"""
import hashlib
import os

HERE = os.path.dirname(os.path.abspath(__file__))

HDR = (b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
       b"xmlns:stream='http://etherx.jabber.org/streams' from='example.org' id='s1' "
       b"version='1.0' xml:lang='en'>")

STANZAS = [
    b"<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls>"
    b"<mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>SCRAM-SHA-256</mechanism>"
    b"<mechanism>PLAIN</mechanism></mechanisms></stream:features>",
    b"<message from='juliet@capulet.lit/balcony' to='romeo@montague.lit' type='chat' id='m1'>\r\n"
    b" <body>Wherefore art thou &amp; \"why\" > 1\nline2\rline3</body>"
    b"<active xmlns='http://jabber.org/protocol/chatstates'/></message>",
    b"<presence from=\"nurse@capulet.lit/phone\"><show>away</show><status><![CDATA[<brb>\r\n]]]]></status>"
    b"<c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='https://a.org?x=>' "
    b"ver='QgayPKawpkPSDYmwT/WM94uAlu0='/></presence>",
    b"<iq type='result' id='r1'><query xmlns='jabber:iq:roster' ver='v1'>"
    b"<item jid='u1@ex.org' name='\xc3\x9c1' subscription='both'><group>G</group></item>"
    b"<item jid='u2@ex.org' name='a&#10;b&#9;c' subscription='to'/></query></iq>",
    b"<message from='me@ex.org' to='me@ex.org/r' type='chat'><sent xmlns='urn:xmpp:carbons:2'>"
    b"<forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client' from='me@ex.org/c' "
    b"to='x@y' type='chat'><body>hi</body></message></forwarded></sent></message>",
    b"<iq type='get' id='p1' from='ex.org'><ping xmlns='urn:xmpp:ping'/></iq>",
    b"<m a='x\r\ny\tz\nw\rv' b=\"&#10;&#x1F600;&lt;&apos;\" xml:lang='en'>\xc3\xa9\xf0\x9f\x98\x80</m >",
    b"<a><b stream:x='1'/></a>",
    b"<s:a xmlns:s='u'><s:b/></s:a>",
    b"<stream:error><conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
    b"<text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>Replaced</text></stream:error>",
]

HOSTILE = [
    b"<!-- hi --><m/>", b"<m><?pi x?></m>", b"<!DOCTYPE x [<!ENTITY a 'b'>]><m>&a;</m>",
    b"<m>&foo;</m>", b"<m>&#0;</m>", b"<m>&#xD800;</m>", b"<m>]]></m>", b"<m a='1' a='2'/>",
    b"<m a='<'/>", b"<m>\xc0\xaf</m>", b"<m>\xed\xa0\x80</m>", b"<m>\xef\xbf\xbe</m>",
    b"<x:m/>", b"<m xmlns:p=''><p:b/></m>", b"<m xmlns:xml='urn:x'/>", b"<m xmlns:xmlns='urn:x'/>",
    b"<m><stream:stream xmlns:stream='http://etherx.jabber.org/streams'>",
    b"<a><b><c><d><e/></d></c></b></a>", b"<m a='1' b='2' c='3' d='4' e='5'/>",
    b"<m><![CDATA[a]]b]]></m>", b"<m\r\n  to=\"x\"\n/>", b"<m></m></stream:stream>x",
    b"<message><body>" + b"x" * 800 + b"</body></message>",
]


def write(target, name, data):
    d = os.path.join(HERE, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def framer_seeds(target):
    ws = b" \n\t"
    stream = HDR + ws.join(STANZAS) + b"</stream:stream>"
    frags = b"\n".join(s for s in STANZAS if b"stream:" not in s) + b"\n"
    # flags: bit 0 fragments, bits 1-2 limits, bits 3-4 chunk size, bit 5 lazy drain.
    cases = [
        ("stream-whole", 0x18, stream), ("stream-bytes", 0x00, stream),
        ("stream-small", 0x0C | 0x20, stream), ("frags", 0x09, frags),
        ("frags-preauth", 0x13, frags),
        ("dialback", 0x08, b"<s:stream xmlns:s='http://etherx.jabber.org/streams' "
         b"xmlns:db='jabber:server:dialback'><db:result from='a'/><s:features/>"),
        ("noheaderdecl", 0x08, b"\n <stream:stream xmlns:stream='http://etherx.jabber.org/streams'>"
         b"<a/></stream:stream>"),
    ]
    for i, h in enumerate(HOSTILE):
        cases.append((f"hostile-{i:02}-stream", 0x08 | (i % 4) << 1, HDR + h))
        cases.append((f"hostile-{i:02}-frag", 0x19, h + b"\n"))
    for name, flags, payload in cases:
        seed = hashlib.sha1(name.encode()).digest()[:2]
        write(target, name, bytes([flags]) + seed + payload)


def jid_seeds():
    names = [
        (b"Juliet@Capulet.LIT/balcony", b"romeo@montague.lit"),
        (b"capulet.lit.", b"in"), (b"a@[2001:DB8::1]/r", b"a@[2001:db8::1]"),
        (b"\xc3\x84\xc3\x96\xc3\x9c@B\xc3\xbccher.example", b"\xc3\xa4\xc3\xb6\xc3\xbc@b\xc3\xbccher.example"),
        (b"http://jabber.org/protocol/disco#info", b"http:%2F%2Fjabber.org%2Fprotocol%2Fdisco#info"),
        (b"..", b"%2E."), (b"100%", b"100%25"), (b"iq.d", b"%69q.d"),
        (b"a@b/c/d@e/../f", b"a@b"), (b"a\x00b", b"a%00b"), (b"\xe2\x84\xaa@x", b"k@x"),
        (b"a@_xmpp.example", b"clients"),
    ]
    for i, (a, b) in enumerate(names):
        write("jid_path", f"pair-{i:02}", a + b"\xff" + b)


def sasl_seeds():
    gs2 = b"n,,"
    snonce = b"3rfcNHYJY1ZVvWVs7j"
    cn = b"fyko+d2lbbFgONRv9qkxdawL"
    first = gs2 + b"n=user,r=" + cn
    without = b"c=biws,r=" + cn + snonce
    # flags: bit 0 hash, bits 1-2 proof mode, bit 3 other hash, bit 4 out of order, bits 5-6 iterations.
    for name, flags, fin in [
        ("right-sha1", 0x02, without), ("right-sha256", 0x03, without),
        ("wrong-password", 0x04, without), ("flipped", 0x06 | 0x20, without),
        ("own-proof", 0x01, without + b",p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="),
        ("other-hash", 0x0A, without), ("out-of-order", 0x10, without),
        ("extension", 0x02, without + b",x=y"),
    ]:
        write("sasl_server", name, bytes([flags]) + first + b"\xff" + fin)
    write("sasl_server", "authzid", bytes([0x03]) + b"y,a=admin=2Cx,n=us=3Der,r=abc\xff"
          b"c=eSxhPWFkbWluPTJDeCw=,r=abc" + snonce)
    write("sasl_server", "plain", bytes([0x00]) + b"\x00user\x00pencil")
    write("sasl_server", "mandatory-ext", bytes([0x02]) + b"n,,m=ext,n=u,r=x\xffc=biws,r=x" + snonce)


if __name__ == "__main__":
    framer_seeds("framer_chunks")
    framer_seeds("framer_diff")
    jid_seeds()
    sasl_seeds()
