"""Checkpoints and the run directory: what a run keeps on disk or in an object store.

- `shards.py`: one msgpack shard per layer plus a manifest written last; save, verify, fall back,
  prune (the API below is re-exported from it);
- `manifest.py`: the manifest's format, checksum, optional HMAC signature and cross-checks;
- `storage.py`: a local directory or any `scheme://` URI through pyarrow.fs;
- `codec.py`: msgpack with NumPy arrays inside, never pickle;
- `rundir.py`: the claim on a run directory (a lock), its run id and its config written once.
"""
from .manifest import MANIFEST, Expect, FormatError, signing_key
from .shards import (FORMAT, READABLE, CheckpointWarning, CheckpointWriteError, Loaded, checkpoint_dir, damaged_shard,
                     latest_valid, list_candidates, list_checkpoints, load, prune, read_manifest, read_shard,
                     root_for, save, write_manifest, write_shard)

__all__ = ["MANIFEST", "Expect", "FormatError", "signing_key", "FORMAT", "READABLE", "CheckpointWarning",
           "CheckpointWriteError", "Loaded", "checkpoint_dir", "damaged_shard", "latest_valid", "list_candidates",
           "list_checkpoints", "load", "prune", "read_manifest", "read_shard", "root_for", "save",
           "write_manifest", "write_shard"]
