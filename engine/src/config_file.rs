//! Config files as a person writes them: parse, validate, and explain every mistake with the
//! file, line and column, the key, what was expected, and a "did you mean" for near misses.
//!
//! Owns: turning TOML text into a validated `SeedConfig`, and the wording of config errors.
//! Must never: accept an unknown key or an invalid value silently.

use crate::config::SeedConfig;

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

fn explain_parse_error(label: &str, text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim().to_string();
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
    fn suggestions_only_for_near_misses() {
        // Far-off words get no misleading suggestion.
        assert_eq!(
            did_you_mean("shard", &["shards", "listen"]),
            Some("shards".into())
        );
        assert_eq!(did_you_mean("zzzzzzzz", &["shards", "listen"]), None);
    }
}
