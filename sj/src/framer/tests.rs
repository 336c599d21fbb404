//! The framer's unit tests: streams and lines fed in every chunking.

use super::*;

const HDR: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
    xmlns:stream='http://etherx.jabber.org/streams' to='example.org' version='1.0'>";

/// All events (and the final error, if any) for `input` fed in `chunks`.
fn run(mode: Mode, limits: Limits, chunks: &[&[u8]]) -> (Vec<Event>, Option<FrameError>) {
    let mut f = Framer::new(mode, limits);
    let mut evs = Vec::new();
    for c in chunks {
        f.feed(c);
        loop {
            match f.next_event() {
                Ok(Some(e)) => evs.push(e),
                Ok(None) => break,
                Err(e) => {
                    assert_eq!(f.next_event(), Err(e.clone()), "error must stick");
                    return (evs, Some(e));
                }
            }
        }
    }
    (evs, None)
}

fn stream(body: &str) -> (Vec<Event>, Option<FrameError>) {
    let input = format!("{HDR}{body}");
    run(Mode::Stream, Limits::DEFAULT, &[input.as_bytes()])
}

fn records(body: &str) -> Vec<String> {
    let (evs, err) = stream(body);
    assert_eq!(err, None, "{body}");
    evs.into_iter()
        .filter_map(|e| match e {
            Event::Record(r) | Event::StreamError(r) => Some(String::from_utf8(r).unwrap()),
            _ => None,
        })
        .collect()
}

fn cond(body: &str) -> Condition {
    match stream(body).1 {
        Some(e) => e.condition,
        None => panic!("accepted: {body:?}"),
    }
}

fn frag_cond(line: &str) -> Condition {
    match canonical_record(line.as_bytes(), Limits::DEFAULT) {
        Err(e) => e.condition,
        Ok(r) => panic!("accepted: {line:?} -> {:?}", String::from_utf8_lossy(&r)),
    }
}

#[test]
fn header_and_records() {
    let (evs, err) =
        stream("<message to='a@b'><body>hi</body></message> \n <presence/></stream:stream>");
    assert_eq!(err, None);
    assert_eq!(evs.len(), 4);
    match &evs[0] {
        Event::Header(h) => {
            assert_eq!(h.get("to"), Some("example.org"));
            assert_eq!(
                h.get("xmlns:stream"),
                Some("http://etherx.jabber.org/streams")
            );
        }
        e => panic!("{e:?}"),
    }
    assert_eq!(
        evs[1],
        Event::Record(b"<message to='a@b'><body>hi</body></message>\n".to_vec())
    );
    assert_eq!(evs[2], Event::Record(b"<presence/>\n".to_vec()));
    assert_eq!(evs[3], Event::End);
}

#[test]
fn header_content_namespace() {
    let ns = |hdr: &[u8]| match run(Mode::Stream, Limits::PRE_AUTH, &[hdr]).0.first() {
        Some(Event::Header(h)) => h.is_jabber_client(),
        e => panic!("{e:?}"),
    };
    let s = "xmlns:stream='http://etherx.jabber.org/streams'";
    assert!(ns(
        format!("<stream:stream xmlns='jabber:client' {s}>").as_bytes()
    ));
    assert!(ns(format!("<stream:stream {s}>").as_bytes()));
    assert!(!ns(
        format!("<stream:stream xmlns='jabber:server' {s}>").as_bytes()
    ));
    assert!(!ns(format!("<stream:stream xmlns='' {s}>").as_bytes()));
}

#[test]
fn header_without_declaration() {
    let input = b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams'><a/>";
    let (evs, err) = run(Mode::Stream, Limits::DEFAULT, &[input]);
    assert_eq!(err, None);
    assert_eq!(evs.len(), 2);
}

#[test]
fn canonical_line_breaks() {
    assert_eq!(
        records("<m>a\r\nb\rc\nd</m>"),
        ["<m>a&#10;b&#10;c&#10;d</m>\n"]
    );
    assert_eq!(
        records("<m a='x\r\ny\tz\nw\rv'/>"),
        ["<m a='x y z w v'/>\n"]
    );
    assert_eq!(
        records("<m>\n  <body>x</body>\r\n</m>"),
        ["<m>&#10;  <body>x</body>&#10;</m>\n"]
    );
    assert_eq!(
        records("<m><![CDATA[a\r\nb<c]]></m>"),
        ["<m><![CDATA[a]]>&#10;<![CDATA[b<c]]></m>\n"]
    );
    assert_eq!(records("<m\r\n  to=\"x\"\n/>"), ["<m   to=\"x\" />\n"]);
    // Everything else is kept byte for byte.
    assert_eq!(
        records("<m  b=\"1\" a='&amp;&#10;'>&lt;é&#x1F600;></m >"),
        ["<m  b=\"1\" a='&amp;&#10;'>&lt;é&#x1F600;></m >\n"]
    );
}

#[test]
fn header_prefix_added() {
    let r = records(
        "<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/></stream:features>\
         <stream:error><conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>",
    );
    assert_eq!(
        r[0],
        "<stream:features xmlns:stream='http://etherx.jabber.org/streams'>\
         <mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/></stream:features>\n"
    );
    let (evs, _) = stream(
        "<stream:error><conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>",
    );
    assert_eq!(
        evs[1],
        Event::StreamError(
            b"<stream:error xmlns:stream='http://etherx.jabber.org/streams'>\
              <conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>\n"
                .to_vec()
        )
    );
    // Used only on a nested element: declared on the top-level one.
    assert_eq!(
        records("<a><b stream:x='1'/></a>"),
        ["<a xmlns:stream='http://etherx.jabber.org/streams'><b stream:x='1'/></a>\n"]
    );
    // Declared in the record itself: nothing added.
    assert_eq!(
        records("<s:a xmlns:s='u'><s:b/></s:a>"),
        ["<s:a xmlns:s='u'><s:b/></s:a>\n"]
    );
    // Another header prefix.
    let input =
        b"<s:stream xmlns:s='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback'>\
        <db:result from='a'/><s:features/>";
    let (evs, err) = run(Mode::Stream, Limits::DEFAULT, &[input]);
    assert_eq!(err, None);
    assert_eq!(
        evs[1],
        Event::Record(b"<db:result xmlns:db='jabber:server:dialback' from='a'/>\n".to_vec())
    );
    assert_eq!(
        evs[2],
        Event::Record(b"<s:features xmlns:s='http://etherx.jabber.org/streams'/>\n".to_vec())
    );
}

#[test]
fn stream_namespace_checked() {
    let bad: [&[u8]; 4] = [
        b"<stream:stream xmlns:stream='urn:wrong'>",
        b"<stream xmlns='jabber:client'>",
        b"<stream:foo xmlns:stream='http://etherx.jabber.org/streams'>",
        b"<stream:stream>",
    ];
    for b in bad {
        let (_, err) = run(Mode::Stream, Limits::DEFAULT, &[b]);
        assert_eq!(
            err.map(|e| e.condition),
            Some(Condition::InvalidNamespace),
            "{:?}",
            String::from_utf8_lossy(b)
        );
    }
}

