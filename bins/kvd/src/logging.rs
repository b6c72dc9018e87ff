//! Logs on stderr (SPEC section 3): plain text lines, or with
//! `--log-format json` one JSON object per line (`timestamp`, `level`,
//! `target`, and the message and fields under `fields`, as
//! tracing-subscriber writes them) for log collectors.

use tracing::Subscriber;
use tracing_subscriber::fmt::MakeWriter;

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One line of text per event.
    #[default]
    Text,
    /// One JSON object per event and line.
    Json,
}

/// Installs the process-wide subscriber writing to stderr.
pub fn init(level: tracing::Level, format: LogFormat) {
    let subscriber = subscriber(level, format, std::io::stderr);
    if let Err(e) = tracing::subscriber::set_global_default(subscriber) {
        eprintln!("kvd: cannot set up logging: {e}");
    }
}

/// The subscriber for `level` and `format`, writing to `writer`.
fn subscriber<W>(
    level: tracing::Level,
    format: LogFormat,
    writer: W,
) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_writer(writer)
        .with_max_level(level)
        .with_ansi(false);
    match format {
        LogFormat::Text => Box::new(builder.with_target(false).finish()),
        LogFormat::Json => Box::new(builder.json().finish()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A writer into a shared buffer.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'w> MakeWriter<'w> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'w self) -> Buffer {
            self.clone()
        }
    }

    fn lines(level: tracing::Level, format: LogFormat) -> Vec<String> {
        let buf = Buffer::default();
        let subscriber = subscriber(level, format, buf.clone());
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("raft", node = 7);
            let _entered = span.enter();
            tracing::info!(id = 2, listen = "127.0.0.1:7001", "node started");
            tracing::debug!("hidden at info");
        });
        let bytes = buf.0.lock().expect("buffer").clone();
        String::from_utf8(bytes)
            .expect("utf-8")
            .lines()
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn json_lines_are_objects_with_timestamp_level_target_and_fields() {
        let lines = lines(tracing::Level::INFO, LogFormat::Json);
        assert_eq!(lines.len(), 1, "{lines:?}");
        let v: serde_json::Value = serde_json::from_str(&lines[0]).expect("json");
        assert!(v["timestamp"].is_string(), "{v}");
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["target"], module_path!());
        assert_eq!(v["fields"]["message"], "node started");
        assert_eq!(v["fields"]["id"], 2);
        assert_eq!(v["fields"]["listen"], "127.0.0.1:7001");
        assert_eq!(v["span"]["name"], "raft");
        assert_eq!(v["span"]["node"], 7);
    }

    #[test]
    fn text_lines_keep_their_plain_form() {
        let lines = lines(tracing::Level::DEBUG, LogFormat::Text);
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(
            lines[0].contains(" INFO raft{node=7}: node started id=2"),
            "{lines:?}"
        );
        assert!(!lines[0].contains(module_path!()), "{lines:?}");
        assert!(!lines[0].contains('\u{1b}'), "no colours: {lines:?}");
    }
}
