//! How many clients one status or health listener holds at once.
//!
//! Each client has [`CLIENT_TIMEOUT`](super::CLIENT_TIMEOUT) to ask, but
//! without a cap on their number, clients that connect and send nothing
//! would hold a task and a file descriptor each, as many as they open.
//! Past [`MAX_CLIENTS`] a new client ends the oldest one instead of being
//! refused: a load balancer's check sends its request the moment it
//! connects and is answered within a millisecond, so the client that has
//! waited longest is one that is not asking. Refusing the newest instead
//! would let a few dozen idle connections turn every check into a failure
//! (and a host out of the balancer) for as long as they are kept open.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// Clients one listener serves at once; the 65th ends the oldest.
pub const MAX_CLIENTS: usize = 64;

/// Ended clients are said in the log at most this often.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// The clients of one listener, oldest first.
#[derive(Debug, Clone)]
pub struct Clients {
    inner: Arc<Mutex<Inner>>,
    max: usize,
    /// What the log calls the listener.
    name: &'static str,
}

#[derive(Debug, Default)]
struct Inner {
    next_id: u64,
    live: VecDeque<(u64, Arc<Notify>)>,
    /// Clients ended for newer ones since the last warning, and when that was.
    ended: u64,
    warned_at: Option<Instant>,
}

/// One client's place: it ends when [`Ticket::ended`] resolves, and leaves
/// its place when dropped.
#[derive(Debug)]
pub struct Ticket {
    id: u64,
    end: Arc<Notify>,
    clients: Clients,
}

impl Clients {
    pub fn new(max: usize, name: &'static str) -> Self {
        Clients {
            inner: Arc::default(),
            max: max.max(1),
            name,
        }
    }

    /// A place for a new client, ending the oldest one if that is past the
    /// cap.
    pub fn admit(&self) -> Ticket {
        let mut inner = self.lock();
        let id = inner.next_id;
        inner.next_id += 1;
        let end = Arc::new(Notify::new());
        inner.live.push_back((id, end.clone()));
        if inner.live.len() > self.max {
            if let Some((_, oldest)) = inner.live.pop_front() {
                // Stored if that client is not waiting yet: it ends as soon
                // as it does.
                oldest.notify_one();
                inner.ended += 1;
                self.warn(&mut inner);
            }
        }
        drop(inner);
        Ticket {
            id,
            end,
            clients: self.clone(),
        }
    }

    /// How many clients hold a place now.
    pub fn len(&self) -> usize {
        self.lock().live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn warn(&self, inner: &mut Inner) {
        let now = Instant::now();
        if inner.warned_at.is_some_and(|at| now - at < WARN_EVERY) {
            return;
        }
        tracing::warn!(
            "{}: more than {} clients at once; ended the {} that waited longest without \
             asking (idle connections: a scan, or a client that connects and sends nothing)",
            self.name,
            self.max,
            inner.ended
        );
        inner.ended = 0;
        inner.warned_at = Some(now);
    }
}

impl Ticket {
    /// Resolves when a newer client has taken this one's place.
    pub async fn ended(&self) {
        self.end.notified().await;
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut inner = self.clients.lock();
        if let Some(i) = inner.live.iter().position(|(id, _)| *id == self.id) {
            inner.live.remove(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn past_the_cap_the_oldest_client_ends_and_a_finished_one_leaves() {
        let clients = Clients::new(2, "test");
        let first = clients.admit();
        let second = clients.admit();
        assert_eq!(clients.len(), 2);
        drop(second);
        assert_eq!(clients.len(), 1);
        let third = clients.admit();
        let fourth = clients.admit();
        assert_eq!(clients.len(), 2);
        // The first ended (told before it waits: it ends at once)…
        tokio::time::timeout(Duration::from_millis(100), first.ended())
            .await
            .expect("the oldest client ended");
        // …the newer ones did not.
        for ticket in [&third, &fourth] {
            let waited = tokio::time::timeout(Duration::from_millis(20), ticket.ended()).await;
            assert!(waited.is_err());
        }
        drop(first);
        assert_eq!(clients.len(), 2);
        drop((third, fourth));
        assert!(clients.is_empty());
    }
}
