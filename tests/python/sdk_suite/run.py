#!/usr/bin/env python3
"""Runs Microsoft's own azure-keyvault-keys 4.11.3 test files, unchanged and
live, against a Key Vault-compatible endpoint such as `keyseal
keyvault-emulator`.

Why it exists: the SDK's tests are the most thorough description of how the
real service answers its own client. This script downloads the SDK's sdist
from PyPI (pinned by SHA-256), puts its source and our devtools_testutils
stand-in on PYTHONPATH (so the tests use exactly that SDK version and nothing
is installed), runs pytest on the four client test files in live mode, and
prints a summary from pytest's junit XML.

    python3 run.py --vault-url URL --ca-cert PEM --token TOKEN
        [--sku premium|standard] [--attestation-url URL]
        [--known-failures FILE] [--write-known-failures FILE]
        [--cache-dir DIR] [-- extra pytest args]

Exit status: 0 when every test passed or was skipped for an accepted reason
(see SKIP_* below); with --known-failures, also when the only failures are
the listed ones, but then any listed test that passed is an error too, so the
list shrinks as the endpoint improves. Any other skip is an error.
"""

import argparse
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path
from urllib.parse import urlparse

HERE = Path(__file__).resolve().parent
SDK_VERSION = "4.11.3"
SDIST_NAME = f"azure_keyvault_keys-{SDK_VERSION}"
SDIST_URL = (
    "https://files.pythonhosted.org/packages/6e/d4/e0ba8e8d661fcb2f536e1ba572369053aa37e3bc5c0bdb9aaab6603248ab/"
    f"{SDIST_NAME}.tar.gz"
)
SDIST_SHA256 = "abe258a46937ab69b148d1832150192f6a300578451d69304a0c3be24b9881aa"
TEST_FILES = [
    "tests/test_key_client.py",
    "tests/test_keys_async.py",
    "tests/test_crypto_client.py",
    "tests/test_crypto_client_async.py",
]
# Modules the tests import besides the SDK (requirements.txt installs them).
REQUIRED_MODULES = ["pytest", "pytest_asyncio", "aiohttp", "azure.core", "cryptography", "isodate", "dateutil"]

# Without an attestation service, AZURE_KEYVAULT_ATTESTATION_URL gets this
# placeholder: the SDK's _get_attestation_uri() calls .rstrip() on it before
# its None check, so unset it would crash tests instead of skipping them. The
# tests that merely write it into a release policy run with it; the ones
# that would fetch a token from it are skipped (sdk_suite_plugin.py). The
# .invalid TLD never resolves, so nothing is ever sent there.
ATTESTATION_PLACEHOLDER = "https://attestation.invalid"

SKIP_HSM = "No HSM endpoint for live testing"  # the SDK's own skip when AZURE_MANAGEDHSM_URL is unset
SKIP_ATTESTATION = "needs an attestation service"  # sdk_suite_plugin.ATTESTATION_REASON


def parse_args(argv):
    """Our options, and the pytest arguments given after `--`."""
    extra = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vault-url", required=True, help="vault endpoint, e.g. https://127.0.0.1:8443")
    parser.add_argument("--ca-cert", required=True, help="PEM certificate the endpoint's TLS is trusted by")
    parser.add_argument("--token", required=True, help="bearer token the endpoint accepts")
    parser.add_argument("--sku", choices=["premium", "standard"], default="premium", help="KEYVAULT_SKU for the tests")
    parser.add_argument("--attestation-url", help="a real attestation service (default: none, those tests skip)")
    parser.add_argument("--known-failures", type=Path, help="file of test ids expected to fail")
    parser.add_argument("--write-known-failures", type=Path, help="write this run's failing ids to this file")
    parser.add_argument("--cache-dir", type=Path, default=Path("/tmp/keyseal-sdk-suite"))
    return parser.parse_args(argv), extra


