//! The id rule: agent ids, regions, target ids and provider ids are 1-64 of `[A-Za-z0-9._-]`,
//! checked the same way by the agent's config, plans, the catalogue and the collector's ingest.

/// Longest id.
pub const MAX_ID_LEN: usize = 64;

/// What the rule says, for error messages.
pub const ID_RULE: &str = "must be 1-64 of [A-Za-z0-9._-]";

/// Checks an id against the rule.
pub fn check(id: &str) -> Result<(), &'static str> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'));
    if ok { Ok(()) } else { Err(ID_RULE) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule() {
        for good in ["eu-west-1", "a", "A.b_c-9", &"x".repeat(64)] {
            assert_eq!(check(good), Ok(()), "{good}");
        }
        for bad in ["", "bad id", "a/b", "ü", &"x".repeat(65), "a\n"] {
            assert_eq!(check(bad), Err(ID_RULE), "{bad:?}");
        }
    }
}
