"""Where a study lives: the storage a user names, opened or refused in one line that says what to write."""

import optuna
import pytest

from legoexp.errors import ConfigError
from legoexp.study.storage import StudyLock, open_storage, storage_label


def test_a_path_ending_in_journal_is_a_journal_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    storage = open_storage("studies.journal", tmp_path / "elsewhere")
    assert isinstance(storage, optuna.storages.JournalStorage)
    optuna.create_study(study_name="s", storage=storage)
    assert (tmp_path / "studies.journal").stat().st_size > 0
    assert StudyLock("studies.journal", tmp_path).path == "studies.journal.claim.lock"
    assert storage_label("studies.journal", tmp_path) == "journal:studies.journal"


@pytest.mark.parametrize("url, hint", [
    ("postgres://nobody@127.0.0.1:1/none", "write postgresql+psycopg2://USER:PASSWORD@HOST:PORT/DB"),
    ("optuna.db", "expected a URL (sqlite:///optuna.db, postgresql+psycopg2://...), journal:PATH or a PATH ending in .journal"),
])
def test_a_storage_people_often_write_is_refused_with_what_to_write(tmp_path, url, hint):
    with pytest.raises(ConfigError) as e:
        StudyLock(url, tmp_path)
        open_storage(url, tmp_path)
    assert f"storage={url!r}: cannot open it as an Optuna storage" in str(e.value) and hint in str(e.value)
    assert "\n" not in str(e.value)


def test_a_database_file_in_a_folder_that_does_not_exist_is_one_line(tmp_path):
    url = f"sqlite:///{tmp_path}/nonexistent/dir/optuna.db"
    with pytest.raises(ConfigError) as e:
        StudyLock(url, tmp_path)
    assert str(e.value) == f"storage={url!r}: directory {tmp_path}/nonexistent/dir does not exist"
