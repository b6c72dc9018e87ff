//! Errors as the one line kvd prints on stderr before it exits (SPEC
//! section 3).

/// The error and its causes on one line, skipping causes whose text the
/// line already holds.
pub fn one_line(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let s = cause.to_string();
        if out.contains(&s) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&s);
    }
    out.replace('\n', " ")
}

/// Clap's error on one line: its first paragraph, whose later lines (the
/// missing arguments of "the following required arguments were not
/// provided:") are joined to the first; the usage and tips that follow are
/// left out.
pub fn clap_line(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let first = text
        .lines()
        .map(str::trim)
        .take_while(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    let first = first.strip_prefix("error: ").unwrap_or(&first);
    if first.is_empty() {
        "bad arguments".to_owned()
    } else {
        first.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Arg, Command};

    fn cmd() -> Command {
        Command::new("kvd")
            .arg(Arg::new("cert").long("cert-file").requires_ifs([
                (clap::builder::ArgPredicate::IsPresent, "key"),
                (clap::builder::ArgPredicate::IsPresent, "ca"),
            ]))
            .arg(Arg::new("key").long("key-file"))
            .arg(Arg::new("ca").long("ca-file"))
            .arg(
                Arg::new("id")
                    .long("id")
                    .value_parser(clap::value_parser!(u64)),
            )
    }

    fn line(args: &[&str]) -> String {
        clap_line(&cmd().try_get_matches_from(args).expect_err("an error"))
    }

    #[test]
    fn missing_arguments_are_named_on_the_line() {
        let l = line(&["kvd", "--cert-file", "c.pem"]);
        assert_eq!(
            l,
            "the following required arguments were not provided: \
             --key-file <key> --ca-file <ca>"
        );
    }

    #[test]
    fn usage_and_tips_are_left_out() {
        assert_eq!(
            line(&["kvd", "--bogus"]),
            "unexpected argument '--bogus' found"
        );
        let l = line(&["kvd", "--id", "x"]);
        assert!(l.starts_with("invalid value 'x' for '--id <id>'"), "{l}");
        assert!(!l.contains("Usage") && !l.contains('\n'), "{l}");
    }

    #[test]
    fn causes_join_without_repeats() {
        let e = anyhow::anyhow!("inner\ncause").context("outer: inner\ncause");
        assert_eq!(one_line(&e), "outer: inner cause");
        let e = anyhow::anyhow!("disk full").context("cannot write x");
        assert_eq!(one_line(&e), "cannot write x: disk full");
    }
}
