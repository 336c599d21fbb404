"""The harness itself works: Prosody runs on loopback, contacts talk."""

import socket


def test_prosody_listens_on_loopback(prosody):
    for port in (prosody.port, prosody.tls_port):
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass


def test_contacts_exchange_a_message(contact):
    bob = contact("bob")
    carol = contact("carol")
    carol.send_message("bob@localhost", "hello bob\nsecond line")
    m = bob.wait_message(lambda m: m["body"] == "hello bob\nsecond line")
    assert str(m["from"]) == carol.full_jid
    bob.send_message("carol@localhost", "hi carol")
    m = carol.wait_message(lambda m: m["body"] == "hi carol")
    assert str(m["from"]).startswith("bob@localhost/")


def test_raw_xml_from_a_contact(contact):
    bob = contact("bob")
    carol = contact("carol")
    bob.send_raw("<message to='carol@localhost' type='chat'><body>raw &amp; ok</body></message>")
    m = carol.wait_message(lambda m: m["body"] == "raw & ok")
    assert str(m["from"]) == bob.full_jid