#[test]
fn utf16_stream_is_unsupported_encoding() {
    let hdr =
        "<?xml version='1.0'?><stream:stream xmlns:stream='http://etherx.jabber.org/streams'>";
    let le: Vec<u8> = hdr.encode_utf16().flat_map(|u| u.to_le_bytes()).collect();
    let be: Vec<u8> = hdr.encode_utf16().flat_map(|u| u.to_be_bytes()).collect();
    for input in [
        [&[0xFF, 0xFE][..], &le].concat(),
        [&[0xFE, 0xFF][..], &be].concat(),
        le.clone(),
        be.clone(),
    ] {
        // One byte at a time too: the outcome does not depend on chunking.
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        for chunks in [vec![input.as_slice()], bytes] {
            let (_, err) = run(Mode::Stream, Limits::PRE_AUTH, &chunks);
            assert_eq!(
                err.map(|e| e.condition),
                Some(Condition::UnsupportedEncoding),
                "{:?}",
                &input[..4]
            );
        }
    }
    let bom8 = [&b"\xEF\xBB\xBF"[..], hdr.as_bytes()].concat();
    assert_eq!(
        run(Mode::Stream, Limits::PRE_AUTH, &[&bom8])
            .1
            .map(|e| e.condition),
        Some(Condition::NotWellFormed)
    );
}

#[test]
fn declaration_rules() {
    let enc = b"<?xml version='1.0' encoding='ISO-8859-1'?><stream:stream>";
    let (_, err) = run(Mode::Stream, Limits::DEFAULT, &[enc]);
    assert_eq!(
        err.map(|e| e.condition),
        Some(Condition::UnsupportedEncoding)
    );
    let ok = b"<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<stream:stream xmlns:stream='http://etherx.jabber.org/streams'>";
    assert_eq!(run(Mode::Stream, Limits::DEFAULT, &[ok]).1, None);
    let pi = b"<?foo bar?><stream:stream>";
    assert_eq!(
        run(Mode::Stream, Limits::DEFAULT, &[pi])
            .1
            .map(|e| e.condition),
        Some(Condition::RestrictedXml)
    );
    assert_eq!(cond("<?xml version='1.0'?>"), Condition::RestrictedXml);
    let v = b"<?xml version='1.0>'?><stream:stream>";
    assert_eq!(
        run(Mode::Stream, Limits::DEFAULT, &[v])
            .1
            .map(|e| e.condition),
        Some(Condition::NotWellFormed)
    );
    let bad = b"<?xml encoding='UTF-8'?>";
    assert_eq!(
        run(Mode::Stream, Limits::DEFAULT, &[bad])
            .1
            .map(|e| e.condition),
        Some(Condition::NotWellFormed)
    );
}

#[test]
fn restricted_xml() {
    for body in [
        "<!-- hi -->",
        "<m><!-- hi --></m>",
        "<m><?pi x?></m>",
        "<?pi x?>",
        "<!DOCTYPE x>",
        "<m><!ENTITY x 'y'></m>",
        "<m>&foo;</m>",
        "<m a='&foo;'/>",
    ] {
        assert_eq!(cond(body), Condition::RestrictedXml, "{body}");
    }
}

#[test]
fn reference_to_a_non_char_is_not_well_formed() {
    for body in [
        "<m>&#0;</m>",
        "<m>&#x0;</m>",
        "<m>&#1;</m>",
        "<m>&#xD800;</m>",
        "<m>&#xDFFF;</m>",
        "<m>&#xFFFE;</m>",
        "<m>&#xFFFF;</m>",
        "<m>&#x110000;</m>",
        "<m>&#99999999999999999999;</m>",
        "<m a='&#0;'/>",
    ] {
        assert_eq!(cond(body), Condition::NotWellFormed, "{body}");
    }
    assert_eq!(
        records("<m>&#9;&#xD7FF;&#xE000;&#xFFFD;&#x10FFFF;</m>"),
        ["<m>&#9;&#xD7FF;&#xE000;&#xFFFD;&#x10FFFF;</m>\n"]
    );
}

#[test]
fn not_well_formed() {
    for body in [
        "text<m/>",
        "<m>a</n>",
        "<m><a></m></a>",
        "<s:m xmlns:s='u'></t:m>",
        "<m a=1/>",
        "<m a='1'b='2'/>",
        "<m a='1' a='2'/>",
        "<m a='<'/>",
        "<m a='x & y'/>",
        "<m>x & y</m>",
        "<m>&#;</m>",
        "<m>&#xZ;</m>",
        "<m>&amp</m>",
        "<m>]]></m>",
        "<1m/>",
        "<m -a='1'/>",
        "<:m/>",
        "<a:b:c xmlns:a='u'/>",
        "<m\u{1}/>",
        "<m>\u{1}</m>",
        "<m>\u{FFFE}</m>",
        "<m a='\u{FFFF}'/>",
        "<m>\u{7}</m>",
        "<m></m\u{1}>",
        "<m a='1'\u{1}/>",
        "<m><![CDATA[\u{2}]]></m>",
        "<m>\u{FFFF}</m>",
        "<m\u{FFFE}/>",
        "<![CDATA[x]]>",
        "</m>",
        "<m></m></stream:stream>x",
        "</stream:stream><m/>",
        "<a:\u{300}b xmlns:a='u'/>",
    ] {
        assert_eq!(cond(body), Condition::NotWellFormed, "{body}");
    }
}

#[test]
fn strict_utf8() {
    for bad in [
        &b"<m>\xC0\xAF</m>"[..], // overlong '/'
        b"<m>\xED\xA0\x80</m>",  // surrogate
        b"<m>\xE2\x82</m>",      // truncated
        b"<m>\xFF</m>",
        b"<m a='\x80'/>",
    ] {
        let input = [HDR.as_bytes(), bad].concat();
        let (_, err) = run(Mode::Stream, Limits::DEFAULT, &[&input]);
        assert_eq!(
            err.map(|e| e.condition),
            Some(Condition::NotWellFormed),
            "{bad:?}"
        );
    }
}

#[test]
fn undeclared_prefix() {
    assert_eq!(cond("<x:m/>"), Condition::NotWellFormed);
    assert_eq!(cond("<m x:a='1'/>"), Condition::NotWellFormed);
    assert_eq!(
        cond("<m><x:b xmlns:x='u'/><x:c/></m>"),
        Condition::NotWellFormed
    );
    assert_eq!(frag_cond("<stream:features/>"), Condition::NotWellFormed);
    // The xml prefix is always declared.
    assert_eq!(records("<m xml:lang='en'/>"), ["<m xml:lang='en'/>\n"]);
}

