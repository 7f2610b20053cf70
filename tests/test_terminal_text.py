"""Names read from files and databases reach a terminal as text, never as commands (issue 19,
item 12): a tensor name in a .dcz, a run's name in the history or an error naming either may
hold ESC sequences that set the window title or clear the screen; every printer writes them out
through deepcompress.ui.printable."""
from __future__ import annotations

import torch

import dcz as container
from deepcompress.cli import main
from deepcompress.qualify.history import open_history
from deepcompress.ui import Ui, printable

from test_history import record

EVIL = "w\x1b]0;pwned\x07\x1b[2J\x9b31m\u202e[bold]x[/bold]"


def no_controls(text: str) -> bool:
    return not any(ord(c) < 0x20 and c != "\n" or 0x7f <= ord(c) <= 0x9f or c == "\u202e"
                   for c in text)


def test_printable_writes_every_control_out():
    assert printable(EVIL) == "w\\x1b]0;pwned\\x07\\x1b[2J\\x9b31m\\u202e[bold]x[/bold]"
    assert printable("fc1.weight · ok") == "fc1.weight · ok"


def test_inspect_shows_an_escape_sequence_in_a_tensor_name_as_text(tmp_path, capsys):
    path = tmp_path / "evil.dcz"
    container.pack({EVIL: torch.zeros(4, 4), "fine": torch.ones(3)}, path, meta={})
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert no_controls(out), repr(out)
    assert "\\x1b]0;pwned\\x07" in out and "[bold]x[/bold]" in out   # shown, markup too


def test_history_and_errors_show_names_as_text(tmp_path, capsys):
    db = tmp_path / "h.sqlite"
    with open_history(db) as h:
        h.record(record(EVIL))
    for argv in (["history"], ["history", "--run", "1"], ["compare", "1", "1"],
                 ["history", "--run", EVIL]):
        main([*argv, "--db", str(db)])
        captured = capsys.readouterr()
        assert no_controls(captured.out) and no_controls(captured.err), (argv, captured)
        assert "\\x1b]0;pwned" in captured.out + captured.err


def test_log_lines_show_names_as_text(capsys):
    with Ui(enabled=True) as ui:
        ui.line(f"bench: {EVIL} done")
    err = capsys.readouterr().err
    assert no_controls(err) and "\\x1b[2J" in err


def test_devices_show_a_devices_words_as_text(monkeypatch, capsys):
    """A device names itself (ro.product.model over ADB): an ESC sequence there is shown."""
    import device_harness
    from device_harness._device import DeviceInfo
    from device_harness._discover import Listing

    info = DeviceInfo("adb", "127.0.0.1:5555", EVIL, "14\x1b[2J", "arm64-v8a", 8)
    monkeypatch.setattr(device_harness, "discover",
                        lambda *a, **k: [Listing("127.0.0.1:5555", info, f"note {EVIL}")])
    assert main(["devices", "--no-probe"]) == 0
    out = capsys.readouterr().out
    assert no_controls(out) and "\\x1b]0;pwned" in out and "[bold]x[/bold]" in out
