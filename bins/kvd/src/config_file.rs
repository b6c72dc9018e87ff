//! `--config FILE`: a TOML file of kvd's flags (SPEC section 3).
//!
//! Its keys are the long flag names without dashes (`data-dir = "..."`),
//! checked against the clap [`Command`] itself, so the file accepts exactly
//! the flags and a new flag needs no code here. Each setting becomes an
//! argument (`--data-dir=...`) placed before the command line; a setting
//! whose flag the command line also gives is dropped, so the command line
//! wins, for list flags too (clap appends lists rather than replacing them).
//!
//! Values: a string or integer is the flag's value; `true` gives a flag
//! that takes no value and `false` leaves it out; an array (of strings or
//! integers) is joined with commas, for flags that take a comma-separated
//! list. Anything else, an unknown key, or `config` itself (files do not
//! nest) is an error naming the key and its line. Relative paths are taken
//! from kvd's working directory, as on the command line.

use std::collections::{BTreeMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Command;
use clap::error::{ContextKind, ContextValue};
use toml::{Spanned, Value};

/// The arguments to parse, and what of them came from a config file.
#[derive(Debug)]
pub struct Expanded {
    /// The program name, the file's settings, then the command line.
    pub args: Vec<OsString>,
    /// The config file read, if any, and the keys it set (those the
    /// command line did not).
    file: Option<(PathBuf, Vec<String>)>,
}

impl Expanded {
    /// Clap's error `e` about these arguments on one line, noting the
    /// config file where the flag it names was set there.
    pub fn explain(&self, e: &clap::Error) -> String {
        let mut line = crate::report::clap_line(e);
        if let Some((path, keys)) = &self.file
            && let Some(ContextValue::String(arg)) = e.get(ContextKind::InvalidArg)
            && let Some(name) = arg.strip_prefix("--")
            && let Some(key) = keys.iter().find(|k| long_name(name) == k.as_str())
        {
            let _ = write!(line, " (--{key} is set in {})", path.display());
        }
        line
    }
}

impl Expanded {
    /// Fails unless `parsed`, the `--config` clap found in the arguments,
    /// is the file read here: a file must never be ignored in silence
    /// because this module read the command line otherwise than clap.
    ///
    /// # Errors
    ///
    /// The two differ.
    pub fn ensure_read(&self, parsed: Option<&Path>) -> Result<()> {
        let read = self.file.as_ref().map(|(p, _)| p.as_path());
        if read != parsed {
            bail!(
                "--config {}: cannot tell the file from the command line (give it as \
                 --config=FILE)",
                parsed.unwrap_or(Path::new("")).display()
            );
        }
        Ok(())
    }
}

/// The long name in clap's rendering of an argument (`data-dir <DIR>`).
fn long_name(rendered: &str) -> &str {
    rendered.split([' ', '=']).next().unwrap_or(rendered)
}

/// `argv` (program name first) with the settings of the `--config` file it
/// names, if any, put before the command line's own arguments.
///
/// # Errors
///
/// The file cannot be read, is not TOML, or has a key that is not a flag
/// of `cmd` or a value that does not fit its flag.
pub fn expand(cmd: &Command, argv: Vec<OsString>) -> Result<Expanded> {
    let Some(path) = config_path(&argv) else {
        return Ok(Expanded {
            args: argv,
            file: None,
        });
    };
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    let name = path.display().to_string();
    let settings = parse(&name, &text)?;
    let given = given_on_command_line(&argv);
    let (keys, file_args): (Vec<String>, Vec<OsString>) =
        to_args(cmd, &name, &settings, &given)?.into_iter().unzip();
    let mut args = Vec::with_capacity(argv.len() + file_args.len());
    let mut argv = argv.into_iter();
    args.extend(argv.next());
    args.extend(file_args);
    args.extend(argv);
    Ok(Expanded {
        args,
        file: Some((path, keys)),
    })
}

/// The value of the last `--config FILE` or `--config=FILE` in `argv`
/// (clap reports a repeated one), before any `--`.
fn config_path(argv: &[OsString]) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let mut found = None;
    let mut rest = argv.iter().skip(1);
    while let Some(arg) = rest.next() {
        let arg = arg.as_bytes();
        if arg == b"--" {
            break;
        }
        if arg == b"--config" {
            // What clap takes for a flag (`-x`, `--id`) rather than a
            // value leaves the value missing, for clap to report; `-` is a
            // value.
            found = rest
                .next()
                .filter(|v| v.len() == 1 || !v.as_bytes().starts_with(b"-"))
                .map(PathBuf::from);
        } else if let Some(v) = arg.strip_prefix(b"--config=") {
            found = Some(PathBuf::from(OsStr::from_bytes(v)));
        }
    }
    found
}

