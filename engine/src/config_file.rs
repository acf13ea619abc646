//! Config files as a person writes them: parse, validate, and explain every mistake with the
//! file, line and column, the key, what was expected, and a "did you mean" for near misses.
//!
//! Owns: turning TOML text into a validated `SeedConfig`, and the wording of config errors.
//! Must never: accept an unknown key or an invalid value silently.

use crate::config::SeedConfig;

impl crate::config::AdminConfig {
    /// The API's bounds in `[admin]` (called by `listen_addr`, so every config check runs it).
    pub fn check_api_limits(&self) -> Result<(), String> {
        let body = self.api_body_bytes_max;
        if !(1..=256 << 20).contains(&body) {
            return Err(format!(
                "admin.api_body_bytes_max = {body}: give 1 to 268435456 (256 MiB)"
            ));
        }
        if self.auth_failures_per_min_max == 0 {
            return Err("admin.auth_failures_per_min_max = 0: must be at least 1".into());
        }
        Ok(())
    }
}

/// Parses and validates `text` (read from `label`, used in messages).
pub fn load(label: &str, text: &str) -> Result<SeedConfig, String> {
    let config: SeedConfig = match toml::from_str(text) {
        Ok(c) => c,
        Err(e) => return Err(explain_parse_error(label, text, &e)),
    };
    if let Err(problem) = config.validate() {
        // `validate` messages start with `key = value: ...`; point at that key's line.
        // `[table] key = ...` (tracker) is the same as `table.key = ...` (admin).
        let raw = problem.split(" =").next().unwrap_or("").trim();
        let key = match raw.strip_prefix('[').and_then(|r| r.split_once("] ")) {
            Some((table, field)) => format!("{table}.{field}"),
            None => raw.to_string(),
        };
        let key = key.as_str();
        let location = find_key(text, key)
            .map(|(l, c)| format!(" line {l}, column {c}"))
            .unwrap_or_default();
        return Err(format!("{label}{location}: {problem}"));
    }
    Ok(config)
}

/// A directory the config or a flag names: it must exist, be a directory and be listable.
/// `named` says where it came from (`--torrents`, `[catalog] data_dir`), `holds` what it
/// should hold, for the fix.
pub fn check_dir(path: &std::path::Path, named: &str, holds: &str) -> Result<(), String> {
    let shown = path.display();
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(format!(
            "{named} {shown}: no such directory (create it, or give the directory holding {holds})"
        )),
        Err(e) => Err(format!("{named} {shown}: {e}")),
        Ok(m) if !m.is_dir() => Err(format!(
            "{named} {shown}: not a directory (give the directory holding {holds})"
        )),
        Ok(_) => std::fs::read_dir(path).map(drop).map_err(|e| {
            format!("{named} {shown}: cannot list it: {e} (squall's user needs read and execute permission)")
        }),
    }
}

/// `config check`'s look beyond the text: the `[catalog]` directories exist and can be read
/// (the state directory is created at start when missing, so only a non-directory fails).
pub fn check_paths(label: &str, text: &str, config: &SeedConfig) -> Result<(), String> {
    let at = |key: &str| {
        find_key(text, key)
            .map(|(l, c)| format!(" line {l}, column {c}"))
            .unwrap_or_default()
    };
    let c = &config.catalog;
    for (key, dir, holds) in [
        ("torrents_dir", &c.torrents_dir, "the .torrent files"),
        ("data_dir", &c.data_dir, "the torrents' content"),
    ] {
        if let Some(dir) = dir {
            check_dir(dir, &format!("[catalog] {key} ="), holds)
                .map_err(|e| format!("{label}{}: {e}", at(&format!("catalog.{key}"))))?;
        }
    }
    if let Some(dir) = c.state_dir.as_ref().filter(|d| d.exists() && !d.is_dir()) {
        return Err(format!(
            "{label}{}: [catalog] state_dir = {}: not a directory",
            at("catalog.state_dir"),
            dir.display()
        ));
    }
    Ok(())
}

fn explain_parse_error(label: &str, text: &str, e: &toml::de::Error) -> String {
    let value = e.span().and_then(|span| text.get(span)).unwrap_or_default();
    let mut message = in_words(e.message().trim(), value);
    if let Some(first) = duplicate_first_line(&message, text) {
        message.push_str(&format!(
            " (first set on line {first}; keep one of the two)"
        ));
    }
    let location = e
        .span()
        .map(|span| {
            let (line, column) = line_col(text, span.start);
            let snippet = text.lines().nth(line - 1).unwrap_or("").trim();
            (
                format!(" line {line}, column {column}"),
                snippet.to_string(),
            )
        })
        .unwrap_or_default();
    let mut out = format!("{label}{}: ", location.0);
    if !location.1.is_empty() {
        out.push_str(&format!("{}: ", location.1));
    }
    out.push_str(&message);
    if let Some(hint) = did_you_mean_for(&message) {
        out.push_str(&format!(" (did you mean `{hint}`?)"));
    }
    out
}

