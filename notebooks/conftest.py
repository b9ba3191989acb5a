# Notebooks executed by pytest (nbmake) run on small settings: each notebook reads JAXSCIML_NOTEBOOK_SIZE
# ("small" under pytest, "full" otherwise) and writes its figures into JAXSCIML_FIGURES (a fresh temporary folder).
import os
import tempfile

os.environ.setdefault("JAXSCIML_NOTEBOOK_SIZE", "small")
os.environ.setdefault("JAXSCIML_FIGURES", tempfile.mkdtemp(prefix="jaxsciml-figures-"))
os.environ.setdefault("MPLBACKEND", "Agg")
