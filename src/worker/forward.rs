//! What workers say, into the master's log: their `LOG` entries with the
//! request they concern as structured fields, and access log entries.
//!
//! Repeated entries are rate-limited, pool-wide and per kind, because a
//! hostile client chooses how many a worker writes: one warning per bad
//! FastCGI stream reached 2,500 lines a second, which buries everything
//! else and costs journald more than the attack costs the client. The
//! first [`BURST`] entries of a kind within [`WINDOW`] are logged; the rest
//! are counted and said once the window is over: "closing FastCGI
//! connection: … and 2481 more like it in the last 10 s". A kind is the
//! level, the message up to its first `:` (its fixed part, before the
//! details) and the page it concerns, so one page's flood hides neither
//! another page's errors nor a different warning.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use crate::control::{Access, Level};

/// Entries of one kind logged per window…
pub const BURST: u32 = 10;
/// …and the window.
pub const WINDOW: Duration = Duration::from_secs(10);
/// Kinds remembered at once; beyond, new kinds share one.
const MAX_KINDS: usize = 512;
/// The longest fixed part of a message that makes its kind.
const MAX_KIND_CHARS: usize = 80;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Kind {
    level: Level,
    what: String,
    script: Option<String>,
}

#[derive(Debug)]
struct Window {
    started: Instant,
    shown: u32,
    suppressed: u64,
}

/// Entries of one kind that were not logged in a window that has ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub level: Level,
    /// The fixed part of the message ("closing FastCGI connection").
    pub what: String,
    pub script: Option<String>,
    pub suppressed: u64,
}

/// The pool-wide limiter: every worker's actor asks it before logging.
#[derive(Debug, Default)]
pub struct Limiter {
    windows: HashMap<Kind, Window>,
}

impl Limiter {
    /// Whether an entry may be logged at `now`, and the summary of its
    /// kind's previous window if that just ended with entries suppressed.
    pub fn check(
        &mut self,
        level: Level,
        message: &str,
        script: Option<&str>,
        now: Instant,
    ) -> (bool, Option<Summary>) {
        let mut kind = Kind {
            level,
            what: fixed_part(message),
            script: script.map(str::to_owned),
        };
        if !self.windows.contains_key(&kind) && self.windows.len() >= MAX_KINDS {
            self.windows
                .retain(|_, w| now.saturating_duration_since(w.started) < WINDOW);
            if self.windows.len() >= MAX_KINDS {
                kind = Kind {
                    level,
                    what: "(entries of many other kinds)".into(),
                    script: None,
                };
            }
        }
        let mut ended = None;
        if let Some(window) = self.windows.get(&kind) {
            if now.saturating_duration_since(window.started) >= WINDOW {
                let window = self.windows.remove(&kind).expect("just looked it up");
                ended = summary(&kind, &window);
            }
        }
        let window = self.windows.entry(kind).or_insert(Window {
            started: now,
            shown: 0,
            suppressed: 0,
        });
        let show = window.shown < BURST;
        if show {
            window.shown += 1;
        } else {
            window.suppressed += 1;
        }
        (show, ended)
    }

    /// Ends the windows that are over, returning what they suppressed; run
    /// on a timer, so a flood that stops is still accounted for.
    pub fn flush(&mut self, now: Instant) -> Vec<Summary> {
        let mut summaries = Vec::new();
        self.windows.retain(|kind, window| {
            let over = now.saturating_duration_since(window.started) >= WINDOW;
            if over {
                summaries.extend(summary(kind, window));
            }
            !over
        });
        summaries
    }
}

fn summary(kind: &Kind, window: &Window) -> Option<Summary> {
    (window.suppressed > 0).then(|| Summary {
        level: kind.level,
        what: kind.what.clone(),
        script: kind.script.clone(),
        suppressed: window.suppressed,
    })
}

/// "closing FastCGI connection" of "closing FastCGI connection: bad version
/// byte 7": the part before the details.
fn fixed_part(message: &str) -> String {
    let head = message.split(':').next().unwrap_or(message);
    head.chars().take(MAX_KIND_CHARS).collect()
}

/// Logs a summary: "…: … and 2481 more like it in the last 10 s".
pub fn log_summary(summary: &Summary) {
    let Summary {
        level,
        what,
        script,
        suppressed,
    } = summary;
    let script = script.as_deref();
    macro_rules! emit {
        ($macro:ident) => {
            tracing::$macro!(
                suppressed = *suppressed,
                script_filename = script,
                "{what}: … and {suppressed} more like it in the last {} s",
                WINDOW.as_secs()
            )
        };
    }
    match level {
        Level::Error => emit!(error),
        Level::Warn => emit!(warn),
        Level::Info => emit!(info),
        Level::Debug => emit!(debug),
    }
}

