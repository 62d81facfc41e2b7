"""Copy the example plugin's files into the code blocks of docs/plugins.md (run after editing the example)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PATTERN = re.compile(r"(<!-- file: (?P<path>[^ ]+) -->\n```(?P<lang>\w*)\n)(?P<body>.*?)(```)", re.S)


def sync(text: str) -> str:
    return PATTERN.sub(lambda m: m.group(1) + (ROOT / m.group("path")).read_text() + m.group(5), text)


if __name__ == "__main__":
    guide = ROOT / "docs" / "plugins.md"
    guide.write_text(sync(guide.read_text()))