/// The long flags the command line gives, by name. Every kvd flag is long
/// and clap takes no value that starts with `--` as an option's value, so
/// a token `--NAME` or `--NAME=...` is always the flag NAME.
fn given_on_command_line(argv: &[OsString]) -> HashSet<String> {
    argv.iter()
        .skip(1)
        .map(|a| a.to_string_lossy())
        .take_while(|a| a != "--")
        .filter_map(|a| {
            let name = a.strip_prefix("--")?;
            Some(name.split('=').next().unwrap_or(name).to_owned())
        })
        .collect()
}

/// One `key = value` of the file, with where it is.
#[derive(Debug, Clone, PartialEq)]
struct Setting {
    key: String,
    value: Value,
    /// 1-based line of the key.
    line: usize,
}

/// The top-level settings of the TOML `text` (of the file `name`), in the
/// order of the file.
fn parse(name: &str, text: &str) -> Result<Vec<Setting>> {
    let table: BTreeMap<Spanned<String>, Spanned<Value>> = match toml::from_str(text) {
        Ok(t) => t,
        Err(e) => {
            let at = e
                .span()
                .map(|s| {
                    let (line, col) = line_col(text, s.start);
                    format!(":{line}:{col}")
                })
                .unwrap_or_default();
            let message = e.message().split_whitespace().collect::<Vec<_>>().join(" ");
            bail!("{name}{at}: not valid TOML: {message}");
        }
    };
    let mut settings: Vec<(usize, Setting)> = table
        .into_iter()
        .map(|(k, v)| {
            let start = k.span().start;
            let (line, _) = line_col(text, start);
            let setting = Setting {
                key: k.into_inner(),
                value: v.into_inner(),
                line,
            };
            (start, setting)
        })
        .collect();
    settings.sort_by_key(|(start, _)| *start);
    Ok(settings.into_iter().map(|(_, s)| s).collect())
}

/// The 1-based line and column (in characters) of byte `offset` of `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    (line, col)
}

/// The arguments for `settings` (of the file `name`), each with its key,
/// leaving out those whose flag is in `given`.
fn to_args(
    cmd: &Command,
    name: &str,
    settings: &[Setting],
    given: &HashSet<String>,
) -> Result<Vec<(String, OsString)>> {
    let flag = |key: &str| {
        cmd.get_arguments().find(|a| {
            a.get_long() == Some(key)
                && !matches!(
                    a.get_action(),
                    clap::ArgAction::Help
                        | clap::ArgAction::HelpShort
                        | clap::ArgAction::HelpLong
                        | clap::ArgAction::Version
                )
        })
    };
    let unknown: Vec<String> = settings
        .iter()
        .filter(|s| flag(&s.key).is_none())
        .map(|s| {
            let hint = flag(&s.key.replace('_', "-"))
                .and_then(clap::Arg::get_long)
                .map(|k| format!(", did you mean `{k}`?"))
                .unwrap_or_default();
            format!("`{}` (line {}{hint})", s.key, s.line)
        })
        .collect();
    if !unknown.is_empty() {
        let s = if unknown.len() == 1 { "" } else { "s" };
        bail!(
            "{name}: unknown key{s} {}: the keys are kvd's long flag names (kvd --help)",
            unknown.join(", ")
        );
    }
    let mut args = Vec::new();
    for s in settings {
        let at = format!("{name}:{}: `{}`", s.line, s.key);
        if s.key == "config" {
            bail!("{at}: a config file cannot name another one");
        }
        let Some(arg) = flag(&s.key) else { continue }; // checked above
        let takes_value = arg.get_action().takes_values();
        let list = arg.get_value_delimiter() == Some(',');
        let value = match (&s.value, takes_value) {
            (Value::Boolean(true), false) => None,
            (Value::Boolean(false), false) => continue,
            (_, false) => bail!("{at} is a switch: true or false"),
            (Value::String(v), true) => Some(v.clone()),
            (Value::Integer(n), true) => Some(n.to_string()),
            (Value::Array(items), true) if list => {
                if items.is_empty() {
                    continue;
                }
                let items: Option<Vec<String>> = items.iter().map(scalar).collect();
                let Some(items) = items else {
                    bail!("{at}: the list may hold strings and integers only");
                };
                Some(items.join(","))
            }
            (Value::Array(_), true) => bail!("{at} takes one value, not a list"),
            (v, true) => bail!(
                "{at} takes a string or an integer{}, not {}",
                if list { " (or a list of them)" } else { "" },
                kind(v)
            ),
        };
        // Checked above all the same: a mistake in the file is reported
        // even while the command line hides it.
        if given.contains(&s.key) {
            continue;
        }
        let mut a = OsString::from(format!("--{}", s.key));
        if let Some(v) = value {
            // `--key=value`: a value that starts with `-` stays a value.
            a.push("=");
            a.push(v);
        }
        args.push((s.key.clone(), a));
    }
    Ok(args)
}

