"""The HDF5 cache: its layout and reading (`store`, `checks`), safe writing (`writer`, `commit`, `journal`, `undo`,
`row_keys`), shard merging (`merge`; `virtual`: virtual merges checked to the bottom) and reading features within a
memory budget (`features`).

What other packages may use is named here; everything else is private to the package."""


from .batch import ROW_FIELDS, utf8_ok
from .features import (
                       GIB,
                       ViewsReader,
                       chunk_batches,
                       default_memory_gb,
                       features_fit,
                       features_record,
                       is_streamed,
                       load_cache_within,
                       resolve_memory_gb,
                       take,
)
from .merge import MergeResult, merge_caches
from .pending import journaled_ids
from .store import (
                       ADD_FINGERPRINTS,
                       CacheConfig,
                       CacheData,
                       describe_cache,
                       library_versions,
                       load_cache,
                       read_attrs,
                       read_views,
                       recorded_config,
)
from .writer import COMMIT_SECONDS, CacheWriter

__all__ = [
    "ADD_FINGERPRINTS", "COMMIT_SECONDS", "ROW_FIELDS", "CacheConfig", "CacheData", "CacheWriter", "GIB", "MergeResult",
    "ViewsReader", "chunk_batches",
    "default_memory_gb", "describe_cache", "features_fit", "features_record", "is_streamed", "journaled_ids",
    "library_versions",
    "load_cache", "load_cache_within", "merge_caches", "read_attrs", "read_views", "recorded_config",
    "resolve_memory_gb", "take", "utf8_ok",
]