def fetch_sdist(cache_dir):
    """The extracted sdist's directory, downloading and checking it first
    unless the cache already has it."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    source_dir = cache_dir / SDIST_NAME
    if (source_dir / "tests").is_dir():
        return source_dir
    archive = cache_dir / f"{SDIST_NAME}.tar.gz"
    if not archive.exists() or _sha256(archive) != SDIST_SHA256:
        print(f"downloading {SDIST_URL}", flush=True)
        partial = archive.with_suffix(".part")
        with urllib.request.urlopen(SDIST_URL, timeout=120) as response, open(partial, "wb") as out:
            shutil.copyfileobj(response, out)
        digest = _sha256(partial)
        if digest != SDIST_SHA256:
            partial.unlink()
            sys.exit(f"sdist SHA-256 is {digest}, expected {SDIST_SHA256}")
        partial.replace(archive)
    staging = Path(tempfile.mkdtemp(dir=cache_dir))
    with tarfile.open(archive) as tar:
        tar.extractall(staging, filter="data")
    (staging / SDIST_NAME).rename(source_dir)
    staging.rmdir()
    return source_dir


def _sha256(path):
    """Hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def suite_env(args, sdk_dir):
    """The environment of a live run, as the SDK's pipeline would set it for
    one Key Vault and no Managed HSM."""
    env = dict(os.environ)
    env.pop("AZURE_MANAGEDHSM_URL", None)  # Managed HSM cases skip themselves
    ca_cert = str(Path(args.ca_cert).resolve())
    host = urlparse(args.vault_url).hostname
    pythonpath = [str(sdk_dir), str(HERE)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    env.update(
        PYTHONPATH=os.pathsep.join(pythonpath),
        PYTHONDONTWRITEBYTECODE="1",  # no __pycache__ left in this repo
        AZURE_TEST_RUN_LIVE="true",
        AZURE_SKIP_LIVE_RECORDING="true",
        AZURE_KEYVAULT_URL=args.vault_url,
        KEYVAULT_SKU=args.sku,
        AZURE_KEYVAULT_ATTESTATION_URL=args.attestation_url or ATTESTATION_PLACEHOLDER,
        KEYSEAL_NO_ATTESTATION_SERVICE="0" if args.attestation_url else "1",
        KEYSEAL_VAULT_TOKEN=args.token,
        KEYSEAL_RUN_ID=os.urandom(8).hex(),  # fresh key names each run (devtools_testutils)
        # requests reads REQUESTS_CA_BUNDLE; ssl (so aiohttp) reads SSL_CERT_FILE
        REQUESTS_CA_BUNDLE=ca_cert,
        SSL_CERT_FILE=ca_cert,
        NO_PROXY=",".join(filter(None, [env.get("NO_PROXY"), host])),
        no_proxy=",".join(filter(None, [env.get("no_proxy"), host])),
    )
    return env


def check_environment(env, sdk_dir):
    """Stops unless the test dependencies are installed and
    `azure.keyvault.keys` resolves to the sdist's copy."""
    missing = [m for m in REQUIRED_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        sys.exit(f"missing {', '.join(missing)}: pip install -r {HERE / 'requirements.txt'}")
    probe = "import azure.keyvault.keys as k, azure.keyvault.keys._version as v; print(k.__file__); print(v.VERSION)"
    out = subprocess.run([sys.executable, "-c", probe], env=env, cwd=sdk_dir, capture_output=True, text=True)
    lines = out.stdout.split()
    expected = sdk_dir / "azure" / "keyvault" / "keys" / "__init__.py"
    if out.returncode != 0 or len(lines) != 2 or Path(lines[0]) != expected or lines[1] != SDK_VERSION:
        sys.exit(f"azure.keyvault.keys does not resolve to {expected} ({SDK_VERSION}):\n{out.stdout}{out.stderr}")


def run_pytest(env, sdk_dir, junit, extra):
    """Runs the four test files; returns pytest's exit code."""
    command = [
        sys.executable, "-m", "pytest",
        "-p", "devtools_testutils.pytest_plugin",
        "-p", "sdk_suite_plugin",
        "--rootdir", str(sdk_dir),
        "--junitxml", str(junit),
        "-o", "asyncio_default_fixture_loop_scope=function",
        "--tb=short", "-rfE",
        *TEST_FILES, *extra,
    ]  # fmt: skip
    return subprocess.run(command, env=env, cwd=sdk_dir).returncode


def read_junit(path, sdk_dir):
    """(test id, outcome, one-line detail, http_error) for each test case."""
    results = []
    for case in ET.parse(path).getroot().iter("testcase"):
        test_id = _test_id(case.get("classname", ""), case.get("name", ""), sdk_dir)
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        outcome, detail = "passed", ""
        for tag in ("failure", "error", "skipped"):
            element = case.find(tag)
            if element is not None:
                outcome = "skipped" if tag == "skipped" else "failed"
                message = element.get("message") or (element.text or "")
                detail = ("error: " if tag == "error" else "") + _one_line(message)
                break
        results.append((test_id, outcome, detail, props.get("http_error")))
    return results


def _test_id(classname, name, sdk_dir):
    """`tests/<file>.py::<Class>::<test[params]>` from junit's dotted
    classname, whose leading parts are the module's path."""
    parts = classname.split(".")
    for cut in range(len(parts), 0, -1):
        module = "/".join(parts[:cut]) + ".py"
        if (sdk_dir / module).exists():
            return "::".join([module, *parts[cut:], name])
    return f"{classname}::{name}"


def _one_line(text, limit=300):
    """First non-empty line of text, cut to `limit` characters."""
    line = next((l.strip() for l in text.splitlines() if l.strip()), "")
    return line if len(line) <= limit else line[: limit - 3] + "..."


def skip_category(reason, upstream_source):
    """Why a skip is acceptable, or None when it is not."""
    if reason == SKIP_HSM:
        return "Managed HSM: no AZURE_MANAGEDHSM_URL"
    if reason == SKIP_ATTESTATION:
        return "attestation: no attestation service"
    if reason and reason in upstream_source:
        return "upstream: skipped by the SDK's tests"
    return None


def read_known_failures(path):
    """Test ids listed in a known-failures file (`#` starts a comment)."""
    ids = set()
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            ids.add(line)
    return ids


def report(results, sdk_dir, known):
    """Prints the summary; returns True when the run is acceptable."""
    upstream_source = "\n".join(p.read_text() for p in (sdk_dir / "tests").rglob("*.py"))
    by_outcome = defaultdict(list)
    for result in results:
        by_outcome[result[1]].append(result)
    passed = {r[0] for r in by_outcome["passed"]}
    failed = {r[0] for r in by_outcome["failed"]}
    ok = True

    print(f"\n=== SDK suite: {len(passed)} passed, {len(failed)} failed, {len(by_outcome['skipped'])} skipped")
    if by_outcome["failed"]:
        print("\nfailures:")
        for test_id, _, detail, http_error in sorted(by_outcome["failed"]):
            mark = "" if known is None or test_id not in known else " [known]"
            print(f"  {test_id}{mark}\n      {(http_error + ': ') if http_error else ''}{detail}")

    skips = defaultdict(lambda: defaultdict(int))
    unexpected = []
    for test_id, _, reason, _ in by_outcome["skipped"]:
        category = skip_category(reason, upstream_source)
        if category is None:
            unexpected.append((test_id, reason))
        else:
            skips[category][reason] += 1
    if skips:
        print("\nskips:")
        for category in sorted(skips):
            print(f"  {category}: {sum(skips[category].values())}")
            for reason, count in sorted(skips[category].items()):
                print(f"      {count:3d}  {reason}")
    if unexpected:
        ok = False
        print("\nUNEXPECTED SKIPS (not upstream, Managed HSM or attestation):")
        for test_id, reason in sorted(unexpected):
            print(f"  {test_id}\n      {reason}")

    if known is None:
        ok = ok and not failed
    else:
        new = sorted(failed - known)
        fixed = sorted(known & passed)
        absent = sorted(known - passed - failed)
        if new:
            print("\nFAILURES NOT IN THE KNOWN-FAILURES LIST:\n  " + "\n  ".join(new))
        if fixed:
            print("\nLISTED AS KNOWN FAILURES BUT PASSED (remove them from the list):\n  " + "\n  ".join(fixed))
        if absent:
            print("\nnote: listed as known failures but neither passed nor failed:\n  " + "\n  ".join(absent))
        ok = ok and not new and not fixed
    return ok


def main(argv):
    """Fetches the SDK, runs its tests and reports; returns the exit status."""
    started = time.monotonic()
    args, extra = parse_args(argv)
    sdk_dir = fetch_sdist(args.cache_dir.resolve())
    env = suite_env(args, sdk_dir)
    check_environment(env, sdk_dir)
    known = read_known_failures(args.known_failures) if args.known_failures else None

    junit = args.cache_dir.resolve() / "junit.xml"
    junit.unlink(missing_ok=True)
    code = run_pytest(env, sdk_dir, junit, extra)
    if code not in (0, 1) or not junit.exists():
        print(f"pytest did not complete a run (exit status {code})", file=sys.stderr)
        return 1
    results = read_junit(junit, sdk_dir)
    if not results:
        print("pytest ran no tests", file=sys.stderr)
        return 1

    if args.write_known_failures:
        failing = sorted(r[0] for r in results if r[1] == "failed")
        header = f"# azure-keyvault-keys {SDK_VERSION} SDK tests failing against the endpoint; one id a line\n"
        args.write_known_failures.write_text(header + "".join(f"{i}\n" for i in failing))
        print(f"wrote {len(failing)} failing ids to {args.write_known_failures}")

    ok = report(results, sdk_dir, known)
    print(f"\nwall time {time.monotonic() - started:.0f} s; {'OK' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
