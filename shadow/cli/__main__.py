"""``python -m shadow.cli``: the same as the ``shadow`` command."""

from shadow.cli import main

main(prog_name="shadow")