/// Found by fuzzing (fuzz/framer_diff): namespace declarations that
/// Namespaces in XML forbids were passed on in records, which strict
/// parsers (quick-xml, Expat in clients) then refuse.
#[test]
fn reserved_namespace_declarations() {
    for body in [
        "<m xmlns:xml='urn:x'/>",
        "<m xmlns:xmlns='urn:x'/>",
        "<m xmlns:p=''><p:b/></m>",
        "<m><b xmlns:p=\"\"/></m>",
        "<m xmlns:p='http://www.w3.org/XML/1998/namespace'/>",
        "<m xmlns:p='http://www.w3.org/2000/xmlns/'/>",
        "<m xmlns='http://www.w3.org/2000/xmlns/'/>",
        "<m xmlns='http://www.w3.org/XML/1998/namespace'/>",
        "<m xmlns:p='http://www.w3.org/XML/1998/&#110;amespace'/>",
    ] {
        assert_eq!(cond(body), Condition::NotWellFormed, "{body}");
        assert_eq!(frag_cond(body), Condition::NotWellFormed, "{body}");
    }
    // The header's declarations are checked too: they would be copied
    // into records.
    let input = b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams' xmlns:p=''>";
    let (_, err) = run(Mode::Stream, Limits::DEFAULT, &[input]);
    assert_eq!(err.map(|e| e.condition), Some(Condition::NotWellFormed));
    // What the rules allow.
    assert_eq!(
        records("<m xmlns:xml='http://www.w3.org/XML/1998/namespace' xml:lang='en'/><m xmlns=''/>"),
        [
            "<m xmlns:xml='http://www.w3.org/XML/1998/namespace' xml:lang='en'/>\n",
            "<m xmlns=''/>\n"
        ]
    );
}

#[test]
fn duplicate_expanded_attribute_names() {
    for body in [
        "<m xmlns:a='urn:u' xmlns:b='urn:u' a:k='1' b:k='2'/>",
        "<m xmlns:a='urn:u'><n xmlns:b='urn:u' a:k='1' b:k='2'/></m>",
        "<m xmlns:a='urn&#58;u' xmlns:b='urn:u' a:k='1' b:k='2'/>",
        "<m xmlns:s='http://etherx.jabber.org/streams' s:k='1' stream:k='2'/>",
    ] {
        assert_eq!(cond(body), Condition::NotWellFormed, "{body}");
    }
    for ok in [
        "<m xmlns:a='urn:a' xmlns:b='urn:b' a:k='1' b:k='2'/>",
        "<m xmlns:a='urn:a' k='1' a:k='2'/>",
        "<m xmlns:a='urn:u' xmlns:b='urn:u' a:k='1' b:j='2'/>",
    ] {
        assert_eq!(records(ok), [format!("{ok}\n")], "{ok}");
    }
}

#[test]
fn second_header_is_bad_format() {
    assert_eq!(
        cond("<stream:stream xmlns:stream='http://etherx.jabber.org/streams'>"),
        Condition::BadFormat
    );
    assert_eq!(cond("<m><stream:stream>"), Condition::BadFormat);
    // Any prefix, or none: the namespace is what counts, and a header
    // that never ends is refused at once.
    for body in [
        "<s:stream xmlns:s='http://etherx.jabber.org/streams' version='1.0'>",
        "<stream xmlns='http://etherx.jabber.org/streams'>",
        "<stream xmlns='http://etherx.jabber.org/streams'/>",
        "<m><s:stream xmlns:s='http://etherx.jabber.org/streams'/></m>",
        "<m xmlns:s='http://etherx.jabber.org/streams'><s:stream/></m>",
        "<m><x xmlns='http://etherx.jabber.org/streams'><stream/></x></m>",
    ] {
        assert_eq!(cond(body), Condition::BadFormat, "{body}");
    }
    // Other elements named stream are fine.
    assert_eq!(
        records("<stream xmlns='urn:x'/><m><stream/></m>"),
        ["<stream xmlns='urn:x'/>\n", "<m><stream/></m>\n"]
    );
}

#[test]
fn limits() {
    let pre = Limits::PRE_AUTH;
    // Never completes: refused once it passes 8 KiB.
    let big = format!("{HDR}<message><body>{}", "x".repeat(9000));
    let (evs, err) = run(Mode::Stream, pre, &[big.as_bytes()]);
    assert_eq!(evs.len(), 1);
    assert_eq!(err.map(|e| e.condition), Some(Condition::PolicyViolation));
    let mut f = Framer::new(Mode::Stream, pre);
    f.feed(HDR.as_bytes());
    assert!(matches!(f.next_event(), Ok(Some(Event::Header(_)))));
    f.feed(b"<message><body>");
    let mut n = 0;
    let e = loop {
        f.feed(&[b'y'; 100]);
        n += 100;
        match f.next_event() {
            Ok(None) => assert!(n < 9000),
            Ok(Some(e)) => panic!("{e:?}"),
            Err(e) => break e,
        }
    };
    assert_eq!(e.condition, Condition::PolicyViolation);
    assert!(n <= 8300, "caught at {n}");
    // Just under the limit is fine.
    let fits = format!("<m>{}</m>", "z".repeat(8 * 1024 - 7));
    assert_eq!(fits.len(), 8 * 1024);
    assert_eq!(run(Mode::Fragments, pre, &[fits.as_bytes()]).1, None);
    let over = format!("<m>{}</m>", "z".repeat(8 * 1024 - 6));
    assert_eq!(
        run(Mode::Fragments, pre, &[over.as_bytes()])
            .1
            .map(|e| e.condition),
        Some(Condition::PolicyViolation)
    );
    // Depth and attribute count.
    let deep = "<a>".repeat(17) + &"</a>".repeat(17);
    assert_eq!(frag_cond_l(&deep, pre), Condition::PolicyViolation);
    let ok_deep = "<a>".repeat(16) + &"</a>".repeat(16);
    assert!(canonical_record(ok_deep.as_bytes(), pre).is_ok());
    let attrs: String = (0..33).map(|i| format!(" a{i}='1'")).collect();
    assert_eq!(
        frag_cond_l(&format!("<m{attrs}/>"), pre),
        Condition::PolicyViolation
    );
    let attrs: String = (0..32).map(|i| format!(" a{i}='1'")).collect();
    assert!(canonical_record(format!("<m{attrs}/>").as_bytes(), pre).is_ok());
}

fn frag_cond_l(line: &str, l: Limits) -> Condition {
    canonical_record(line.as_bytes(), l)
        .err()
        .map(|e| e.condition)
        .unwrap_or_else(|| panic!("accepted {line}"))
}

