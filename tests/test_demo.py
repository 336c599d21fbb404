"""`make demo`, the README's first command, keeps working: it exits 0 and
shows the conversation on every client and in the out log."""

import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def test_demo_shows_a_mirrored_conversation():
    r = subprocess.run([sys.executable, "-m", "sjtest.demo"], cwd=HERE, capture_output=True,
                       text=True, timeout=120)
    out = r.stdout
    assert r.returncode == 0, out + r.stderr
    for who in ("laptop ", "phone  ", "desktop"):
        assert f"    {who} <- " in out and "Hi Alice, lunch at noon?" in out, out
    assert "bob got 'Noon works.' 1 time(s)" in out, out
    assert out.count("urn:xmpp:carbons:2") >= 3, out
    log = out.split("DIR/bob@localhost/out:", 1)[1]
    said = [ln.split("> ", 1)[1] for ln in log.splitlines() if "> " in ln and ln.startswith("    20")]
    assert said == ["Hi Alice, lunch at noon?", "Noon works.", "See you there.", "Great."], log
    assert "exit status 0" in out
