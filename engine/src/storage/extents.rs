//! Torrent byte range -> file extents, the per-request mapping the serving path runs.
//!
//! Owns: `ContentFile` (one file's place in the torrent stream) and `map_range`.
//! Must never: allocate beyond the caller's reused `out`, return extents that pass the end of
//! a file or of the range asked for, or point at a pad file (pads are `Extent::Zero`).

use std::path::PathBuf;

/// One file of a torrent as stored: where it lives and where it sits in the byte stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentFile {
    /// Absolute on-disk path; empty for a BEP 47 pad file (never opened).
    pub path: PathBuf,
    pub length: u64,
    /// Offset of the file's first byte in the torrent's concatenated byte stream.
    pub offset: u64,
    pub pad: bool,
}

/// A piece of a requested range: bytes of one file, or zeros (pad files).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Extent {
    File {
        file_index: u32,
        file_offset: u64,
        len: u32,
    },
    Zero {
        len: u32,
    },
}

impl Extent {
    pub fn len(&self) -> u32 {
        match *self {
            Extent::File { len, .. } | Extent::Zero { len } => len,
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Appends to `out` (after clearing it) the extents covering `len` bytes at `torrent_offset`.
/// `files` must be in torrent order with contiguous offsets (as the catalog builds them).
/// A range that runs past the last file is cut at the end; callers validate bounds first.
pub fn map_range(files: &[ContentFile], torrent_offset: u64, len: u32, out: &mut Vec<Extent>) {
    out.clear();
    // First file whose end is past the offset; zero-length files end at their start, so they
    // are skipped here and below.
    let mut index = files.partition_point(|f| f.offset + f.length <= torrent_offset);
    let mut position = torrent_offset;
    let mut remaining = u64::from(len);
    while remaining > 0 {
        let Some(file) = files.get(index) else { break };
        if file.length == 0 {
            index += 1;
            continue;
        }
        debug_assert!(file.offset <= position && position < file.offset + file.length);
        let file_offset = position - file.offset;
        let take = (file.length - file_offset).min(remaining);
        // take <= remaining <= u32::MAX, so the cast is lossless.
        let take32 = take as u32;
        out.push(if file.pad {
            Extent::Zero { len: take32 }
        } else {
            Extent::File {
                file_index: index as u32,
                file_offset,
                len: take32,
            }
        });
        position += take;
        remaining -= take;
        index += 1;
    }
    debug_assert!(
        remaining == 0 || files.last().is_none_or(|f| position >= f.offset + f.length),
        "map_range stopped early"
    );
    debug_assert!(out.iter().map(|e| u64::from(e.len())).sum::<u64>() <= u64::from(len));
}

/// Builds `ContentFile`s with contiguous offsets from (path, length, pad) triples.
pub fn layout(files: impl IntoIterator<Item = (PathBuf, u64, bool)>) -> Vec<ContentFile> {
    let mut offset = 0u64;
    files
        .into_iter()
        .map(|(path, length, pad)| {
            let f = ContentFile {
                path,
                length,
                offset,
                pad,
            };
            offset += length;
            f
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn files(lens: &[(u64, bool)]) -> Vec<ContentFile> {
        layout(
            lens.iter()
                .enumerate()
                .map(|(i, &(l, pad))| (PathBuf::from(format!("f{i}")), l, pad)),
        )
    }

    #[test]
    fn spans_files_skips_empty_and_zeroes_pads() {
        // Proves: a range crossing an empty file and a pad becomes File, Zero, File extents.
        let fs = files(&[(10, false), (0, false), (6, true), (10, false)]);
        let mut out = Vec::new();
        map_range(&fs, 8, 12, &mut out);
        assert_eq!(
            out,
            vec![
                Extent::File {
                    file_index: 0,
                    file_offset: 8,
                    len: 2
                },
                Extent::Zero { len: 6 },
                Extent::File {
                    file_index: 3,
                    file_offset: 0,
                    len: 4
                },
            ]
        );
        map_range(&fs, 10, 1, &mut out);
        assert_eq!(out, vec![Extent::Zero { len: 1 }]);
        map_range(&fs, 20, 100, &mut out);
        assert_eq!(
            out,
            vec![Extent::File {
                file_index: 3,
                file_offset: 4,
                len: 6
            }]
        );
    }

    proptest! {
        #[test]
        fn extents_cover_exactly_the_range(
            lens in proptest::collection::vec((0u64..50, any::<bool>()), 1..12),
            start_frac in 0.0f64..1.0,
            len in 0u32..200,
        ) {
            // Proves: for any layout and in-bounds range, extents are contiguous, in bounds of
            // their files, and sum to exactly the requested length.
            let fs = files(&lens);
            let total: u64 = lens.iter().map(|l| l.0).sum();
            prop_assume!(total > 0);
            let start = ((total as f64) * start_frac) as u64 % total;
            let len = len.min((total - start) as u32);
            let mut out = Vec::new();
            map_range(&fs, start, len, &mut out);
            prop_assert_eq!(out.iter().map(|e| u64::from(e.len())).sum::<u64>(), u64::from(len));
            let mut pos = start;
            for e in &out {
                prop_assert!(!e.is_empty());
                if let Extent::File { file_index, file_offset, len } = *e {
                    let f = &fs[file_index as usize];
                    prop_assert!(!f.pad);
                    prop_assert_eq!(f.offset + file_offset, pos);
                    prop_assert!(file_offset + u64::from(len) <= f.length);
                }
                pos += u64::from(e.len());
            }
        }
    }
}
