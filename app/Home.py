"""Long-Tail Lab explorer: ``ltlib app`` from anywhere (``./lab.sh app`` in a checkout), or ``streamlit run app/Home.py``.

The entry script sets up the page, the navigation over ``app/views/`` and the session's settings;
the URL path names the page and its query parameters carry the settings (a shareable link). It refuses to
serve on a non-loopback address unless ``$LTLIB_APP_ADDRESS`` names that address (``common.address_refusal``).
"""

import sys
from pathlib import Path

import streamlit as st

sys.path.insert(0, str(Path(__file__).parent))  # so pages can `import common` under AppTest too

import common  # noqa: E402

PAGES = [
    ("views/data.py", "Data", ":material/bar_chart:"),
    ("views/train.py", "Train", ":material/play_circle:"),
    ("views/per_class.py", "Per-class", ":material/leaderboard:"),
    ("views/margins.py", "Margins", ":material/straighten:"),
    ("views/embeddings.py", "Embeddings", ":material/scatter_plot:"),
    ("views/calibration.py", "Calibration", ":material/tune:"),
    ("views/compare.py", "Compare", ":material/compare_arrows:"),
    ("views/lab.py", "Lab", ":material/science:"),
    ("views/lessons.py", "Lessons", ":material/school:"),
]

# Tracebacks name server paths: the browser gets a generic message (the console keeps the details), even
# when the server was started without ``--client.showErrorDetails none``.
st.set_option("client.showErrorDetails", "none")
st.set_page_config(page_title="Long-Tail Lab", layout="wide")
refusal = common.address_refusal()
if refusal:
    st.error(refusal)
    st.stop()
common.settings()
page = st.navigation([st.Page(path, title=title, icon=icon, default=title == "Train") for path, title, icon in PAGES])
st.sidebar.caption("Long-Tail Lab: long-tailed image classification, method by method.")
page.run()
common.sidebar_monitor()  # after the page: it may have just started a job
common.sync_url()
