//! Catalog: the set of torrents being seeded, indexed by info-hash, with resume state.
//!
//! Owns: loading `*.torrent` from a directory, checking content files, resume state in the
//! state directory (written atomically). Must never: write inside the content directory.
