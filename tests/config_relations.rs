//! `squall config check` refuses configs whose values are each in range but together would
//! make the engine abort or misbehave (issue 18): a batch chain the submission queue cannot
//! hold, a splice batch its pipe cannot hold, a network limit below its sources' limit. Each
//! refusal exits 1, points at the key's line and says which value to change, and to what.

mod common;

use common::*;

/// Proves: `ring_entries = 64` with the default chain bound (the abort: a chain
/// longer than the submission queue asserts and exits 134) is refused before start-up, at
/// the key's line, with both fixes in numbers; the fix it names passes.
#[test]
fn ring_too_small_for_the_batch_chain_is_refused() {
    let (code, err) = config_check("[engine]\nshards = 1\nring_entries = 64\n");
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("line 3, column 1: ring_entries = 64 is below the longest SQE chain")
            && err.contains("raise ring_entries to at least 256")
            && err.contains("lower batch_chain_entries_max to at most 48"),
        "{err}"
    );
    let (code, err) =
        config_check("[engine]\nshards = 1\nring_entries = 64\nbatch_chain_entries_max = 48\n");
    assert_eq!(code, Some(0), "{err}");
}

/// Proves: a splice batch that needs a pipe above what an unprivileged process may ask for
/// (its splices would come up short, reported as short disk reads) is refused, naming the
/// largest send_batch_bytes_max that fits; a network limit below the per-source limit is
/// refused too.
#[test]
fn impossible_splice_batch_and_prefix_limit_are_refused() {
    let (code, err) =
        config_check("[engine]\nserve_mode = \"splice\"\nsend_batch_bytes_max = 1048576\n");
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("line 3, column 1: send_batch_bytes_max = 1048576 with serve_mode")
            && err.contains("pipe-max-size")
            && err.contains("lower send_batch_bytes_max to at most 688128"),
        "{err}"
    );
    let (code, err) =
        config_check("[engine]\nserve_mode = \"splice\"\nsend_batch_bytes_max = 688128\n");
    assert_eq!(code, Some(0), "{err}");

    let (code, err) = config_check("[engine]\npeers_per_ip_max = 100\npeers_per_prefix_max = 50\n");
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("line 3, column 1: peers_per_prefix_max = 50 is below peers_per_ip_max")
            && err.contains("raise peers_per_prefix_max to at least 100"),
        "{err}"
    );
}
