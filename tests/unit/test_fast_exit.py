"""``dlforge`` as a program skips the interpreter's teardown, but nothing an exit would normally do is lost."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

# A command that registers an exit handler, writes more than a pipe's buffer to stdout and logs to a file, then
# returns 3: the exit code, the whole output, the handler's file and the log line must all survive the fast exit.
PROGRAM = textwrap.dedent(
    """
    import atexit, logging, sys
    from pathlib import Path
    from pipelines import cli

    folder = Path(sys.argv[1])


    class TornDown:  # the interpreter's teardown would delete this module global and so write the file
        def __del__(self):
            (folder / "torn_down").write_text("yes")


    kept = TornDown()

    def command(args):
        atexit.register(lambda: (folder / "handler_ran").write_text("yes"))
        handler = logging.FileHandler(folder / "job.log")
        logging.getLogger("job").addHandler(handler)
        logging.getLogger("job").warning("last line")
        print("x" * 200_000)
        return 3

    cli.COMMANDS["predict"] = (command, "test", {})  # predict: Lightning is not imported for it
    sys.argv = ["dlforge", "predict"]
    sys.exit(cli.main())
    """
)


def test_the_program_keeps_its_exit_code_output_exit_handlers_and_logs(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", PROGRAM, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 3, done.stderr
    assert done.stdout == "x" * 200_000 + "\n"
    assert (tmp_path / "handler_ran").read_text() == "yes"
    assert (tmp_path / "job.log").read_text() == "last line\n"
    assert not (tmp_path / "torn_down").exists()  # the teardown was skipped


def test_a_command_that_raises_ends_as_python_does(tmp_path: Path) -> None:
    program = PROGRAM.replace("return 3", "raise RuntimeError('boom')")
    done = subprocess.run([sys.executable, "-c", program, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "RuntimeError: boom" in done.stderr
    assert (tmp_path / "handler_ran").read_text() == "yes"
    assert (tmp_path / "torn_down").read_text() == "yes"
