//! Redis's glob patterns (`*`, `?`, `[abc]`, `[^a-z]`, `\x`) over byte
//! strings, for `SCAN ... MATCH` and `CONFIG GET`.
//!
//! Written here rather than taken from a crate: the kept glob crates match
//! UTF-8 paths (with `/` as a separator), while Redis keys are arbitrary
//! bytes and Redis's syntax has no separator.

/// Whether `text` matches `pattern`, as Redis's `stringmatchlen` decides.
pub(crate) fn matches(pattern: &[u8], text: &[u8]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some((b'*', rest)) => {
            // Collapse runs of stars, then try every suffix.
            let rest = &rest[rest.iter().take_while(|&&b| b == b'*').count()..];
            (0..=text.len()).any(|i| matches(rest, &text[i..]))
        }
        Some((b'?', rest)) => !text.is_empty() && matches(rest, &text[1..]),
        Some((b'[', rest)) => {
            let Some((&c, text_rest)) = text.split_first() else {
                return false;
            };
            match class(rest, c) {
                Some((true, after)) => matches(after, text_rest),
                _ => false,
            }
        }
        Some((b'\\', rest)) if !rest.is_empty() => {
            text.first() == Some(&rest[0]) && matches(&rest[1..], &text[1..])
        }
        Some((&p, rest)) => text.first() == Some(&p) && matches(rest, &text[1..]),
    }
}

/// Matches `c` against the class that starts right after `[`: whether it
/// matched, and the pattern after the closing `]` (`None` when unclosed,
/// which Redis treats as the end of the pattern).
fn class(pattern: &[u8], c: u8) -> Option<(bool, &[u8])> {
    let (negate, mut p) = match pattern.split_first() {
        Some((b'^', rest)) => (true, rest),
        _ => (false, pattern),
    };
    let mut matched = false;
    loop {
        match p {
            [] => return Some((matched != negate, p)),
            [b']', rest @ ..] => return Some((matched != negate, rest)),
            [b'\\', x, rest @ ..] => {
                matched |= *x == c;
                p = rest;
            }
            [a, b'-', b, rest @ ..] if *b != b']' => {
                let (lo, hi) = if a <= b { (*a, *b) } else { (*b, *a) };
                matched |= (lo..=hi).contains(&c);
                p = rest;
            }
            [x, rest @ ..] => {
                matched |= *x == c;
                p = rest;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn matches_as_redis_does() {
        let yes = |p: &str, t: &str| assert!(matches(p.as_bytes(), t.as_bytes()), "{p} ~ {t}");
        let no = |p: &str, t: &str| assert!(!matches(p.as_bytes(), t.as_bytes()), "{p} !~ {t}");
        yes("*", "");
        yes("session:*", "session:42");
        no("session:*", "sess:42");
        yes("h?llo", "hello");
        no("h?llo", "hllo");
        yes("h[ae]llo", "hallo");
        no("h[ae]llo", "hillo");
        yes("h[^e]llo", "hallo");
        no("h[^e]llo", "hello");
        yes("h[a-c]llo", "hbllo");
        yes("a\\*b", "a*b");
        no("a\\*b", "axb");
        yes("**a**", "xxaxx");
    }
}