/// serde's and std's wording turned into a person's: Rust type names become what to write
/// (`expected usize` -> `expected a whole number`), and an address that does not parse says
/// why (`port 68810 is out of range 0-65535`). `value` is the text the error points at.
pub fn in_words(message: &str, value: &str) -> String {
    if message.contains("invalid socket address syntax") {
        // The span is the value (`"a:1"`) or the whole list (`["a:1", "b:2"]`).
        let why = value
            .split('"')
            .skip(1)
            .step_by(2)
            .find_map(|s| parse_socket_addr(s).err().map(|why| format!("{s}: {why}")));
        if let Some(why) = why {
            return why;
        }
    }
    const WORDS: [(&str, &str); 16] = [
        ("expected usize", "expected a whole number"),
        ("expected u64", "expected a whole number"),
        ("expected u32", "expected a whole number"),
        ("expected u16", "expected a whole number from 0 to 65535"),
        ("expected u8", "expected a whole number from 0 to 255"),
        ("expected i64", "expected a whole number"),
        ("expected i32", "expected a whole number"),
        ("expected f64", "expected a number"),
        ("expected f32", "expected a number"),
        ("expected a boolean", "expected true or false"),
        (
            "expected a sequence",
            "expected a list, e.g. [\"a\", \"b\"]",
        ),
        ("expected a string", "expected text in double quotes"),
        ("invalid type: string ", "got the text "),
        ("invalid type: integer ", "got the number "),
        ("invalid type: boolean ", "got "),
        ("invalid value: integer ", "got "),
    ];
    let mut out = message.to_string();
    for (rust, words) in WORDS {
        out = out.replace(rust, words);
    }
    // "got the text \"two\", expected a whole number" reads better the other way round.
    if let Some((got, expected)) = out.split_once(", expected ") {
        if got.starts_with("got ") {
            out = format!("expected {expected}, {got}");
        }
    }
    out
}

/// A listen address in words: `port 68810 is out of range 0-65535`, a missing port, or what
/// a good one looks like. Used for config files, `--listen` and `admin.listen`.
pub fn parse_socket_addr(text: &str) -> Result<std::net::SocketAddr, String> {
    let text = text.trim();
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    const EXAMPLE: &str = "e.g. 0.0.0.0:6881 or [::]:6881";
    match text.rsplit_once(':') {
        Some((host, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
            match port.parse::<u64>() {
                Ok(p) if p > u64::from(u16::MAX) => {
                    Err(format!("port {p} is out of range 0-65535"))
                }
                _ => Err(format!(
                    "{host:?} is not an IP address ({EXAMPLE}; IPv6 goes in brackets, \
                     host names are not resolved)"
                )),
            }
        }
        Some(_) if !text.ends_with(']') => Err(format!("the port is not a number ({EXAMPLE})")),
        _ => Err(format!("no :PORT ({EXAMPLE})")),
    }
}

/// For "duplicate key `k` in table `t`": the line where `t.k` was first set.
fn duplicate_first_line(message: &str, text: &str) -> Option<usize> {
    let rest = message.strip_prefix("duplicate key ")?;
    let key = rest.split(' ').next()?.trim_matches('`');
    let table = rest
        .split_once("in table ")
        .map(|(_, t)| t.trim().trim_matches('`'));
    let full = match table {
        Some(t) if !t.is_empty() => format!("{t}.{key}"),
        _ => key.to_string(),
    };
    find_key(text, &full).map(|(line, _)| line)
}

/// 1-based line and column of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..text.floor_char_boundary(offset)];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit('\n')
        .next()
        .map(|l| l.chars().count())
        .unwrap_or(0)
        + 1;
    (line, column)
}

/// Where `key = ...` is written, as (line, column). `table.key` looks inside `[table]`;
/// a bare key matches its first occurrence.
fn find_key(text: &str, key: &str) -> Option<(usize, usize)> {
    if key.is_empty() {
        return None;
    }
    let (table, field) = match key.split_once('.') {
        Some((t, f)) => (Some(format!("[{t}]")), f),
        None => (None, key),
    };
    let mut in_table = table.is_none();
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if let Some(t) = &table {
            if trimmed.starts_with('[') {
                in_table = trimmed.trim_end().starts_with(t.as_str());
                continue;
            }
        }
        if !in_table {
            continue;
        }
        if let Some(rest) = trimmed.strip_prefix(field) {
            if rest.trim_start().starts_with('=') {
                return Some((i + 1, line.len() - trimmed.len() + 1));
            }
        }
    }
    None
}

