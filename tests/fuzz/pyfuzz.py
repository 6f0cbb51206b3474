"""Coverage-guided fuzzing (atheris, libFuzzer) of one target of tests/fuzz/targets.py.

    python -m tests.fuzz.pyfuzz TARGET CORPUS_DIR ARTIFACT_DIR [libFuzzer flags...]
    python -m tests.fuzz.pyfuzz --list

The parser modules are instrumented for coverage as they are imported; the seeds of the target are
written into CORPUS_DIR (which keeps what earlier runs found) and an SDP or Phoenix dictionary is
passed where one exists. libFuzzer stops at the first crash, writes the input to ARTIFACT_DIR and
exits non-zero. .ci/pyfuzz.sh runs every target this way; replay a crash with
`python -m tests.fuzz.pyfuzz TARGET CORPUS_DIR ARTIFACT_DIR path/to/crash-file`.
"""

from __future__ import annotations

import hashlib
import sys
import tempfile
from pathlib import Path

import atheris

# Only the parsers: instrumenting every import (aiortc, pydantic ...) would slow each run and
# reward the fuzzer for coverage outside Voxa.
INSTRUMENTED = [
    "voxa.sfu.sdp",
    "voxa.sfu.negotiation",
    "voxa.sfu.rtp",
    "voxa.sfu.rtcp",
    "voxa.signaling.protocol",
    "tests.fuzz.targets",
]

with atheris.instrument_imports(include=INSTRUMENTED):
    from tests.fuzz import targets


def main(argv: list[str]) -> None:
    if len(argv) > 1 and argv[1] == "--list":
        print("\n".join(targets.TARGETS))
        return
    if len(argv) < 4 or argv[1] not in targets.TARGETS:
        sys.exit(f"usage: {argv[0]} TARGET CORPUS_DIR ARTIFACT_DIR [libFuzzer flags]; --list names them")
    name, corpus, artifacts, *flags = argv[1:]
    Path(corpus).mkdir(parents=True, exist_ok=True)
    Path(artifacts).mkdir(parents=True, exist_ok=True)
    for seed in targets.seeds(name):
        (Path(corpus) / f"seed-{hashlib.sha1(seed).hexdigest()}").write_bytes(seed)  # noqa: S324
    args = [argv[0], *flags, f"-artifact_prefix={artifacts.rstrip('/')}/"]
    words = targets.DICTIONARIES.get(targets.DICTIONARY_OF.get(name, ""))
    if words:
        dict_file = Path(tempfile.mkstemp(prefix=f"pyfuzz-{name}-", suffix=".dict")[1])
        dict_file.write_text("".join(_dict_line(w) for w in words))
        args.append(f"-dict={dict_file}")
    replay = [f for f in flags if not f.startswith("-")]
    if not replay:
        args.append(corpus)
    atheris.Setup(args, targets.TARGETS[name])
    atheris.Fuzz()


def _dict_line(word: str) -> str:
    escaped = "".join(
        c if 0x20 <= ord(c) < 0x7F and c not in '"\\' else "".join(f"\\x{b:02x}" for b in c.encode())
        for c in word
    )
    return f'"{escaped}"\n'


if __name__ == "__main__":
    main(sys.argv)
