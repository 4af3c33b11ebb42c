"""Prints one closing line of test counts for tools/test.sh.

    test_summary.py TESTLOG.json... PYTEST.xml...

Counts Criterion test cases from meson's testlog.json files (each test binary's
"Synthesis: Tested: N | Passing: N | Failing: N | Crashing: N" line; a binary
that crashed before printing it counts as one failure; a test that is not
Criterion, as the fuzz replays, counts as one case, passed by its exit status; a binary that skipped
itself, exit 77 with "Skipped: N (reason)", counts N skipped) and pytest cases
from its JUnit XML. Exits 1 if anything failed or nothing ran.
"""
import json
import re
import sys
import xml.etree.ElementTree as ET

SYNTHESIS = re.compile(r"Tested: (\d+) \| Passing: (\d+) \| Failing: (\d+) \| Crashing: (\d+)")
SKIPPED = re.compile(r"Skipped: (\d+) \((.*)\)")


def criterion_counts(testlog_path):
    passed = failed = skipped = 0
    with open(testlog_path) as f:
        for line in f:
            entry = json.loads(line)
            output = entry.get("stdout", "") + entry.get("stderr", "")
            if entry.get("result") == "SKIP" and SKIPPED.search(output):
                n, reason = SKIPPED.search(output).groups()
                skipped += int(n)
                print(f"SKIPPED: {entry['name']}: {n} tests: {reason}")
                continue
            found = SYNTHESIS.findall(output)
            if not found:  # not Criterion (the fuzz replays): one test, by its exit status
                if entry.get("result") == "OK":
                    passed += 1
                else:
                    failed += 1
                    print(f"unit test binary {entry['name']} failed ({entry['result']})")
                continue
            _, ok, fail, crash = map(int, found[-1])
            passed += ok
            failed += fail + crash
    return passed, failed, skipped


def pytest_counts(junit_path):
    root = ET.parse(junit_path).getroot()
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    total = sum(int(s.get("tests", 0)) for s in suites)
    failed = sum(int(s.get("failures", 0)) + int(s.get("errors", 0)) for s in suites)
    skipped = sum(int(s.get("skipped", 0)) for s in suites)
    return total - failed - skipped, failed, skipped


def main():
    c_passed = c_failed = c_skipped = p_passed = p_failed = p_skipped = 0
    for path in sys.argv[1:]:
        if path.endswith(".json"):
            ok, bad, skipped = criterion_counts(path)
            c_passed, c_failed, c_skipped = c_passed + ok, c_failed + bad, c_skipped + skipped
        else:
            ok, bad, skipped = pytest_counts(path)
            p_passed, p_failed, p_skipped = p_passed + ok, p_failed + bad, p_skipped + skipped
    passed, failed = c_passed + p_passed, c_failed + p_failed
    print(f"unit: {c_passed} passed, {c_failed} failed, {c_skipped} skipped; python: {p_passed} "
          f"passed, {p_failed} failed, {p_skipped} skipped")
    print(f"{passed} passed, {failed} failed, {c_skipped + p_skipped} skipped")
    sys.exit(1 if failed or passed == 0 else 0)


if __name__ == "__main__":
    main()
