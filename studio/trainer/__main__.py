import sys

from .process_group import die_with_parent

die_with_parent()  # first: a trainer must not outlive the launcher of a supervised run

from .loop import main  # noqa: E402

sys.exit(main(program=True))