/// serde says "unknown field `x`, expected one of `a`, `b`": suggest the nearest candidate.
fn did_you_mean_for(message: &str) -> Option<String> {
    let unknown = message.strip_prefix("unknown field `")?.split('`').next()?;
    let candidates: Vec<&str> = message
        .split("expected ")
        .nth(1)?
        .split('`')
        .skip(1)
        .step_by(2)
        .collect();
    did_you_mean(unknown, &candidates)
}

/// The candidate closest to `word` by edit distance, if close enough to be a typo.
pub fn did_you_mean(word: &str, candidates: &[&str]) -> Option<String> {
    candidates
        .iter()
        .map(|c| (edit_distance(word, c), *c))
        .filter(|(d, c)| *d <= (c.len() / 3).max(2))
        .min()
        .map(|(_, c)| c.to_string())
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_gets_position_and_suggestion() {
        // A typo names the file, line, column and the key it probably meant.
        let err = load("x.toml", "[engine]\nshards = 2\npeers_maxx = 3\n").unwrap_err();
        assert!(err.starts_with("x.toml line 3, column 1: "), "{err}");
        assert!(
            err.contains("peers_maxx") && err.contains("did you mean `peers_max`"),
            "{err}"
        );
    }

    #[test]
    fn bad_values_point_at_their_line() {
        // Type errors and range errors both say where and what.
        let err = load("x.toml", "[engine]\nlisten = [\"0.0.0.0:99999\"]\n").unwrap_err();
        assert!(
            err.contains("x.toml line 2") && err.contains("0.0.0.0:99999"),
            "{err}"
        );
        let err = load("x.toml", "[engine]\n\n  block_len_max_bytes = 1\n").unwrap_err();
        assert!(
            err.starts_with("x.toml line 3, column 3: block_len_max_bytes = 1"),
            "{err}"
        );
        let err = load("x.toml", "[engine]\nserve_mode = \"fast\"\n").unwrap_err();
        assert!(err.contains("line 2") && err.contains("copy"), "{err}");
    }

    #[test]
    fn table_keys_are_found_in_their_table() {
        // `admin.listen` points at `listen` under [admin], not an earlier `listen`.
        let text = "[engine]\nlisten = [\"127.0.0.1:1\"]\n[admin]\nlisten = \"0.0.0.0:7881\"\n";
        let err = load("x.toml", text).unwrap_err();
        assert!(
            err.starts_with("x.toml line 4, column 1: admin.listen"),
            "{err}"
        );
    }

    #[test]
    fn type_errors_ports_and_duplicates_in_words() {
        // No Rust type names; an out-of-range port says so; a duplicate names the first line.
        let err = load("x.toml", "[engine]\nshards = \"two\"\n").unwrap_err();
        assert!(
            err.ends_with("shards = \"two\": expected a whole number, got the text \"two\""),
            "{err}"
        );
        let err = load("x.toml", "[engine]\nidle_timeout_secs = -5\n").unwrap_err();
        assert!(err.contains("expected a whole number, got `-5`"), "{err}");
        assert!(!err.contains("u64"), "{err}");
        let err = load("x.toml", "[tracker]\nenabled = \"yes\"\n").unwrap_err();
        assert!(err.contains("expected true or false"), "{err}");
        let err = load("x.toml", "[engine]\nlisten = [\"0.0.0.0:68810\"]\n").unwrap_err();
        assert!(
            err.starts_with("x.toml line 2")
                && err.ends_with("0.0.0.0:68810: port 68810 is out of range 0-65535"),
            "{err}"
        );
        let err = load("x.toml", "[engine]\nshards = 1\n\nshards = 2\n").unwrap_err();
        assert!(
            err.starts_with("x.toml line 4") && err.contains("first set on line 2"),
            "{err}"
        );
        let err = load("x.toml", "[admin]\nlisten = \"127.0.0.1:99999\"\n").unwrap_err();
        assert!(err.contains("port 99999 is out of range 0-65535"), "{err}");
        assert!(parse_socket_addr("0.0.0.0")
            .unwrap_err()
            .contains("no :PORT"));
        assert!(parse_socket_addr("example.org:80")
            .unwrap_err()
            .contains("not an IP address"));
        assert!(parse_socket_addr("1.2.3.4:x")
            .unwrap_err()
            .contains("not a number"));
    }

    #[test]
    fn suggestions_only_for_near_misses() {
        // Far-off words get no misleading suggestion.
        assert_eq!(
            did_you_mean("shard", &["shards", "listen"]),
            Some("shards".into())
        );
        assert_eq!(did_you_mean("zzzzzzzz", &["shards", "listen"]), None);
    }
}
