//! Building new torrents (`squall make`): file listing order, automatic piece length, and
//! the canonical info dictionary. Hashing itself lives in `storage::hasher`.
