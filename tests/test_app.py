from streamlit.testing.v1 import AppTest

from tests.conftest import ROOT


def test_home_trains_digits_and_shows_per_class_accuracy():
    at = AppTest.from_file(str(ROOT / "app" / "Home.py"), default_timeout=60)
    at.run()
    assert not at.exception
    at.button(key="train").click().run()
    assert not at.exception and not at.error
    assert [m.label for m in at.metric][:2] == ["balanced accuracy", "many"]
