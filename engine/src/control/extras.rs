//! The extras loader: reads .torrent files for the shards, so no shard ever parses a file.
//!
//! A shard missing a torrent's BEP 9 info dictionary or BEP 52 hash trees sends a
//! `plane::ExtrasRequest` on one bounded channel shared by all shards. One thread
//! (`squall-extras`) takes requests in small batches, reads each torrent once per batch
//! (`CatalogTorrent::read_torrent`, which checks the info-hash), and answers every asking
//! shard with `ShardCommand::Extras`. A read that fails is still answered (`info: None`) so the
//! waiting peers get rejects at once instead of at the shard's load deadline.
//!
//! Owns: the loader thread, a cache of the `RECENT_EXTRAS_MAX` most recently loaded torrents
//! (several shards usually ask for the same torrent within moments) and the set of torrents
//! already warned about. Must never: run on a shard, block forever on a shard's command queue
//! (`ANSWER_SEND_TIMEOUT`, then the answer is dropped and the shard's deadline answers), or
//! cache a failed read (the file may come back).

use crate::catalog::{CatalogError, CatalogTorrent};
use crate::metainfo::hash_tree::TorrentTrees;
use crate::metainfo::InfoHash;
use crate::plane::{ExtrasRequest, ShardCommand, TorrentExtras};
use crossbeam_channel::{bounded, select, Receiver, SendTimeoutError, Sender, TryRecvError};
use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Loaded extras kept for the next shard that asks (a swarm joining a torrent makes every
/// shard ask within moments). Small: a hybrid's trees can be megabytes.
pub const RECENT_EXTRAS_MAX: usize = 16;
/// Requests taken off the queue per batch; duplicates within a batch cost one read.
pub const REQUEST_BATCH_MAX: usize = 64;
/// Longest the loader waits on one full shard command queue. The shard is then busy enough
/// that its load deadline (`EXTRAS_LOAD_TIMEOUT_SECS`) will answer its peers; waiting longer
/// would hold up every other shard's answers.
pub const ANSWER_SEND_TIMEOUT: Duration = Duration::from_secs(1);
/// Torrents remembered as already warned about; past it the set starts over (a repeat
/// warning is noise, unbounded memory is a bug).
pub const WARNED_TORRENTS_MAX: usize = 4096;

/// Reads one torrent's extras from its .torrent file (on the loader thread).
pub fn load(torrent: &CatalogTorrent) -> Result<TorrentExtras, CatalogError> {
    let t = torrent.read_torrent()?;
    debug_assert_eq!(t.info_hash, torrent.info_hash);
    Ok(TorrentExtras {
        info_hash: torrent.info_hash,
        trees: TorrentTrees::from_torrent(&t),
        info: Some(t.info_bytes),
    })
}

/// The loader thread's handle (kept by the `Seeder`, which owns the shards' senders).
pub struct ExtrasLoader {
    stop: Sender<()>,
    handle: Option<JoinHandle<()>>,
}

impl ExtrasLoader {
    /// Starts the loader. `shards[i]` is shard i's command sender; a request naming a shard
    /// outside it is dropped (asserted in debug builds: the seeder numbers the shards).
    pub fn start(
        requests: Receiver<ExtrasRequest>,
        shards: Vec<Sender<ShardCommand>>,
    ) -> Result<ExtrasLoader, String> {
        // Capacity 1: the signal is level-like, one pending stop is enough.
        let (stop_tx, stop_rx) = bounded::<()>(1);
        let handle = std::thread::Builder::new()
            .name("squall-extras".into())
            .spawn(move || {
                Loader {
                    requests,
                    stop: stop_rx,
                    shards,
                    recent: VecDeque::with_capacity(RECENT_EXTRAS_MAX),
                    warned: HashSet::new(),
                }
                .run()
            })
            .map_err(|e| format!("cannot start the extras loader thread: {e}"))?;
        Ok(ExtrasLoader {
            stop: stop_tx,
            handle: Some(handle),
        })
    }

    /// Asks the loader to exit after the answer it is sending (never blocks).
    pub fn stop(&self) {
        let _ = self.stop.try_send(());
    }

    /// Stops the loader and waits for it (at most one `ANSWER_SEND_TIMEOUT`).
    pub fn join(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        self.stop();
        if let Some(h) = self.handle.take() {
            if h.join().is_err() {
                tracing::error!("the extras loader thread panicked");
            }
        }
    }
}

impl Drop for ExtrasLoader {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

struct Loader {
    requests: Receiver<ExtrasRequest>,
    stop: Receiver<()>,
    shards: Vec<Sender<ShardCommand>>,
    /// Most recent last; at most `RECENT_EXTRAS_MAX`.
    recent: VecDeque<Arc<TorrentExtras>>,
    warned: HashSet<InfoHash>,
}

impl Loader {
    /// Ends when every shard dropped its request sender (the shards exited) or on stop.
    fn run(mut self) {
        loop {
            let first = select! {
                recv(self.requests) -> r => match r {
                    Ok(r) => r,
                    Err(_) => return,
                },
                recv(self.stop) -> _ => return,
            };
            let mut batch = vec![first];
            while batch.len() < REQUEST_BATCH_MAX {
                match self.requests.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            if !self.serve_batch(batch) {
                return;
            }
        }
    }

    /// Answers a batch: one read per torrent, one answer per (shard, torrent). False when a
    /// stop arrived meanwhile.
    fn serve_batch(&mut self, batch: Vec<ExtrasRequest>) -> bool {
        // (torrent, shards asking), in arrival order; a batch is small, a Vec is enough.
        let mut by_torrent: Vec<(Arc<CatalogTorrent>, Vec<usize>)> = Vec::new();
        for r in batch {
            match by_torrent
                .iter_mut()
                .find(|(t, _)| t.info_hash == r.torrent.info_hash)
            {
                Some((_, shards)) if shards.contains(&r.shard) => {}
                Some((_, shards)) => shards.push(r.shard),
                None => by_torrent.push((r.torrent, vec![r.shard])),
            }
        }
        for (torrent, shards) in by_torrent {
            let extras = self.extras_for(&torrent);
            for shard in shards {
                if self.stopping() {
                    return false;
                }
                self.answer(shard, extras.clone());
            }
        }
        true
    }

    /// From the recent cache, else read; a failed read answers `info: None` (not cached).
    fn extras_for(&mut self, torrent: &CatalogTorrent) -> Arc<TorrentExtras> {
        let h = torrent.info_hash;
        if let Some(pos) = self.recent.iter().position(|e| e.info_hash == h) {
            // Move to the back: the most recently asked for stays longest.
            if let Some(e) = self.recent.remove(pos) {
                self.recent.push_back(e.clone());
                return e;
            }
        }
        match load(torrent) {
            Ok(extras) => {
                let extras = Arc::new(extras);
                self.warned.remove(&h);
                if self.recent.len() >= RECENT_EXTRAS_MAX {
                    self.recent.pop_front();
                }
                self.recent.push_back(extras.clone());
                debug_assert!(self.recent.len() <= RECENT_EXTRAS_MAX);
                extras
            }
            Err(e) => {
                if self.warned.len() >= WARNED_TORRENTS_MAX {
                    self.warned.clear();
                }
                if self.warned.insert(h) {
                    tracing::warn!(
                        info_hash = %h,
                        "cannot read the .torrent of {} for peers' metadata and hash requests \
                         ({e}); they get rejects until it reads again",
                        torrent.name
                    );
                }
                Arc::new(TorrentExtras {
                    info_hash: h,
                    info: None,
                    trees: TorrentTrees::default(),
                })
            }
        }
    }

    fn answer(&self, shard: usize, extras: Arc<TorrentExtras>) {
        debug_assert!(
            shard < self.shards.len(),
            "request from unknown shard {shard}"
        );
        let Some(tx) = self.shards.get(shard) else {
            return;
        };
        match tx.send_timeout(ShardCommand::Extras(extras), ANSWER_SEND_TIMEOUT) {
            Ok(()) => {}
            // The shard's load deadline answers its peers with rejects.
            Err(SendTimeoutError::Timeout(_)) => {
                tracing::debug!(
                    shard,
                    "extras answer dropped: the shard's command queue is full"
                )
            }
            // The shard has exited (shutdown); nobody waits.
            Err(SendTimeoutError::Disconnected(_)) => {}
        }
    }

    fn stopping(&self) -> bool {
        !matches!(self.stop.try_recv(), Err(TryRecvError::Empty))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::make::make_torrent_version;
    use crate::metainfo::create::CreateOptions;
    use crate::metainfo::torrent::MetaVersion;
    use sha1::{Digest, Sha1};
    use std::path::Path;

    /// A real .torrent of `len` bytes of content in `dir`, as the catalog would list it.
    fn made(dir: &Path, version: MetaVersion, len: usize) -> Arc<CatalogTorrent> {
        let content = dir.join("content.bin");
        let bytes: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&content, bytes).unwrap();
        let opts = CreateOptions {
            piece_length: Some(16384),
            trackers: Default::default(),
            private: false,
            comment: None,
            web_seeds: Vec::new(),
            created_by: "test".into(),
            creation_date: None,
        };
        let (t, raw) = make_torrent_version(&content, &opts, version, 1, &|_, _| {}).unwrap();
        let torrent_path = dir.join("content.torrent");
        std::fs::write(&torrent_path, raw).unwrap();
        Arc::new(CatalogTorrent {
            info_hash: t.info_hash,
            info_hash_v2: t.info_hash_v2,
            name: t.name.clone(),
            piece_length: t.piece_length,
            total_length: len as u64,
            num_pieces: t.num_pieces(),
            torrent_path,
            have: Vec::new(),
            info_len_bytes: t.info_bytes.len() as u64,
            ..CatalogTorrent::fixture(0)
        })
    }

    /// One loader with `shards` command queues; returns it with the request sender and the
    /// shards' receivers.
    fn loader(
        shards: usize,
        queue: usize,
    ) -> (
        ExtrasLoader,
        Sender<ExtrasRequest>,
        Vec<Receiver<ShardCommand>>,
    ) {
        let (req_tx, req_rx) = bounded(8);
        let (txs, rxs): (Vec<_>, Vec<_>) = (0..shards).map(|_| bounded(queue)).unzip();
        (ExtrasLoader::start(req_rx, txs).unwrap(), req_tx, rxs)
    }

    fn answer(rx: &Receiver<ShardCommand>) -> Arc<TorrentExtras> {
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(ShardCommand::Extras(e)) => e,
            Ok(_) => panic!("not an extras answer"),
            Err(e) => panic!("no answer: {e}"),
        }
    }

    #[test]
    fn a_v1_torrent_answers_with_the_info_dictionary_of_its_hash() {
        // Proves: the answer goes to the asking shard and carries the bytes peers verify
        // against the info-hash (BEP 9); a v1 torrent has no trees.
        let dir = tempfile::tempdir().unwrap();
        let t = made(dir.path(), MetaVersion::V1, 40_000);
        let (loader, tx, rxs) = loader(2, 4);
        tx.send(ExtrasRequest {
            shard: 1,
            torrent: t.clone(),
        })
        .unwrap();
        let e = answer(&rxs[1]);
        assert_eq!(e.info_hash, t.info_hash);
        let info = e.info.as_ref().expect("info bytes");
        assert_eq!(<[u8; 20]>::from(Sha1::digest(info)), t.info_hash.0);
        assert_eq!(info.len() as u64, t.info_len_bytes);
        assert!(e.trees.is_empty());
        assert!(rxs[0].is_empty());
        loader.join();
    }

    #[test]
    fn a_missing_torrent_file_answers_none() {
        // Proves: a failed read is still answered, so waiting peers get rejects at once.
        let dir = tempfile::tempdir().unwrap();
        let mut t = (*made(dir.path(), MetaVersion::V1, 20_000)).clone();
        t.torrent_path = dir.path().join("gone.torrent");
        let (loader, tx, rxs) = loader(1, 4);
        tx.send(ExtrasRequest {
            shard: 0,
            torrent: Arc::new(t.clone()),
        })
        .unwrap();
        let e = answer(&rxs[0]);
        assert_eq!(e.info_hash, t.info_hash);
        assert!(e.info.is_none() && e.trees.is_empty());
        loader.join();
    }

    #[test]
    fn a_hybrid_torrent_answers_with_trees() {
        // Proves: BEP 52 hash requests can be answered: a file longer than one piece has a
        // piece layer, so the trees are not empty. A v2-only torrent too.
        let dir = tempfile::tempdir().unwrap();
        for version in [MetaVersion::Hybrid, MetaVersion::V2] {
            let t = made(dir.path(), version, 5 * 16384 + 100);
            let e = load(&t).unwrap();
            assert!(!e.trees.is_empty(), "{version:?}");
            assert_eq!(e.info.map(|i| i.len() as u64), Some(t.info_len_bytes));
        }
    }

    #[test]
    fn duplicate_requests_cost_one_read_and_one_answer_per_shard() {
        // Proves: requests for one torrent queued together are answered from one read (the
        // file is gone before the loader runs again, yet the cache answers), each asking
        // shard once.
        let dir = tempfile::tempdir().unwrap();
        let t = made(dir.path(), MetaVersion::V1, 20_000);
        let (req_tx, req_rx) = bounded(8);
        let (txs, rxs): (Vec<_>, Vec<_>) = (0..2).map(|_| bounded(4)).unzip();
        for shard in [0, 0, 1] {
            req_tx
                .send(ExtrasRequest {
                    shard,
                    torrent: t.clone(),
                })
                .unwrap();
        }
        // Queued before the thread starts: one batch.
        let loader = ExtrasLoader::start(req_rx, txs).unwrap();
        let (a, b) = (answer(&rxs[0]), answer(&rxs[1]));
        assert!(Arc::ptr_eq(&a, &b) && a.info.is_some());
        std::fs::remove_file(&t.torrent_path).unwrap();
        req_tx
            .send(ExtrasRequest {
                shard: 1,
                torrent: t.clone(),
            })
            .unwrap();
        assert!(answer(&rxs[1]).info.is_some(), "the recent cache answers");
        assert!(
            rxs[0].is_empty(),
            "shard 0 asked twice in one batch, got one answer"
        );
        loader.join();
    }

    #[test]
    fn a_full_shard_queue_never_blocks_the_loader_for_long() {
        // Proves: an answer to a shard whose queue stays full is dropped after the send
        // timeout and the loader goes on serving; it exits when the request senders are gone.
        let dir = tempfile::tempdir().unwrap();
        let t = made(dir.path(), MetaVersion::V1, 20_000);
        let (req_tx, req_rx) = bounded(8);
        let (shard_tx, shard_rx) = bounded(1);
        shard_tx.send(ShardCommand::Shutdown).unwrap();
        let loader = ExtrasLoader::start(req_rx, vec![shard_tx]).unwrap();
        let request = ExtrasRequest {
            shard: 0,
            torrent: t.clone(),
        };
        req_tx.send(request.clone()).unwrap();
        // Long enough for the first answer to time out while the queue is still full.
        std::thread::sleep(ANSWER_SEND_TIMEOUT + Duration::from_millis(300));
        assert!(matches!(shard_rx.try_recv(), Ok(ShardCommand::Shutdown)));
        assert!(
            shard_rx.is_empty(),
            "the answer to a full queue was dropped"
        );
        req_tx.send(request).unwrap();
        assert!(answer(&shard_rx).info.is_some(), "the loader still serves");
        drop(req_tx);
        let started = std::time::Instant::now();
        // Not `join`: that would stop it; this checks the disconnect alone ends it.
        let mut loader = loader;
        let handle = loader.handle.take().unwrap();
        handle.join().unwrap();
        assert!(started.elapsed() < ANSWER_SEND_TIMEOUT);
    }
}
