"""Tests of vfio-user-conformance itself: against deliberately broken servers
(broken_server.py) it must report the expected failures and still finish,
and its JUnit report must be XML that lists every check with its class."""
import os
import re
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
BROKEN = os.path.join(HERE, "broken_server.py")
SUMMARY = re.compile(r"^(\d+) passed, (\d+) failed, (\d+) skipped$")


def bin_path(name):
    env = {"vfio-user-conformance": "CONFORMANCE", "umdev": "UMDEV"}[name]
    if os.environ.get(env):
        return os.environ[env]
    out = subprocess.run(["swift", "build", "--show-bin-path"], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout.strip()
    return os.path.join(out, name)


SUITE = bin_path("vfio-user-conformance")


def run_suite(*args, timeout=600):
    p = subprocess.run([SUITE, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout, p.stderr


def results(stdout):
    """check name -> (PASS|FAIL|SKIP, the lines under it)."""
    out, current = {}, None
    for line in stdout.splitlines():
        m = re.match(r"^(PASS|FAIL|SKIP)\s+(spec|qemu|optional)\s+\S+\s+([a-z0-9_]+)", line)
        if m:
            current = m.group(3)
            out[current] = (m.group(1), [])
        elif line.startswith("      ") and current:
            out[current][1].append(line.strip())
    return out


def summary(stdout):
    last = stdout.strip().splitlines()[-1]
    m = SUMMARY.match(last)
    assert m, f"the last line is not a summary: {last!r}"
    return tuple(int(x) for x in m.groups())


def check_count():
    code, out, _ = run_suite("--list")
    assert code == 0
    m = re.search(r"^(\d+) checks: ", out, re.M)
    return int(m.group(1))


@pytest.fixture
def sock():
    d = tempfile.mkdtemp(prefix="conformance-selftest-")
    yield os.path.join(d, "server.sock")
    subprocess.run(["rm", "-rf", d])


def test_server_that_exits_on_a_bad_version_is_restarted_and_blamed(sock):
    code, out, err = run_suite("--server-cmd", f"{sys.executable} {BROKEN} exit-on-bad-version {{socket}}",
                               "--socket", sock, "--timeout", "2")
    r = results(out)
    assert code == 1
    for name in ("version_short_payload", "version_not_nul_terminated", "version_malformed_json"):
        verdict, lines = r[name]
        assert verdict == "FAIL", name
        assert "server exited after this check (status 3)" in lines, (name, lines)
    # A check after it ran against the restarted server and passed.
    assert r["version_without_json"][0] == "PASS"
    assert r["device_info_short"][0] == "PASS"
    # Every check got an outcome, and the run says how often the server was started.
    passed, failed, skipped = summary(out)
    assert passed + failed + skipped == check_count() == len(r)
    assert re.search(r"^server started \d+ times$", out, re.M)


def test_without_server_cmd_a_dead_server_ends_the_run_with_one_line(sock):
    server = subprocess.Popen([sys.executable, BROKEN, "exit-on-bad-version", sock], stdout=subprocess.PIPE,
                              env=dict(os.environ, BROKEN_SERVER_SAYS_READY="1"), text=True)
    try:
        assert server.stdout.readline() == "listening\n"
        code, out, err = run_suite("--socket", sock, "--timeout", "2")
    finally:
        server.kill()
        server.wait()
    assert code == 1
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1, err
    assert "no longer accepts connections" in lines[0] and "--server-cmd" in lines[0]
    assert "run ended early" in out
    passed, failed, skipped = summary(out)
    assert passed + failed + skipped < check_count()


def test_server_that_never_answers_fails_each_check_on_time(sock):
    start = time.time()
    code, out, err = run_suite("--server-cmd", f"{sys.executable} {BROKEN} silent {{socket}}", "--socket", sock,
                               "--timeout", "0.3", "--only", "version_*", "--only", "device_info_*")
    r = results(out)
    assert code == 1
    failed = [n for n, (v, _) in r.items() if v == "FAIL"]
    others = [n for n, (v, _) in r.items() if v != "FAIL"]
    # Every check that ran failed, saying it got no reply; the rest need --strict.
    assert len(failed) >= 15 and all(r[n][0] == "SKIP" and "--strict" in out.split(n, 1)[1].splitlines()[0] for n in others)
    assert all(any("no message from the server within 300 ms" in l or "no outcome within" in l for l in r[n][1]) for n in failed), r
    # No check waited longer than its timeout allows (two replies' worth and a second).
    assert time.time() - start < len(r) * 1.7 + 10
    assert summary(out) == (0, len(failed), len(others))


def test_server_that_answers_with_wrong_ids_fails_and_the_run_completes(sock):
    code, out, err = run_suite("--server-cmd", f"{sys.executable} {BROKEN} wrong-id {{socket}}", "--socket", sock,
                               "--timeout", "0.5", "--skip", "set_irqs_*", "--skip", "dma_*")
    r = results(out)
    assert code == 1
    for name in ("version_without_json", "device_info_valid", "region_info_every_index"):
        assert r[name][0] == "FAIL", name
        assert any("the reply says command" in l and "echoed in the command's reply" in l for l in r[name][1]), r[name]
    passed, failed, skipped = summary(out)
    assert passed + failed + skipped == len(r)
    assert failed > 0


def test_capabilities_beyond_the_proposal_fail_the_subset_checks(sock):
    code, out, err = run_suite("--server-cmd", f"{sys.executable} {BROKEN} all-capabilities {{socket}}", "--socket", sock,
                               "--only", "version_reply_subset_*", "--only", "version_capabilities_limited")
    r = results(out)
    assert code == 1
    # QEMU proposes every key this server names (migration included), so that check passes;
    # each smaller proposal gets keys it never named back.
    assert r["version_reply_subset_of_qemu"][0] == "PASS"
    for name in ("version_reply_subset_minimal", "version_reply_subset_two_limits", "version_reply_subset_empty",
                 "version_reply_subset_no_json", "version_capabilities_limited"):
        assert r[name][0] == "FAIL", name
    assert any("the reply names \"max_data_xfer_size\", which the client did not propose" in l
               for l in r["version_reply_subset_minimal"][1]), r["version_reply_subset_minimal"]
    # The same checks pass against a server that names nothing.
    code, out, err = run_suite("--server-cmd", f"{sys.executable} {BROKEN} plain {{socket}}", "--socket", sock,
                               "--only", "version_reply_subset_*")
    assert code == 0, out
    assert summary(out) == (5, 0, 0)


def test_junit_report_is_xml_and_lists_every_check_with_its_class(sock):
    junit = sock + ".xml"
    code, out, err = run_suite("--server-cmd", f"{sys.executable} {BROKEN} plain {{socket}}", "--socket", sock,
                               "--timeout", "1", "--junit", junit)
    root = ET.parse(junit).getroot()
    assert root.tag == "testsuites"
    cases = root.findall("./testsuite/testcase")
    assert len(cases) == check_count() == int(root.get("tests"))
    classes = {c.get("classname") for c in cases}
    assert classes <= {"spec", "qemu", "optional"} and "spec" in classes
    for c in cases:
        props = {p.get("name"): p.get("value") for p in c.findall("./properties/property")}
        assert props["class"] == c.get("classname")
        assert props["section"].startswith("§")
    failures = [c for c in cases if c.find("failure") is not None]
    skipped = [c for c in cases if c.find("skipped") is not None]
    passed, failed, skip = summary(out)
    assert (len(failures), len(skipped)) == (failed, skip)
    assert int(root.get("failures")) == failed and int(root.get("skipped")) == skip
    for suite in root.findall("./testsuite"):
        assert suite.get("name").endswith(tuple("." + n for n in ("spec", "qemu", "optional")))


def test_only_and_skip_select_checks():
    code, out, _ = run_suite("--list", "--only", "dma_map_*", "--skip", "dma_map_overlap")
    names = [l.split()[2] for l in out.splitlines() if l.startswith(("spec", "qemu", "optional"))]
    assert names and all(n.startswith("dma_map_") for n in names) and "dma_map_overlap" not in names


def test_usage_errors_are_clear():
    code, out, err = run_suite()
    assert code == 2 and "--socket PATH" in err and "--server-cmd" in err
    code, out, err = run_suite("--socket", "/nonexistent/socket")
    assert code == 2 and "cannot connect" in err
    code, out, err = run_suite("--server-cmd", "/bin/false")
    assert code == 2 and "exited" in err
