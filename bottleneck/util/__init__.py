"""Plain helpers every stage shares: file hashing, atomic writes and the folder walker (`files`), TensorFlow
imported once and quietly (`tfimport`), the checks at a run's doors (`validate`), the check for the pandas
accelerator that shares our import name (`clash`), and options declared once (`options`).

What other packages may use is named here; everything else is private to the package."""


from .clash import CLASH_NOTE, DISTRIBUTION, clash_warning, find_clash, installed_version, package_dirs
from .files import Walk, scan_folder, sha256_file, walk_files, write_json_atomic, write_text_atomic
from .options import SWEEP_MODES, Option, Options, fraction_below_one, one_of, positive, positive_int, read_bool
from .tfimport import tensorflow
from .validate import check_split_file, input_size_of, keras_layers, read_json_object

__all__ = [
    "CLASH_NOTE", "DISTRIBUTION", "clash_warning", "find_clash", "installed_version", "package_dirs",
    "Option", "Options", "SWEEP_MODES", "fraction_below_one", "one_of", "positive", "positive_int", "read_bool",
    "Walk", "check_split_file", "input_size_of", "keras_layers", "read_json_object", "scan_folder", "sha256_file",
    "tensorflow", "walk_files", "write_json_atomic", "write_text_atomic",
]
