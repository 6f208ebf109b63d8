//! The control channel between the master and one worker: a unix stream
//! socketpair carrying one message per line, TAB-separated fields, with `\\`,
//! `\n`, `\r` and `\t` escaped so a multi-line message (a backtrace) stays one
//! line and one log entry. `julia/INTERFACE.md` is the contract.

/// A message a worker sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FromWorker {
    /// Not ready yet, and busy with this (loading a package, say).
    Starting { what: String },
    /// Warmed up; the pool may count on it.
    Ready,
    /// A log entry of the worker's own, with structured fields.
    Log {
        level: Level,
        message: String,
        fields: Vec<(String, String)>,
    },
    /// About to exit on purpose; not a crash.
    Exiting { reason: String },
    /// A request was answered (sent only when the access log is on).
    Access(Access),
}

/// One request, as the access log shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    pub method: String,
    pub uri: String,
    /// The HTTP status the page answered; 499 when the client went away.
    pub status: u16,
    pub duration_us: u64,
    pub remote_addr: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Level {
    Error,
    Warn,
    Info,
    Debug,
}

/// A message the master sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToWorker {
    /// Finish the current request, accept nothing more, exit 0.
    Stop,
    /// A SIGTERM follows for an overrun request: do not answer it.
    Abort,
}

impl ToWorker {
    pub fn line(self) -> &'static [u8] {
        match self {
            ToWorker::Stop => b"STOP\n",
            ToWorker::Abort => b"ABORT\n",
        }
    }
}

/// Why a line from a worker could not be understood.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unreadable control message {line:?}: {why}")]
pub struct BadMessage {
    pub line: String,
    pub why: &'static str,
}

impl FromWorker {
    pub fn parse(line: &str) -> Result<Self, BadMessage> {
        let bad = |why| BadMessage {
            line: line.chars().take(200).collect(),
            why,
        };
        let mut fields = line.trim_end_matches(['\n', '\r']).split('\t');
        match fields.next() {
            Some("READY") => Ok(FromWorker::Ready),
            Some("STARTING") => Ok(FromWorker::Starting {
                what: unescape(fields.next().unwrap_or("")),
            }),
            Some("ACCESS") => {
                let mut next = |what| fields.next().ok_or_else(|| bad(what));
                let method = unescape(next("ACCESS without method")?);
                let uri = unescape(next("ACCESS without URI")?);
                let status = next("ACCESS without status")?
                    .parse()
                    .map_err(|_| bad("ACCESS status is not a number"))?;
                let duration_us = next("ACCESS without duration")?
                    .parse()
                    .map_err(|_| bad("ACCESS duration is not a number"))?;
                let remote_addr = unescape(fields.next().unwrap_or(""));
                Ok(FromWorker::Access(Access {
                    method,
                    uri,
                    status,
                    duration_us,
                    remote_addr,
                }))
            }
            Some("EXITING") => Ok(FromWorker::Exiting {
                reason: unescape(fields.next().unwrap_or("")),
            }),
            Some("LOG") => {
                let level = match fields.next() {
                    Some("error") => Level::Error,
                    Some("warn") => Level::Warn,
                    Some("info") => Level::Info,
                    Some("debug") => Level::Debug,
                    _ => return Err(bad("unknown log level")),
                };
                let message = unescape(fields.next().ok_or_else(|| bad("LOG without message"))?);
                let fields = fields
                    .filter_map(|field| field.split_once('='))
                    .map(|(key, value)| (key.to_owned(), unescape(value)))
                    .collect();
                Ok(FromWorker::Log {
                    level,
                    message,
                    fields,
                })
            }
            _ => Err(bad("unknown message type")),
        }
    }
}

/// Reverses the worker's escaping; an unknown escape is kept as written.
pub fn unescape(field: &str) -> String {
    if !field.contains('\\') {
        return field.to_owned();
    }
    let mut out = String::with_capacity(field.len());
    let mut chars = field.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('t') => out.push('\t'),
            Some('\\') => out.push('\\'),
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_message() {
        assert_eq!(FromWorker::parse("READY\n"), Ok(FromWorker::Ready));
        assert_eq!(
            FromWorker::parse("STARTING\tloading package A (1 of 2)"),
            Ok(FromWorker::Starting {
                what: "loading package A (1 of 2)".into()
            })
        );
        assert_eq!(
            FromWorker::parse("EXITING\tpage called exit()"),
            Ok(FromWorker::Exiting {
                reason: "page called exit()".into()
            })
        );
        assert_eq!(
            FromWorker::parse(
                "LOG\terror\tboom\\n  at x.jl:3\\tq\\\\\tREQUEST_URI=/a?b=c\tSCRIPT_FILENAME=/x.jl"
            ),
            Ok(FromWorker::Log {
                level: Level::Error,
                message: "boom\n  at x.jl:3\tq\\".into(),
                fields: vec![
                    ("REQUEST_URI".into(), "/a?b=c".into()),
                    ("SCRIPT_FILENAME".into(), "/x.jl".into())
                ],
            })
        );
    }

    #[test]
    fn parses_access_entries() {
        assert_eq!(
            FromWorker::parse("ACCESS\tGET\t/a b?x=\\t\t404\t1234\t127.0.0.1"),
            Ok(FromWorker::Access(Access {
                method: "GET".into(),
                uri: "/a b?x=\t".into(),
                status: 404,
                duration_us: 1234,
                remote_addr: "127.0.0.1".into(),
            }))
        );
        // Without REMOTE_ADDR (a web server that does not pass it).
        assert!(matches!(
            FromWorker::parse("ACCESS\tPOST\t/x\t200\t5\t"),
            Ok(FromWorker::Access(Access { status: 200, .. }))
        ));
        assert!(FromWorker::parse("ACCESS\tGET\t/x\tOK\t5\t").is_err());
        assert!(FromWorker::parse("ACCESS\tGET\t/x\t200").is_err());
    }

    #[test]
    fn rejects_garbage() {
        assert!(FromWorker::parse("HELLO").is_err());
        assert!(FromWorker::parse("LOG\tloud\tx").is_err());
        assert!(FromWorker::parse("LOG\tinfo").is_err());
    }

    #[test]
    fn unescape_edge_cases() {
        assert_eq!(unescape("a\\qb"), "a\\qb");
        assert_eq!(unescape("trailing\\"), "trailing\\");
        assert_eq!(unescape("plain"), "plain");
    }
}
