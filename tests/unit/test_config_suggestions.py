"""A misspelt key or section: the error still names the file, ``[section] key`` and line,
and says which key was probably meant (difflib over the keys of that section)."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest

from holdover.cli import main
from holdover.config import ConfigError, load

# (name, file text, what the message must contain, the line it must name)
CASES = [
    ("misspelt key", '[app]\ncommand = "x"\nwrokers = 2\n',
     ["[app] wrokers (line 3): unknown key (did you mean workers?)", "expected one of"], 3),
    ("one letter too many", '[app]\ncommand = "x"\nsession_coookie = "sid"\n',
     ["[app] session_coookie", "did you mean session_cookie?"], 3),
    ("dash for underscore", '[app]\ncommand = "x"\n\nhealth-path = "/up"\n',
     ["[app] health-path (line 4)", "did you mean health_path?"], 4),
    ("misspelt section", '[gatway]\nlisten = "127.0.0.1:9000"\n[app]\ncommand = "x"\n',
     ["[gatway] (line 1): unknown section (did you mean [gateway]?)"], 1),
    ("key of the other section",
     '[gateway]\nlisten = "127.0.0.1:9000"\n[app]\ncommand = "x"\nadmin_listen = "x:1"\n',
     ["[app] admin_listen (line 5): unknown key (it is a [gateway] key)"], 5),
]


@pytest.mark.parametrize(("text", "fragments", "line"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_suggestion_with_file_key_and_line(tmp_path: Path, text: str, fragments: list[str],
                                           line: int) -> None:
    path = tmp_path / "holdover.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load(path)
    msg = str(info.value)
    assert msg.startswith(f"{path.resolve()}: "), msg
    for frag in fragments:
        assert frag in msg, (frag, msg)
    assert f"(line {line})" in msg
    # `holdover check` says the same and exits 2 (in-process: no subprocess needed).
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exited:
        main(["check", "-c", str(path)])
    assert exited.value.code == 2
    assert fragments[0] in err.getvalue()


def test_no_suggestion_for_a_key_like_no_other(tmp_path: Path) -> None:
    path = tmp_path / "holdover.toml"
    path.write_text('[app]\ncommand = "x"\nzzqx = 1\n')
    with pytest.raises(ConfigError) as info:
        load(path)
    msg = str(info.value)
    assert "[app] zzqx (line 3): unknown key; expected one of" in msg
    assert "did you mean" not in msg
