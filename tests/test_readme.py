"""The README's promises: its Python example runs, and CI runs the README's own test command."""

import re

from conftest import REPO

README = (REPO / "README.md").read_text()


def test_python_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    assert blocks, "the README has no Python example"
    scope: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), scope)  # noqa: S102 - our own README
    assert scope["logits"].shape == (8, 10) and scope["loss"].requires_grad
    assert {"cls_loss", "gate_lorot", "ssl_channel"} <= set(scope["stats"])


def test_two_setup_commands_and_ci_runs_the_second():
    block = README.split("## Set up and run", 1)[1].split("```", 2)[1]
    commands = [line for line in block.strip().splitlines() if line.strip()]
    assert len(commands) == 2
    assert commands[0].startswith("bash install.sh") and "gssl train --preset quickstart" in commands[0]
    assert commands[1] in (REPO / ".ci" / "run").read_text()
