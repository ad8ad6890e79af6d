//! Errors as people read them: an error and its causes on one line.

/// `outer: cause: root cause`. A cause whose text the error before it already ends with
/// (libraries that print their source themselves) is not repeated.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !text.is_empty() && !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot read config x.toml")]
    struct Outer(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("wrapped: {0}")]
    struct Repeats(#[source] std::io::Error);

    #[test]
    fn causes_once_each() {
        let io = || std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory");
        assert_eq!(chain(&Outer(io())), "cannot read config x.toml: No such file or directory");
        assert_eq!(chain(&Repeats(io())), "wrapped: No such file or directory");
    }
}