/// Feed `input` after the header in chunks of `step` bytes under
/// `Limits::FROM_SERVER`; the events after the header, or the error.
fn from_server(body: &[u8], step: usize) -> (Vec<Event>, Option<FrameError>) {
    let mut input = HDR.as_bytes().to_vec();
    input.extend_from_slice(body);
    let chunks: Vec<&[u8]> = input.chunks(step.max(1)).collect();
    let (mut evs, err) = run(Mode::Stream, Limits::FROM_SERVER, &chunks);
    assert!(matches!(evs.first(), Some(Event::Header(_))));
    evs.remove(0);
    (evs, err)
}

fn dropped(ev: &Event) -> &Dropped {
    match ev {
        Event::Dropped(d) => d,
        e => panic!("not dropped: {e:?}"),
    }
}

const NEXT: &[u8] = b"<message from='c@d/e'><body>next</body></message>";

#[test]
fn from_server_over_a_limit_is_dropped_and_the_stream_goes_on() {
    let head = "<message from='bob@example.org/r&apos;1' id='x&amp;y' type='chat'>";
    let deep = format!("{head}{}{}</message>", "<a>".repeat(64), "</a>".repeat(64));
    let attrs: String = (0..65).map(|i| format!(" a{i}='v'")).collect();
    let wide = format!("{head}<x{attrs}/></message>");
    let big = format!("{head}<body>{}</body></message>", "'".repeat(1700 * 1024));
    let one_tag = format!(
        "<message from='bob@example.org/r&apos;1' id='x&amp;y' type='chat' v='{}'/>",
        "v".repeat(1700 * 1024)
    );
    for (what, el) in [
        ("nesting deeper than 64", &deep),
        ("more than 64 attributes", &wide),
        ("element exceeds 1638400 bytes", &big),
        ("element exceeds 1638400 bytes", &one_tag),
    ] {
        let mut body = el.as_bytes().to_vec();
        body.extend_from_slice(NEXT);
        let want_bytes = el.len();
        for step in [body.len(), 65536, 4096, 1499, 7] {
            if step < 1000 && el.len() > 100_000 {
                continue;
            }
            let (evs, err) = from_server(&body, step);
            assert_eq!(err, None, "{what} in {step}-byte reads");
            assert_eq!(evs.len(), 2, "{what} in {step}-byte reads: {evs:?}");
            let d = dropped(&evs[0]);
            assert_eq!(d.reason.condition, Condition::PolicyViolation);
            assert_eq!(d.reason.detail, what);
            assert_eq!(d.name, "message");
            assert_eq!(d.from.as_deref(), Some("bob@example.org/r'1"));
            assert_eq!(d.id.as_deref(), Some("x&y"));
            assert_eq!(d.kind.as_deref(), Some("chat"));
            assert_eq!(d.bytes, want_bytes);
            assert_eq!(evs[1], Event::Record([NEXT, b"\n"].concat()));
        }
    }
    // What is under the limits is delivered as always.
    let fits = format!(
        "<message>{}{}</message>",
        "<a>".repeat(63),
        "</a>".repeat(63)
    );
    let (evs, err) = from_server(fits.as_bytes(), 4096);
    assert_eq!(err, None);
    assert!(matches!(&evs[..], [Event::Record(_)]));
}

#[test]
fn skipping_holds_no_more_than_a_read() {
    let mut f = Framer::new(Mode::Stream, Limits::FROM_SERVER);
    f.feed(HDR.as_bytes());
    assert!(matches!(f.next_event(), Ok(Some(Event::Header(_)))));
    f.feed(b"<message><body>");
    let chunk = vec![b'q'; 65536];
    // Up to the record limit it is buffered, as any element; once
    // skipping, a read at a time.
    let mut most = 0;
    for _ in 0..(10 << 20) / chunk.len() {
        let skipping = f.skip.is_some();
        f.feed(&chunk);
        if skipping {
            most = most.max(f.buf.len());
        }
        assert_eq!(f.next_event(), Ok(None));
    }
    assert!(f.skip.is_some());
    assert!(most <= 2 * chunk.len(), "held {most} bytes while skipping");
    f.feed(b"</body></message><presence/>");
    assert!(matches!(f.next_event(), Ok(Some(Event::Dropped(_)))));
    assert_eq!(
        f.next_event(),
        Ok(Some(Event::Record(b"<presence/>\n".to_vec())))
    );
}

#[test]
fn past_the_skip_bound_is_a_stream_error() {
    let mut f = Framer::new(Mode::Stream, Limits::FROM_SERVER);
    f.feed(HDR.as_bytes());
    assert!(matches!(f.next_event(), Ok(Some(Event::Header(_)))));
    f.feed(b"<message><body>");
    let chunk = vec![b'q'; 1 << 20];
    let e = loop {
        f.feed(&chunk);
        match f.next_event() {
            Ok(None) => {}
            Ok(Some(e)) => panic!("{e:?}"),
            Err(e) => break e,
        }
    };
    assert_eq!(e.condition, Condition::PolicyViolation);
    assert_eq!(e.detail, format!("element exceeds {} bytes", 16 << 20));
    // Deep and unterminated: the same bound.
    let deep = b"<a>".repeat(6 << 20);
    let (_, err) = from_server(&deep, 65536);
    assert_eq!(err.map(|e| e.condition), Some(Condition::PolicyViolation));
}

/// The skipper refuses what the validating pass refuses (other than
/// namespace prefixes), wherever the reads cut the element.
#[test]
fn malformed_skipped_elements_are_still_stream_errors() {
    let deep = |inner: &str| {
        format!(
            "<message>{}{inner}{}</message>",
            "<a>".repeat(65),
            "</a>".repeat(65)
        )
    };
    let big = |inner: &str| {
        format!(
            "<message><body>{}</body>{inner}</message>",
            "b".repeat(1700 * 1024)
        )
    };
    let cases: Vec<(&str, Condition)> = vec![
        ("<!-- c -->", Condition::RestrictedXml),
        ("<?pi x?>", Condition::RestrictedXml),
        ("<!DOCTYPE x>", Condition::RestrictedXml),
        ("&nbsp;", Condition::RestrictedXml),
        ("&#0;", Condition::NotWellFormed),
        ("a & b", Condition::NotWellFormed),
        ("a]]>b", Condition::NotWellFormed),
        ("\u{1}", Condition::NotWellFormed),
        ("<x>\u{FFFE}</x>", Condition::NotWellFormed),
        ("<b></c>", Condition::NotWellFormed),
        ("<1b/>", Condition::NotWellFormed),
        ("<b a='1' a='2'/>", Condition::NotWellFormed),
        ("<b a='1'c='2'/>", Condition::NotWellFormed),
        ("<b a=1/>", Condition::NotWellFormed),
        ("<b a='<'/>", Condition::NotWellFormed),
        ("<a:b:c/>", Condition::NotWellFormed),
        ("<stream:stream>", Condition::BadFormat),
    ];
    for (inner, want) in cases {
        for el in [deep(inner), big(inner)] {
            for step in [el.len(), 65536, 4093] {
                let (_, err) = from_server(el.as_bytes(), step);
                assert_eq!(
                    err.as_ref().map(|e| e.condition),
                    Some(want),
                    "{inner:?} in {step}-byte reads: {err:?}"
                );
            }
        }
    }
    // Invalid UTF-8, split over reads or not.
    for bad in [
        &b"\xc0\xaf"[..],
        b"\xed\xa0\x80",
        b"\xf4\x90\x80\x80",
        b"\xe2\x82<",
    ] {
        let mut el = deep("").into_bytes();
        let at = el.len() - 20;
        el.splice(at..at, bad.iter().copied());
        for step in [el.len(), 1, 2, 3] {
            let (_, err) = from_server(&el, step);
            assert_eq!(err.map(|e| e.condition), Some(Condition::NotWellFormed));
        }
    }
}