/// A string or an integer as text.
fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Integer(n) => Some(n.to_string()),
        _ => None,
    }
}

/// What kind of TOML value `v` is, for errors.
fn kind(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a date-time",
        Value::Array(_) => "a list",
        Value::Table(_) => "a table",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Arg, ArgAction};

    fn cmd() -> Command {
        Command::new("kvd")
            .arg(Arg::new("id").long("id"))
            .arg(Arg::new("listen").long("listen"))
            .arg(Arg::new("data_dir").long("data-dir"))
            .arg(
                Arg::new("join")
                    .long("join")
                    .value_delimiter(',')
                    .action(ArgAction::Append),
            )
            .arg(
                Arg::new("verbose")
                    .long("verbose")
                    .action(ArgAction::SetTrue),
            )
            .arg(Arg::new("config").long("config"))
    }

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    fn args_of(toml: &str, cli: &[&str]) -> Result<Vec<String>> {
        let settings = parse("kvd.toml", toml)?;
        let given = given_on_command_line(&os(cli));
        let args = to_args(&cmd(), "kvd.toml", &settings, &given)?;
        Ok(args
            .into_iter()
            .map(|(_, a)| a.into_string().expect("utf-8"))
            .collect())
    }

    fn err_of(toml: &str) -> String {
        format!("{:#}", args_of(toml, &["kvd"]).expect_err("an error"))
    }

    #[test]
    fn values_become_flags_in_file_order() {
        let toml = "listen = \"127.0.0.1:7002\"\nid = 2\ndata-dir = \"-odd dir\"\n\
                    join = [\"a:1\", \"b:2\"]\nverbose = true\n";
        assert_eq!(
            args_of(toml, &["kvd"]).expect("args"),
            [
                "--listen=127.0.0.1:7002",
                "--id=2",
                "--data-dir=-odd dir",
                "--join=a:1,b:2",
                "--verbose"
            ]
        );
    }

    #[test]
    fn false_and_empty_lists_are_left_out() {
        assert!(
            args_of("verbose = false\njoin = []\n", &["kvd"])
                .expect("args")
                .is_empty()
        );
        assert_eq!(
            args_of("join = \"a:1,b:2\"", &["kvd"]).expect("args"),
            ["--join=a:1,b:2"]
        );
    }

    #[test]
    fn the_command_line_wins() {
        let toml = "id = 2\nlisten = \"x:1\"\njoin = [\"a:1\"]\n";
        let cli = ["kvd", "--listen", "y:2", "--join=b:2", "--", "--id"];
        assert_eq!(args_of(toml, &cli).expect("args"), ["--id=2"]);
    }

    #[test]
    fn unknown_keys_are_all_named_with_their_lines() {
        let e = err_of("id = 1\nbogus = 3\ndata_dir = \"d\"\n");
        assert!(
            e.starts_with("kvd.toml: unknown keys `bogus` (line 2), "),
            "{e}"
        );
        assert!(
            e.contains("`data_dir` (line 3, did you mean `data-dir`?)"),
            "{e}"
        );
        // Tables are keys too; clap's own help is not a setting.
        assert!(err_of("[server]\nid = 1\n").contains("`server` (line 1)"));
        assert!(err_of("help = true").contains("unknown key `help`"));
    }

    #[test]
    fn values_that_do_not_fit_are_errors_naming_the_key() {
        for (toml, want) in [
            (
                "id = 1.5",
                "kvd.toml:1: `id` takes a string or an integer, not a float",
            ),
            (
                "\n\nlisten = [\"a\", \"b\"]",
                "kvd.toml:3: `listen` takes one value, not a list",
            ),
            (
                "join = [[\"a\"]]",
                "kvd.toml:1: `join`: the list may hold strings and integers only",
            ),
            (
                "join = true",
                "`join` takes a string or an integer (or a list of them), not a boolean",
            ),
            (
                "verbose = \"yes\"",
                "kvd.toml:1: `verbose` is a switch: true or false",
            ),
            (
                "config = \"other.toml\"",
                "kvd.toml:1: `config`: a config file cannot name another one",
            ),
        ] {
            let e = err_of(toml);
            assert!(e.contains(want), "{toml:?}: {e}");
        }
    }

    #[test]
    fn bad_toml_names_the_file_line_and_column() {
        let e = err_of("id = 1\nlisten = \"unterminated\n");
        assert!(e.starts_with("kvd.toml:2:"), "{e}");
        assert!(e.contains("not valid TOML"), "{e}");
        assert_eq!(e.lines().count(), 1, "{e}");
        let e = err_of("id = 1\nid = 2\n");
        assert!(e.starts_with("kvd.toml:2:1: not valid TOML"), "{e}");
    }

    #[test]
    fn line_col_counts_characters() {
        assert_eq!(line_col("ab\ncé=d", 7), (2, 4));
        assert_eq!(line_col("", 0), (1, 1));
        assert_eq!(line_col("a", 99), (1, 2));
    }

    #[test]
    fn the_config_path_is_the_last_one_before_a_double_dash() {
        let p = |a: &[&str]| config_path(&os(a));
        assert_eq!(p(&["kvd"]), None);
        assert_eq!(p(&["kvd", "--config", "a.toml"]), Some("a.toml".into()));
        assert_eq!(p(&["kvd", "--config=a", "--config", "b"]), Some("b".into()));
        assert_eq!(p(&["kvd", "--config"]), None);
        assert_eq!(p(&["kvd", "--config", "--id"]), None);
        assert_eq!(p(&["kvd", "--config", "-x"]), None);
        assert_eq!(p(&["kvd", "--config", "-"]), Some("-".into()));
        assert_eq!(p(&["kvd", "--", "--config", "a"]), None);
        assert_eq!(p(&["kvd", "--config-x", "a"]), None);
    }

    #[test]
    fn expand_puts_the_file_before_the_command_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("kvd.toml");
        std::fs::write(&file, "id = 3\nlisten = \"x:1\"\n").expect("write");
        let argv = os(&[
            "kvd",
            "--config",
            file.to_str().expect("utf-8"),
            "--listen",
            "y:2",
        ]);
        let x = expand(&cmd(), argv.clone()).expect("expand");
        assert_eq!(x.args.first(), Some(&OsString::from("kvd")));
        assert_eq!(x.args.get(1), Some(&OsString::from("--id=3")));
        assert_eq!(x.args.get(2..), Some(argv.get(1..).expect("rest")));
        let m = cmd().try_get_matches_from(&x.args).expect("clap");
        assert_eq!(
            m.get_one::<String>("listen").map(String::as_str),
            Some("y:2")
        );
        x.ensure_read(Some(&file)).expect("the file clap found");
        assert!(x.ensure_read(None).is_err());
        let none = expand(&cmd(), os(&["kvd", "--id", "1"])).expect("expand");
        none.ensure_read(None).expect("no file");
        assert!(none.ensure_read(Some(Path::new("kvd.toml"))).is_err());

        let missing = dir.path().join("missing.toml");
        let argv = os(&["kvd", "--config", missing.to_str().expect("utf-8")]);
        let e = format!("{:#}", expand(&cmd(), argv).expect_err("missing"));
        assert!(e.starts_with("cannot read config file "), "{e}");
        assert!(e.contains("missing.toml"), "{e}");
    }

    #[test]
    fn clap_errors_name_the_file_of_the_flag() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("kvd.toml");
        std::fs::write(&file, "id = \"x\"\n").expect("write");
        let cmd = Command::new("kvd")
            .arg(
                Arg::new("id")
                    .long("id")
                    .value_parser(clap::value_parser!(u64)),
            )
            .arg(Arg::new("config").long("config"));
        let argv = os(&["kvd", "--config", file.to_str().expect("utf-8")]);
        let x = expand(&cmd, argv).expect("expand");
        let e = cmd.try_get_matches_from(&x.args).expect_err("bad id");
        let line = x.explain(&e);
        assert!(line.contains("'x'"), "{line}");
        assert!(
            line.ends_with(&format!("(--id is set in {})", file.display())),
            "{line}"
        );
    }
}
