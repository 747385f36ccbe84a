"""Canned responses: rendering through Parley's compiled-template cache against compiling each time.

Prints renders per second of `inbox.canned.render_template` (checked and compiled once per distinct
text, then cached) and of the baseline, the same template compiled by a plain `SandboxedEnvironment`
on every render, measured in the same run; the ratio is what the cache buys.

    python3 bench/canned.py [--renders N]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

from jinja2.sandbox import SandboxedEnvironment

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from inbox.canned import render_template

TEMPLATE = (
    "Hi {{ contact.first_name | default('there') }}, thanks for writing to {{ conversation.inbox_name }}.\n"
    "{% if contact.company %}We have {{ contact.company }} on file. {% endif %}"
    "I'm {{ agent.first_name }}; reply here and I'll pick it up. Ref #{{ conversation.id }}."
)
VARIABLES = {
    "contact": {"name": "Ann Lee", "first_name": "Ann", "last_name": "Lee", "company": "Initech"},
    "agent": {"name": "Sam Agent", "first_name": "Sam", "email": "sam@example.com"},
    "conversation": {"id": "42", "inbox_name": "Support"},
}


def _rate(render: Callable[[], str], n: int) -> float:
    render()  # warm up
    started = time.perf_counter()
    for _ in range(n):
        render()
    return n / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--renders", type=int, default=20_000)
    args = parser.parse_args()
    baseline_env = SandboxedEnvironment()

    def parley() -> str:
        return render_template(TEMPLATE, VARIABLES)

    def baseline() -> str:
        return baseline_env.from_string(TEMPLATE).render(**VARIABLES)

    assert parley() == baseline()
    ours = _rate(parley, args.renders)
    theirs = _rate(baseline, max(args.renders // 20, 100))
    print(f"parley (checked once, compiled once): {ours:,.0f} renders/s")
    print(f"baseline (compiled per render):       {theirs:,.0f} renders/s")
    print(f"ratio: {ours / theirs:.1f}x")


if __name__ == "__main__":
    main()
