//! Telling systemd the truth (`sd_notify`): `READY=1` only once the pool can
//! serve, `STATUS=` saying what is going on, `WATCHDOG=1` only while the
//! master is healthy, `STOPPING=1`/`RELOADING=1` around stops and reloads.
//!
//! A notification that cannot be sent is logged once and otherwise ignored:
//! a broken notify socket must never take the pages down with it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use sd_notify::NotifyState;

#[derive(Debug, Default)]
pub struct Notifier {
    /// Started by systemd with `Type=notify` (`NOTIFY_SOCKET` set).
    active: bool,
    failure_logged: AtomicBool,
    last_status: Mutex<String>,
}

impl Notifier {
    pub fn from_env() -> Self {
        Notifier {
            active: std::env::var_os("NOTIFY_SOCKET").is_some(),
            ..Notifier::default()
        }
    }

    fn send(&self, states: &[NotifyState<'_>]) {
        if !self.active {
            return;
        }
        if let Err(e) = sd_notify::notify(false, states) {
            if !self.failure_logged.swap(true, Ordering::Relaxed) {
                tracing::warn!("cannot notify systemd ({e}); going on without (logged once)");
            }
        }
    }

    /// The pool can serve.
    pub fn ready(&self, status: &str) {
        self.remember(status);
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// Sends `STATUS=` when it changed.
    pub fn status(&self, status: &str) {
        if self.remember(status) {
            self.send(&[NotifyState::Status(status)]);
        }
    }

    fn remember(&self, status: &str) -> bool {
        let mut last = self
            .last_status
            .lock()
            .expect("never poisoned: no panics while held");
        if *last == status {
            return false;
        }
        status.clone_into(&mut last);
        true
    }

    pub fn reloading(&self) {
        // systemd ≥ 253 wants the reload's start time with RELOADING=1.
        match NotifyState::monotonic_usec_now() {
            Ok(now) => self.send(&[NotifyState::Reloading, now]),
            Err(_) => self.send(&[NotifyState::Reloading]),
        }
    }

    pub fn stopping(&self) {
        self.send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
    }

    pub fn watchdog(&self) {
        self.send(&[NotifyState::Watchdog]);
    }

    /// Start-up is still progressing: give it `more` beyond now.
    pub fn extend_timeout(&self, more: Duration) {
        let usec = u32::try_from(more.as_micros()).unwrap_or(u32::MAX);
        self.send(&[NotifyState::ExtendTimeoutUsec(usec)]);
    }

    /// A fatal error, for `systemctl status`.
    pub fn fatal(&self, errno: u32, status: &str) {
        self.send(&[NotifyState::Errno(errno), NotifyState::Status(status)]);
    }
}

/// How often to send `WATCHDOG=1`: half of `WATCHDOG_USEC`, when systemd
/// asks for a watchdog for this process.
pub fn watchdog_period() -> Option<Duration> {
    let mut usec = 0;
    sd_notify::watchdog_enabled(false, &mut usec).then(|| Duration::from_micros(usec / 2))
}