#[test]
fn well_formed_oddities_in_a_skipped_element() {
    let inner = "<x a=\"'>\" b='&lt;&#x1F600;&apos;'>é😀]]&gt;<![CDATA[ ]] > ]]]>\
        &#65;&amp;</x><y\n/><z\t></z   >\r\n";
    let el = format!(
        "<message type='headline'>{}{inner}{}</message>",
        "<a>".repeat(65),
        "</a>".repeat(65)
    );
    let mut body = el.clone().into_bytes();
    body.extend_from_slice(NEXT);
    for step in [body.len(), 1, 2, 5, 64] {
        let (evs, err) = from_server(&body, step);
        assert_eq!(err, None, "{step}-byte reads");
        let d = dropped(&evs[0]);
        assert_eq!((d.from.as_deref(), d.id.as_deref()), (None, None));
        assert_eq!(d.kind.as_deref(), Some("headline"));
        assert_eq!(evs[1], Event::Record([NEXT, b"\n"].concat()));
    }
}

#[test]
fn over_the_line_rule_is_dropped_where_limits_skip() {
    let limits = Limits {
        max_record: 200,
        max_line: 150,
        max_skip: 10_000,
        ..Limits::DEFAULT
    };
    let grows = format!("<m><![CDATA[{}]]></m><n/>", "\n".repeat(20));
    let (evs, err) = run(Mode::Fragments, limits, &[grows.as_bytes()]);
    assert_eq!(err, None);
    assert!(matches!(&evs[..], [Event::Dropped(_), Event::Record(r)] if r == b"<n/>\n"));
    // Without max_skip it is the stream error it always was.
    let fatal = Limits {
        max_skip: 0,
        ..limits
    };
    let (_, err) = run(Mode::Fragments, fatal, &[grows.as_bytes()]);
    assert_eq!(err.map(|e| e.condition), Some(Condition::PolicyViolation));
}

#[test]
fn before_auth_and_by_default_limits_stay_fatal() {
    for l in [Limits::PRE_AUTH, Limits::DEFAULT] {
        assert_eq!(l.max_skip, 0);
        let deep = format!("{HDR}<m>{}</m>", "<a>".repeat(70));
        let (_, err) = run(Mode::Stream, l, &[deep.as_bytes()]);
        assert_eq!(err.map(|e| e.condition), Some(Condition::PolicyViolation));
    }
}

#[test]
fn set_limits_after_auth() {
    let mut f = Framer::new(Mode::Fragments, Limits::PRE_AUTH);
    f.set_limits(Limits::DEFAULT);
    let big = format!("<m>{}</m>", "z".repeat(20000));
    f.feed(big.as_bytes());
    assert!(matches!(f.next_event(), Ok(Some(Event::Record(_)))));
}

#[test]
fn reset_restarts_stream() {
    let mut f = Framer::new(Mode::Stream, Limits::DEFAULT);
    f.feed(HDR.as_bytes());
    f.feed(b"<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/><partial");
    assert!(matches!(f.next_event(), Ok(Some(Event::Header(_)))));
    assert!(matches!(f.next_event(), Ok(Some(Event::Record(_)))));
    assert_eq!(f.next_event(), Ok(None));
    assert!(f.buffered() > 0);
    f.reset();
    assert_eq!(f.buffered(), 0);
    f.feed(HDR.as_bytes());
    assert!(matches!(f.next_event(), Ok(Some(Event::Header(_)))));
    // An error sticks until reset.
    f.feed(b"<!---->");
    let e = f.next_event().unwrap_err();
    f.feed(b"<m/>");
    assert_eq!(f.next_event(), Err(e));
    f.reset();
    f.feed(HDR.as_bytes());
    f.feed(b"<m/>");
    assert!(matches!(f.next_event(), Ok(Some(Event::Header(_)))));
    assert_eq!(f.next_event(), Ok(Some(Event::Record(b"<m/>\n".to_vec()))));
}

#[test]
fn fragments_and_canonical_record() {
    assert_eq!(
        canonical_record(
            b"  <message to='a@b'><body>x\ny</body></message>\r\n",
            Limits::DEFAULT
        ),
        Ok(b"<message to='a@b'><body>x&#10;y</body></message>\n".to_vec())
    );
    assert_eq!(frag_cond("<a/><b/>"), Condition::NotWellFormed);
    assert_eq!(frag_cond("<a/><b"), Condition::NotWellFormed);
    assert_eq!(frag_cond("<a>"), Condition::NotWellFormed);
    assert_eq!(frag_cond("<m a='1'"), Condition::NotWellFormed);
    assert_eq!(frag_cond(""), Condition::NotWellFormed);
    assert_eq!(frag_cond("<a/>x"), Condition::NotWellFormed);
    let (evs, err) = run(Mode::Fragments, Limits::DEFAULT, &[b"<a/>\n<b>x</b>\n"]);
    assert_eq!(err, None);
    assert_eq!(
        evs,
        [
            Event::Record(b"<a/>\n".to_vec()),
            Event::Record(b"<b>x</b>\n".to_vec())
        ]
    );
}

/// A realistic stream: chat, caps presences, a roster, features, CDATA,
/// quotes with `>` inside, whitespace keepalives, CRLF.
fn sample() -> Vec<u8> {
    let mut s = String::from(HDR);
    s.push_str(
        "<stream:features><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></stream:features>\n",
    );
    for i in 0..20 {
        s.push_str(&format!(
            "<message from='a@b/r{i}' to='c@d' type='chat' id='m{i}'>\r\n <body>hi &amp; \"bye\" > {i}\nline2</body>\
             <active xmlns='http://jabber.org/protocol/chatstates'/></message> \n\t",
        ));
        s.push_str(&format!(
            "<presence from=\"x@y/{i}\"><c xmlns='http://jabber.org/protocol/caps' hash='sha-1' \
             node='https://a.org?x=>' ver='QgayPKawpkPSDYmwT/WM94uAlu0='/><status><![CDATA[<ok>\r\n]]]]></status></presence>",
        ));
    }
    s.push_str("<iq type='result' id='r'><query xmlns='jabber:iq:roster'>");
    for i in 0..50 {
        s.push_str(&format!(
            "<item jid='u{i}@ex.org' name='Ü{i}' subscription='both'><group>G</group></item>"
        ));
    }
    s.push_str("</query></iq>  ");
    s.push_str("<stream:error><conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error></stream:stream>");
    s.into_bytes()
}

