"""Plain helpers every stage shares: file hashing, atomic writes and the folder walker (`files`), TensorFlow
imported once and quietly (`tfimport`), the checks at a run's doors (`validate`), the check for the pandas
accelerator that shares our import name (`clash`), progress bars that suit a terminal or a log (`progress`),
options declared once (`options`), and text from data made safe for the Markdown and CSV files we write (`text`).

What other packages may use is named here; everything else is private to the package."""


from .clash import CLASH_NOTE, DISTRIBUTION, clash_warning, find_clash, installed_version, package_dirs
from .files import (
    Walk,
    finite_or_null,
    scan_folder,
    sha256_file,
    walk_files,
    write_json_atomic,
    write_text_atomic,
)
from .options import SWEEP_MODES, Option, Options, fraction_below_one, one_of, positive, positive_int, read_bool
from .progress import progress_bar
from .text import csv_cell, csv_safe, csv_text, csv_unescape, md_cell, md_code, md_table, md_text, write_csv
from .tfimport import native_stderr_quiet, tensorflow
from .validate import check_split_file, input_size_of, keras_layers, read_json_object

__all__ = [
    "CLASH_NOTE", "DISTRIBUTION", "clash_warning", "find_clash", "installed_version", "package_dirs",
    "Option", "Options", "SWEEP_MODES", "fraction_below_one", "one_of", "positive", "positive_int", "read_bool",
    "Walk", "check_split_file", "finite_or_null", "input_size_of", "keras_layers", "read_json_object", "scan_folder",
    "native_stderr_quiet", "progress_bar", "sha256_file", "tensorflow", "walk_files", "write_json_atomic",
    "write_text_atomic",
    "csv_cell", "csv_safe", "csv_text", "csv_unescape", "md_cell", "md_code", "md_table", "md_text", "write_csv",
]
