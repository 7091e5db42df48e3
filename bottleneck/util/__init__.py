"""Plain helpers every stage shares: file hashing, atomic writes and the folder walker (`files`), TensorFlow
imported once and quietly (`tfimport`), and the checks at a run's doors (`validate`).

What other packages may use is named here; everything else is private to the package."""


from .files import Walk, scan_folder, sha256_file, walk_files, write_json_atomic, write_text_atomic
from .tfimport import tensorflow
from .validate import check_split_file, input_size_of, keras_layers, read_json_object

__all__ = [
    "Walk", "check_split_file", "input_size_of", "keras_layers", "read_json_object", "scan_folder", "sha256_file",
    "tensorflow", "walk_files", "write_json_atomic", "write_text_atomic",
]