fn split_run(input: &[u8], cuts: &[usize]) -> (Vec<Event>, Option<FrameError>) {
    let mut chunks = Vec::new();
    let mut last = 0;
    for &c in cuts {
        chunks.push(&input[last..c]);
        last = c;
    }
    chunks.push(&input[last..]);
    run(Mode::Stream, Limits::DEFAULT, &chunks)
}

#[test]
fn chunking_independent() {
    let input = sample();
    let whole = run(Mode::Stream, Limits::DEFAULT, &[&input]);
    assert_eq!(whole.1, None);
    assert_eq!(whole.0.len(), 1 + 1 + 40 + 1 + 1 + 1);
    assert!(matches!(whole.0.last(), Some(Event::End)));
    for e in &whole.0 {
        if let Event::Record(r) | Event::StreamError(r) = e {
            assert_eq!(memchr::memchr(b'\n', r), Some(r.len() - 1));
            assert!(!r.contains(&b'\r'));
            // Records are self-contained and canonical: a fixed point.
            assert_eq!(canonical_record(r, Limits::DEFAULT).as_ref(), Ok(r));
        }
    }
    let bytes: Vec<&[u8]> = input.chunks(1).collect();
    assert_eq!(run(Mode::Stream, Limits::DEFAULT, &bytes), whole);
    // Deterministic LCG for pseudo-random cut points.
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    for round in 0..20 {
        let mut cuts = Vec::new();
        let mut p = 0;
        loop {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            p += 1 + (x >> 33) as usize % (if round % 2 == 0 { 7 } else { 300 });
            if p >= input.len() {
                break;
            }
            cuts.push(p);
        }
        assert_eq!(split_run(&input, &cuts), whole, "round {round}");
    }
    // Errors are chunking-independent too.
    let mut bad = input.clone();
    let at = bad.len() / 2;
    bad.splice(at..at, b"<!--x-->".iter().copied());
    let whole_bad = run(Mode::Stream, Limits::DEFAULT, &[&bad]);
    assert!(whole_bad.1.is_some());
    let bytes: Vec<&[u8]> = bad.chunks(1).collect();
    assert_eq!(run(Mode::Stream, Limits::DEFAULT, &bytes), whole_bad);
}

/// Found by fuzzing (fuzz/framer_chunks): a markup declaration that
/// starts just under the record limit was refused as restricted XML
/// when fed a byte at a time, but as over the limit when the bytes
/// after `<!` had already arrived.
#[test]
fn markup_declaration_at_the_limit_is_chunking_independent() {
    let tiny = Limits::new(64, 2, 2);
    let mut input = b"<m>".to_vec();
    input.resize(58, b'v');
    input.extend_from_slice(b"<!v[vvvvvvvvvvvv></m>\n");
    let whole = run(Mode::Fragments, tiny, &[&input]);
    let bytes: Vec<&[u8]> = input.chunks(1).collect();
    assert_eq!(run(Mode::Fragments, tiny, &bytes), whole);
    assert_eq!(whole.1.map(|e| e.condition), Some(Condition::RestrictedXml));
}

#[test]
fn linear_in_one_byte_feeds() {
    // One 4 MiB record fed a byte at a time: quadratic rescanning would
    // take minutes here.
    let limits = Limits::new(8 << 20, 64, 64);
    let mut f = Framer::new(Mode::Fragments, limits);
    let mut input = b"<message a='x'><body>".to_vec();
    input.resize(4 << 20, b'a');
    input.extend_from_slice(b"</body></message>");
    let mut got = 0;
    for b in input.chunks(1) {
        f.feed(b);
        if let Ok(Some(_)) = f.next_event() {
            got += 1;
        }
    }
    assert_eq!(got, 1);
    // Many small records, also one byte at a time: the buffer stays small.
    let mut f = Framer::new(Mode::Fragments, Limits::DEFAULT);
    let rec = b"<presence from='a@b/c'><show>away</show></presence>\n";
    let mut max_buf = 0;
    for _ in 0..20_000 {
        for b in rec.chunks(1) {
            f.feed(b);
            while let Ok(Some(_)) = f.next_event() {}
            max_buf = max_buf.max(f.buf.len());
        }
    }
    assert!(max_buf < 2 * rec.len(), "{max_buf}");
}

/// Records and mistakes where the fast path, its resumption at a mark
/// and the scanner path meet: every split point must give what the
/// whole input and one byte a read give.
fn tricky() -> Vec<&'static str> {
    vec![
        "<m>a\r\nb</m>",
        "<m a='x\r\ny'\r\n b='\t'>t\r</m>",
        "<m><![CDATA[a\r\nb]]><x/><![CDATA[]]]]></m>",
        "<m><a><b/><c>x&amp;y&#x1F600;</c></a></m>",
        "<stream:features><x xmlns:p='u'><p:y p:a='1' stream:b='2'/></x></stream:features>",
        "<stream:error><bad-format xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>",
        "<é a='ü'><ü:é xmlns:ü='u'>ö</ü:é></é>",
        "<m><a></a ><b/></m\n>",
        "<m><a>x</b></m>",
        "<m><a><b/></a><c d='1' d='2'/></m>",
        "<m><a/><p:b/></m>",
        "<m><a/><!--x--></m>",
        "<m><a/>&#0;</m>",
        "<m><a/>\u{1}</m>",
        "<m><a/><b 1='x'/></m>",
        "<m><a/>]]></m>",
        "<m><a/><b a='<'/></m>",
        "<m><a/><stream:stream></m>",
        "<m><a/><?pi?></m>",
        "<m><a/><b>",
    ]
}

