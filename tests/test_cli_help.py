"""Every script's and every `python utils.py <command>`'s --help prints and exits 0 (a help text
with an unescaped % fails only when it is formatted)."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import block_main  # noqa: E402
import limit_main  # noqa: E402
import minority_l_main  # noqa: E402
import minority_n_main  # noqa: E402
import mixup_main  # noqa: E402
import opt_main  # noqa: E402
import replot  # noqa: E402

COMMANDS = ["prepare", "replot-figure", "collect", "mixup-projection", "mixup-grid", "mixup-loss",
            "mixup-accuracy", "mixup-compare", "mixup-ufm"]


@pytest.mark.parametrize("main,argv", [(m.main, ["--help"]) for m in (block_main, limit_main, minority_l_main,
                                                                        minority_n_main, mixup_main, opt_main)]
                         + [(replot.main, ["--help"])] + [(replot.main, [c, "--help"]) for c in COMMANDS])
def test_help(main, argv, capsys):
    with pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code == 0 and "usage:" in capsys.readouterr().out


@pytest.mark.slow
def test_opt_main_and_the_commands_import_no_torch():
    """opt_main.py and `python utils.py <command>` start without torch (about 1 s of import)."""
    import subprocess
    code = "import opt_main, replot, sys; print('torch' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stderr