/// A log entry the worker wrote on its control channel, with the request it
/// concerns as structured fields.
pub fn log_from_worker(
    slot: u32,
    pid: u32,
    level: Level,
    message: &str,
    fields: &[(String, String)],
) {
    let field = |name: &str| {
        fields
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    };
    let (uri, script, method) = (
        field("REQUEST_URI"),
        field("SCRIPT_FILENAME"),
        field("REQUEST_METHOD"),
    );
    macro_rules! emit {
        ($macro:ident) => {
            tracing::$macro!(
                worker = slot,
                worker_pid = pid,
                request_method = method,
                request_uri = uri,
                script_filename = script,
                "{message}"
            )
        };
    }
    match level {
        Level::Error => emit!(error),
        Level::Warn => emit!(warn),
        Level::Info => emit!(info),
        Level::Debug => emit!(debug),
    }
}

/// The target of access log entries: the journal's `TARGET` field, so
/// `journalctl -u julia-fcgi TARGET=julia_fcgi::access` shows only them.
pub const ACCESS_TARGET: &str = "julia_fcgi::access";

/// One access log entry: the message reads like a web server's log line,
/// the fields make it searchable (`HTTP_STATUS=500`, `WORKER=2`). Never
/// rate-limited: it is one entry per answered request by design.
pub fn log_access(slot: u32, pid: u32, access: &Access) {
    let remote = match access.remote_addr.as_str() {
        "" => "-",
        addr => addr,
    };
    tracing::info!(
        target: ACCESS_TARGET,
        worker = slot,
        worker_pid = pid,
        request_method = access.method.as_str(),
        request_uri = access.uri.as_str(),
        http_status = access.status,
        duration_us = access.duration_us,
        remote_addr = remote,
        "{remote} \"{} {}\" {} {:.3} ms",
        access.method,
        access.uri,
        access.status,
        access.duration_us as f64 / 1000.0
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    const BAD: &str = "closing FastCGI connection: not a FastCGI 1 record (version byte 7)";

    #[test]
    fn a_flood_is_cut_to_a_burst_and_counted() {
        let start = Instant::now();
        let mut limiter = Limiter::default();
        let mut shown = 0;
        // 2,500 a second for one second, as the issue measured.
        for i in 0..2500u32 {
            let now = start + Duration::from_micros(u64::from(i) * 400);
            let (show, ended) = limiter.check(Level::Warn, BAD, None, now);
            assert_eq!(ended, None);
            shown += u32::from(show);
        }
        assert_eq!(shown, BURST);
        assert!(limiter
            .flush(start + WINDOW - Duration::from_millis(1))
            .is_empty());
        assert_eq!(
            limiter.flush(start + WINDOW),
            [Summary {
                level: Level::Warn,
                what: "closing FastCGI connection".into(),
                script: None,
                suppressed: 2490,
            }]
        );
        // Said once: the window is gone.
        assert!(limiter.flush(start + WINDOW * 3).is_empty());
    }

    #[test]
    fn the_next_entry_after_a_window_reports_it_and_starts_anew() {
        let start = Instant::now();
        let mut limiter = Limiter::default();
        for _ in 0..15 {
            limiter.check(Level::Warn, BAD, None, start);
        }
        let (show, ended) = limiter.check(Level::Warn, BAD, None, start + WINDOW);
        assert!(show);
        assert_eq!(ended.map(|s| s.suppressed), Some(5));
    }

    #[test]
    fn kinds_are_limited_apart() {
        let now = Instant::now();
        let mut limiter = Limiter::default();
        for _ in 0..100 {
            limiter.check(Level::Warn, BAD, None, now);
        }
        // Another message, another level, another page: each its own burst.
        let other = "closing FastCGI connection: end of file inside a record";
        assert!(!limiter.check(Level::Warn, other, None, now).0, "same kind");
        assert!(limiter.check(Level::Info, BAD, None, now).0);
        assert!(
            limiter
                .check(Level::Warn, "accept failed: EMFILE", None, now)
                .0
        );
        let error = "page raised an exception: boom";
        for _ in 0..100 {
            limiter.check(Level::Error, error, Some("/a.jl"), now);
        }
        assert!(limiter.check(Level::Error, error, Some("/b.jl"), now).0);
        assert!(!limiter.check(Level::Error, error, Some("/a.jl"), now).0);
    }

    #[test]
    fn an_attacker_cannot_grow_the_table_without_bound() {
        let now = Instant::now();
        let mut limiter = Limiter::default();
        for i in 0..10_000 {
            limiter.check(Level::Warn, &format!("kind {i}"), None, now);
        }
        assert!(limiter.windows.len() <= MAX_KINDS + 1);
        assert_eq!(fixed_part(&"x".repeat(1000)).len(), MAX_KIND_CHARS);
    }
}