#[test]
fn every_split_point() {
    let mut input = HDR.as_bytes().to_vec();
    for (k, r) in tricky().iter().enumerate() {
        let mut one = input.clone();
        one.extend_from_slice(r.as_bytes());
        one.extend_from_slice(b"<tail/>");
        let whole = run(Mode::Stream, Limits::DEFAULT, &[&one]);
        let bytes: Vec<&[u8]> = one.chunks(1).collect();
        assert_eq!(run(Mode::Stream, Limits::DEFAULT, &bytes), whole, "{r}");
        for a in HDR.len()..one.len() {
            let got = run(Mode::Stream, Limits::DEFAULT, &[&one[..a], &one[a..]]);
            assert_eq!(got, whole, "{r} split at {a}");
            let b = a + (one.len() - a) * (k + 1) / (tricky().len() + 1);
            let got = run(
                Mode::Stream,
                Limits::DEFAULT,
                &[&one[..a], &one[a..b], &one[b..]],
            );
            assert_eq!(got, whole, "{r} split at {a}, {b}");
        }
        if whole.1.is_none() {
            input.extend_from_slice(r.as_bytes());
        }
    }
    // All the valid ones in one stream, cut at every point.
    let whole = run(Mode::Stream, Limits::DEFAULT, &[&input]);
    assert_eq!(whole.1, None);
    for a in HDR.len()..input.len() {
        assert_eq!(
            run(Mode::Stream, Limits::DEFAULT, &[&input[..a], &input[a..]]),
            whole,
            "split at {a}"
        );
    }
}

#[test]
fn end_tag_names() {
    // The end tag is compared with the open element's name without
    // reading it as a name first; a longer name still is another name.
    for (line, detail) in [
        ("<a></ab>", "mismatched end tag"),
        ("<a></a:b>", "mismatched end tag"),
        ("<a></a-1>", "mismatched end tag"),
        ("<a></a.>", "mismatched end tag"),
        ("<a></aé>", "mismatched end tag"),
        ("<a></a\u{300}>", "mismatched end tag"),
        ("<ab></a>", "mismatched end tag"),
        ("<a></a/>", "expected '>' in end tag"),
        ("<a></a x>", "expected '>' in end tag"),
        ("<a></1>", "invalid name"),
        ("<a></>", "invalid name"),
        ("<a></a:>", "invalid qualified name"),
    ] {
        let e = canonical_record(line.as_bytes(), Limits::DEFAULT);
        assert_eq!(e.map_err(|e| e.detail), Err(detail.to_string()), "{line}");
    }
    for line in [
        "<a></a >",
        "<a></a\r\n>",
        "<aé></aé>",
        "<p:a xmlns:p='u'></p:a>",
    ] {
        assert!(
            canonical_record(line.as_bytes(), Limits::DEFAULT).is_ok(),
            "{line}"
        );
    }
}

#[test]
fn header_prefix_with_a_split() {
    // The declaration is added whether the record arrives whole or in
    // pieces (the pass resumes at a mark past the top-level start tag).
    let r = "<x><y stream:a='1'/><z/></x>";
    let want = "<x xmlns:stream='http://etherx.jabber.org/streams'><y stream:a='1'/><z/></x>\n";
    let input = format!("{HDR}{r}");
    for a in HDR.len()..input.len() {
        let (evs, err) = split_run(input.as_bytes(), &[a]);
        assert_eq!(err, None);
        assert_eq!(
            evs[1],
            Event::Record(want.as_bytes().to_vec()),
            "split at {a}"
        );
    }
}

#[test]
fn pass_stays_linear_after_a_mark() {
    // The first read holds a mark (after `<body>`), then the long text
    // comes a byte at a time: going on from the mark on every byte
    // would redo the whole text each time.
    let limits = Limits::new(1 << 20, 64, 64);
    let mut input = b"<message a='x'><body>".to_vec();
    input.resize(20_000, b'a');
    input.extend_from_slice(b"</body></message>");
    let mut f = Framer::new(Mode::Fragments, limits);
    f.feed(&input[..100]);
    assert_eq!(f.next_event(), Ok(None));
    assert!(f.pending.is_some());
    let mut got = Vec::new();
    for b in input[100..].chunks(1) {
        f.feed(b);
        while let Ok(Some(e)) = f.next_event() {
            got.push(e);
        }
    }
    assert_eq!(got.len(), 1);
    assert_eq!(got[0], Event::Record([input.as_slice(), b"\n"].concat()));
    assert!(f.pass_bytes <= 4 * input.len(), "{}", f.pass_bytes);
    // A whole record is passed over once.
    let mut f = Framer::new(Mode::Fragments, limits);
    f.feed(&input);
    assert!(matches!(f.next_event(), Ok(Some(Event::Record(_)))));
    assert_eq!(f.pass_bytes, input.len());
}

#[test]
fn limits_changed_mid_element() {
    // The kept pass was made with other limits: a fresh one decides.
    let mut f = Framer::new(Mode::Fragments, Limits::DEFAULT);
    let attrs: String = (0..40).map(|i| format!(" a{i}='1'")).collect();
    let rec = format!("<m><x{attrs}/><y/></m>");
    let cut = rec.find("<y/>").unwrap_or(0);
    f.feed(&rec.as_bytes()[..cut]);
    assert_eq!(f.next_event(), Ok(None));
    assert!(f.pending.is_some());
    f.set_limits(Limits::PRE_AUTH);
    f.feed(&rec.as_bytes()[cut..]);
    assert_eq!(
        f.next_event().map_err(|e| e.condition),
        Err(Condition::PolicyViolation)
    );
}

#[test]
fn no_panic_on_garbage() {
    let input = sample();
    let mut x: u64 = 7;
    for _ in 0..500 {
        let mut v = input.clone();
        for _ in 0..5 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let i = (x >> 33) as usize % v.len();
            const MARKUP: &[u8] = b"<>/'\"&!?[]-:= \n\r\x00\xEF";
            v[i] = if x & (1 << 40) == 0 {
                MARKUP[(x >> 20) as usize % MARKUP.len()]
            } else {
                (x >> 13) as u8
            };
        }
        // Errors, too, must not depend on chunking.
        let whole = run(Mode::Stream, Limits::DEFAULT, &[&v]);
        let cuts: Vec<usize> = (1..v.len())
            .filter(|c| c.wrapping_mul(7919).wrapping_add(x as usize) % 13 == 3)
            .collect();
        assert_eq!(split_run(&v, &cuts), whole);
        let small = Limits::new(700, 3, 4);
        let chunks: Vec<&[u8]> = v.chunks(5).collect();
        assert_eq!(
            run(Mode::Stream, small, &chunks),
            run(Mode::Stream, small, &[&v])
        );
        let _ = canonical_record(&v[200..600], Limits::DEFAULT);
        let _ = crate::xml::Element::parse(&v[200..600]);
    }
    for junk in [
        &b"<"[..],
        b"<?",
        b"<?>",
        b"</",
        b"<!",
        b"<a/",
        b"<![CDATA[]]>",
        b"\xff\xfe",
    ] {
        let _ = run(Mode::Stream, Limits::DEFAULT, &[junk]);
        let _ = run(Mode::Fragments, Limits::DEFAULT, &[junk]);
        let _ = canonical_record(junk, Limits::DEFAULT);
    }
}

/// An element of at most `max_record` bytes that is all `unit`s inside
/// CDATA (`cdata`) or character data: the worst growth there is.
fn all_breaks(limits: Limits, unit: &str, cdata: bool) -> String {
    let (open, close) = if cdata {
        ("<m><![CDATA[", "]]></m>")
    } else {
        ("<m>", "</m>")
    };
    let n = (limits.max_record - open.len() - close.len()) / unit.len();
    format!("{open}{}{close}", unit.repeat(n))
}

#[test]
fn line_rule_holds_for_the_worst_records() {
    for limits in [Limits::PRE_AUTH, Limits::DEFAULT] {
        for (unit, cdata) in [
            ("\n", true),
            ("\r", true),
            ("\r\n", true),
            ("x\n", true),
            ("\n", false),
        ] {
            let el = all_breaks(limits, unit, cdata);
            assert!(el.len() <= limits.max_record);
            let (evs, err) = run(Mode::Fragments, limits, &[el.as_bytes()]);
            assert_eq!(err, None, "{unit:?} {cdata}");
            let Some(Event::Record(r)) = evs.first() else {
                panic!("no record for {unit:?} {cdata}");
            };
            let line = &r[..r.len() - 1];
            assert!(line.len() <= limits.max_line(), "{unit:?} {cdata}");
            // A pipe's reader takes it whole, and it is a record there.
            let mut lr = crate::io::LineReader::new(limits.max_line());
            lr.push(r);
            assert_eq!(lr.next_line(), Some(line));
            assert_eq!(canonical_record(r, limits).as_ref(), Ok(r));
            // Toward a server it is as long as what was sent.
            let sent = el.replace("\r\n", "\n").replace('\r', "\n") + "\n";
            assert_eq!(wire_form(r.clone()), sent.into_bytes());
        }
        // The rule is not slack: LFs in CDATA come close to it.
        let el = all_breaks(limits, "\n", true);
        let r = canonical_record(el.as_bytes(), limits).expect("record");
        assert!(r.len() > 16 * limits.max_record, "{}", r.len());
    }
    assert_eq!(MAX_LINE, Limits::DEFAULT.max_line());
    assert_eq!(MAX_LINE, 17 * 256 * 1024 + 4096);
}

#[test]
fn declarations_that_do_not_fit_on_the_line_are_refused() {
    let limits = Limits::new(8192, 8, 8);
    let uri = "u".repeat(5000);
    let hdr = format!(
        "<stream:stream xmlns='jabber:client' \
         xmlns:stream='http://etherx.jabber.org/streams' xmlns:p='{uri}'>"
    );
    let (open, close) = ("<p:m><![CDATA[", "]]></p:m>");
    let el = format!(
        "{open}{}{close}",
        "\n".repeat(limits.max_record - open.len() - close.len())
    );
    let input = format!("{hdr}{el}");
    let (evs, err) = run(Mode::Stream, limits, &[input.as_bytes()]);
    assert_eq!(evs.len(), 1);
    assert_eq!(
        err.as_ref().map(|e| e.condition),
        Some(Condition::PolicyViolation),
        "{err:?}"
    );
    // However it is chunked.
    let chunks: Vec<&[u8]> = input.as_bytes().chunks(1000).collect();
    let (_, err) = run(Mode::Stream, limits, &chunks);
    assert_eq!(err.map(|e| e.condition), Some(Condition::PolicyViolation));
    // A short declaration fits.
    let input = format!("{}{el}", hdr.replace(&uri, "u"));
    let (evs, err) = run(Mode::Stream, limits, &[input.as_bytes()]);
    assert_eq!(err, None);
    assert!(matches!(&evs[1], Event::Record(r) if r.len() <= limits.max_line() + 1));
}

#[test]
fn canonical_record_takes_lines_as_long_as_the_rule() {
    let limits = Limits::PRE_AUTH;
    // Grown past max_record by canonicalisation, it is still a record.
    let grown = format!("<m>{}</m>", "&#10;".repeat(limits.max_record / 5 + 10));
    assert!(grown.len() > limits.max_record);
    assert_eq!(
        canonical_record(grown.as_bytes(), limits),
        Ok(format!("{grown}\n").into_bytes())
    );
    let longest = format!("<m>{}</m>", "z".repeat(limits.max_line() - 7));
    assert!(canonical_record(longest.as_bytes(), limits).is_ok());
    let over = format!("<m>{}</m>", "z".repeat(limits.max_line() - 6));
    assert_eq!(
        canonical_record(over.as_bytes(), limits).map_err(|e| e.condition),
        Err(Condition::PolicyViolation)
    );
    // Lone CRs on a raw line would make a record longer than the rule.
    let crs = format!("<m>{}</m>", "\r".repeat(limits.max_line() / 5));
    assert!(crs.len() <= limits.max_line());
    assert_eq!(
        canonical_record(crs.as_bytes(), limits).map_err(|e| e.condition),
        Err(Condition::PolicyViolation)
    );
}

#[test]
fn wire_form_undoes_only_the_line_break_escapes() {
    for (sent, wire) in [
        ("<m>a\nb</m>", "<m>a\nb</m>\n"),
        ("<m>a\r\nb\rc</m>", "<m>a\nb\nc</m>\n"),
        (
            "<m>\n  <body>x</body>\n</m>",
            "<m>\n  <body>x</body>\n</m>\n",
        ),
        (
            "<m><![CDATA[a\n\nb<c]]></m>",
            "<m><![CDATA[a\n\nb<c]]></m>\n",
        ),
        ("<m><![CDATA[\n]]></m>", "<m><![CDATA[\n]]></m>\n"),
        (
            "<m><![CDATA[x]]>&#10;y<![CDATA[z]]></m>",
            "<m><![CDATA[x]]>\ny<![CDATA[z]]></m>\n",
        ),
        // Attribute values keep theirs, a quoted `>` included.
        (
            "<m a='&#10;>&#10;' b=\"'&#10;\">&#10;</m>",
            "<m a='&#10;>&#10;' b=\"'&#10;\">\n</m>\n",
        ),
        ("<m a='x\ny'>z\n</m>", "<m a='x y'>z\n</m>\n"),
        ("<m>&amp;#10;&#10;&lt;</m>", "<m>&amp;#10;\n&lt;</m>\n"),
        (
            "<p:m xmlns:p='u'><p:b>\n</p:b></p:m>",
            "<p:m xmlns:p='u'><p:b>\n</p:b></p:m>\n",
        ),
    ] {
        let rec = canonical_record(sent.as_bytes(), Limits::DEFAULT).expect(sent);
        let w = wire_form(rec.clone());
        assert_eq!(String::from_utf8_lossy(&w), wire, "{sent:?}");
        // Framed again, it is the same record.
        assert_eq!(
            run(Mode::Fragments, Limits::DEFAULT, &[&w]),
            (vec![Event::Record(rec)], None),
            "{sent:?}"
        );
    }
    let plain = b"<m a='&#10;'>x</m>\n".to_vec();
    assert_eq!(wire_form(plain.clone()), plain);
}
