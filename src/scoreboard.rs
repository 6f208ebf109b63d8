//! The scoreboard: one slot per worker process in a shared file, written by
//! the worker around each request without a system call, read by the master
//! on a timer. It is how the master knows, without being in the data path,
//! which worker is busy with what and for how long: request timeouts, the
//! slow-request log, recycling and `STATUS=` all read it.
//!
//! The layout is defined once, in `julia/INTERFACE.md`; the offsets below
//! follow it. Reads use the slot's sequence counter (a seqlock), so a torn
//! read is impossible.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::time::Duration;

pub const MAGIC: &[u8; 8] = b"JFCGISB1";
pub const VERSION: u32 = 2;
pub const HEADER_SIZE: usize = 64;
pub const SLOT_SIZE: usize = 512;

const SEQ: usize = 0;
const PID: usize = 8;
const STATE: usize = 12;
const REQUESTS: usize = 16;
const STARTED_NS: usize = 24;
const LAST_DURATION_NS: usize = 32;
const LAST_FINISHED_NS: usize = 40;
const METHOD_LEN: usize = 48;
const METHOD: usize = 49;
const METHOD_MAX: usize = 15;
const PARKED: usize = 64;
const URI_LEN: usize = 68;
const URI: usize = 70;
const URI_MAX: usize = SLOT_SIZE - URI;

/// What a worker says it is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Free,
    Starting,
    Idle,
    Busy,
    Stopping,
}

impl State {
    fn from_u32(n: u32) -> State {
        match n {
            1 => State::Starting,
            2 => State::Idle,
            3 => State::Busy,
            4 => State::Stopping,
            _ => State::Free,
        }
    }
}

/// One consistent copy of a slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub pid: u32,
    pub state: State,
    pub requests: u64,
    /// Monotonic time the current request started (meaningful when busy).
    pub started_ns: u64,
    pub last_duration: Duration,
    pub last_finished_ns: u64,
    pub method: String,
    pub uri: String,
    /// Connections the worker has accepted and set aside until their
    /// request head comes ("parked"): clients that wait, though they are
    /// in no listen queue and on no busy worker.
    pub parked: u32,
}

impl Snapshot {
    /// How long the current request has been running.
    pub fn busy_for(&self, now_ns: u64) -> Option<Duration> {
        (self.state == State::Busy)
            .then(|| Duration::from_nanos(now_ns.saturating_sub(self.started_ns)))
    }
}

/// The master's side: owns the file and hands slots out.
pub struct Scoreboard {
    path: PathBuf,
    file: File,
    map: *mut u8,
    slots: usize,
    in_use: Vec<bool>,
}

// The mapping is only touched through `&self`/`&mut self` of this one owner,
// on the master's single runtime thread.
unsafe impl Send for Scoreboard {}

impl Scoreboard {
    /// Creates (or truncates) the scoreboard file at `path` with room for
    /// `slots` worker processes.
    ///
    /// The file holds every request's URI with its query string, so it is
    /// the owner's alone (0600), whatever the umask and whatever mode an
    /// old file had; a symlink in its place is refused, not followed. The
    /// workers never open it by name: they get the open descriptor.
    pub fn create(path: &Path, slots: usize) -> io::Result<Scoreboard> {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let len = HEADER_SIZE + SLOT_SIZE * slots;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)?;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        file.set_len(len as u64)?;
        // SAFETY: a fresh shared mapping of a file we own, of its full length.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if map == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let mut board = Scoreboard {
            path: path.to_owned(),
            file,
            map: map.cast(),
            slots,
            in_use: vec![false; slots],
        };
        let header = board.bytes_mut(0, HEADER_SIZE);
        header[..8].copy_from_slice(MAGIC);
        header[8..12].copy_from_slice(&VERSION.to_le_bytes());
        header[12..16].copy_from_slice(&(SLOT_SIZE as u32).to_le_bytes());
        header[16..20].copy_from_slice(&(slots as u32).to_le_bytes());
        Ok(board)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file, to be passed to the workers.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Takes a free slot for a new worker; `None` when all are taken.
    pub fn allocate(&mut self) -> Option<usize> {
        let slot = self.in_use.iter().position(|used| !used)?;
        self.in_use[slot] = true;
        // A fresh slot reads as "starting", whatever the last owner left.
        self.bytes_mut(HEADER_SIZE + slot * SLOT_SIZE, SLOT_SIZE)
            .fill(0);
        self.bytes_mut(HEADER_SIZE + slot * SLOT_SIZE + STATE, 4)
            .copy_from_slice(&1u32.to_le_bytes());
        Some(slot)
    }

    pub fn release(&mut self, slot: usize) {
        if let Some(used) = self.in_use.get_mut(slot) {
            *used = false;
            self.bytes_mut(HEADER_SIZE + slot * SLOT_SIZE, SLOT_SIZE)
                .fill(0);
        }
    }

    /// A consistent copy of `slot`; `None` if the writer kept it busy for
    /// every try (it writes a few dozen bytes, so that means it died mid-write).
    pub fn read(&self, slot: usize) -> Option<Snapshot> {
        assert!(slot < self.slots);
        let base = HEADER_SIZE + slot * SLOT_SIZE;
        // SAFETY: in bounds and 8-aligned (header and slot sizes are
        // multiples of 8, mmap is page-aligned).
        let seq = unsafe { &*(self.map.add(base + SEQ) as *const AtomicU64) };
        for _ in 0..1000 {
            let before = seq.load(Ordering::Acquire);
            if before % 2 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let mut copy = [0u8; SLOT_SIZE];
            // SAFETY: reading bytes of the shared mapping; a concurrent write
            // only makes the copy stale, which the seq check detects.
            unsafe {
                std::ptr::copy_nonoverlapping(self.map.add(base), copy.as_mut_ptr(), SLOT_SIZE);
            }
            fence(Ordering::Acquire);
            if seq.load(Ordering::Relaxed) == before {
                return Some(decode(&copy));
            }
        }
        None
    }

    fn bytes_mut(&mut self, offset: usize, len: usize) -> &mut [u8] {
        let total = HEADER_SIZE + SLOT_SIZE * self.slots;
        assert!(offset + len <= total);
        // SAFETY: in bounds of the mapping; `&mut self` makes the master's
        // access exclusive, and it only writes the header or slots no
        // worker owns.
        unsafe { std::slice::from_raw_parts_mut(self.map.add(offset), len) }
    }
}

impl Drop for Scoreboard {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `create` mapped.
        unsafe {
            libc::munmap(self.map.cast(), HEADER_SIZE + SLOT_SIZE * self.slots);
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Decodes one slot's bytes (a copy taken under the seqlock).
pub fn decode(b: &[u8]) -> Snapshot {
    let method_len = (b[METHOD_LEN] as usize).min(METHOD_MAX);
    let uri_len = (u16::from_le_bytes([b[URI_LEN], b[URI_LEN + 1]]) as usize).min(URI_MAX);
    Snapshot {
        pid: u32_at(b, PID),
        state: State::from_u32(u32_at(b, STATE)),
        requests: u64_at(b, REQUESTS),
        started_ns: u64_at(b, STARTED_NS),
        last_duration: Duration::from_nanos(u64_at(b, LAST_DURATION_NS)),
        last_finished_ns: u64_at(b, LAST_FINISHED_NS),
        method: String::from_utf8_lossy(&b[METHOD..METHOD + method_len]).into_owned(),
        uri: String::from_utf8_lossy(&b[URI..URI + uri_len]).into_owned(),
        parked: u32_at(b, PARKED),
    }
}

/// Now on the clock the workers use (`time_ns()` in Julia).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to fill; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes a slot the way a worker does (seq odd, fields, seq even).
    fn write_busy(board: &mut Scoreboard, slot: usize, pid: u32, uri: &str) {
        let base = HEADER_SIZE + slot * SLOT_SIZE;
        let b = board.bytes_mut(base, SLOT_SIZE);
        let seq = u64_at(b, SEQ);
        b[SEQ..SEQ + 8].copy_from_slice(&(seq + 1).to_le_bytes());
        b[PID..PID + 4].copy_from_slice(&pid.to_le_bytes());
        b[STATE..STATE + 4].copy_from_slice(&3u32.to_le_bytes());
        b[REQUESTS..REQUESTS + 8].copy_from_slice(&7u64.to_le_bytes());
        b[METHOD_LEN] = 3;
        b[METHOD..METHOD + 3].copy_from_slice(b"GET");
        b[PARKED..PARKED + 4].copy_from_slice(&5u32.to_le_bytes());
        b[URI_LEN..URI_LEN + 2].copy_from_slice(&(uri.len() as u16).to_le_bytes());
        b[URI..URI + uri.len()].copy_from_slice(uri.as_bytes());
        b[SEQ..SEQ + 8].copy_from_slice(&(seq + 2).to_le_bytes());
    }

    #[test]
    fn slots_round_trip_and_are_recycled() {
        let dir = tempfile::tempdir().unwrap();
        let mut board = Scoreboard::create(&dir.path().join("sb"), 3).unwrap();
        let header = std::fs::read(dir.path().join("sb")).unwrap();
        assert_eq!(&header[..8], MAGIC);
        assert_eq!(header.len(), HEADER_SIZE + 3 * SLOT_SIZE);
        let a = board.allocate().unwrap();
        let b = board.allocate().unwrap();
        assert_ne!(a, b);
        assert_eq!(board.read(a).unwrap().state, State::Starting);
        write_busy(&mut board, b, 42, "/x.jl?y=1");
        let snap = board.read(b).unwrap();
        assert_eq!(
            (snap.pid, snap.state, snap.requests, snap.parked),
            (42, State::Busy, 7, 5)
        );
        assert_eq!(
            (snap.method.as_str(), snap.uri.as_str()),
            ("GET", "/x.jl?y=1")
        );
        board.release(b);
        assert_eq!(board.read(b).unwrap().state, State::Free);
        assert!(board.allocate().is_some());
        assert!(board.allocate().is_some());
        assert!(board.allocate().is_none());
    }

    /// The slot table of `julia/INTERFACE.md` (the contract the Julia side
    /// follows too) says what these offsets say.
    #[test]
    fn the_layout_is_the_contract() {
        let contract = include_str!("../julia/INTERFACE.md");
        let section = contract
            .split("## Scoreboard")
            .nth(1)
            .and_then(|s| s.split("\n## ").next())
            .expect("INTERFACE.md has a Scoreboard section");
        assert!(
            section.contains(&format!("`u32` layout version ({VERSION})")),
            "{section}"
        );
        let rows: Vec<(usize, String)> = section
            .lines()
            .filter_map(|l| {
                let cells: Vec<&str> = l.split('|').map(str::trim).collect();
                Some((cells.get(1)?.parse().ok()?, cells.get(3)?.to_string()))
            })
            .collect();
        let expected = [
            (SEQ, "`seq`"),
            (PID, "`pid`"),
            (STATE, "`state`"),
            (REQUESTS, "`requests`"),
            (STARTED_NS, "`started_ns`"),
            (LAST_DURATION_NS, "`last_duration_ns`"),
            (LAST_FINISHED_NS, "`last_finished_ns`"),
            (METHOD_LEN, "method length"),
            (METHOD, "`REQUEST_METHOD`"),
            (PARKED, "`parked`"),
            (URI_LEN, "URI length"),
            (URI, "`REQUEST_URI`"),
        ];
        assert_eq!(rows.len(), expected.len(), "{rows:?}");
        for ((offset, field), (at, name)) in rows.iter().zip(expected) {
            assert_eq!(*offset, at, "{name}: {field}");
            assert!(field.starts_with(name), "{name} at {at}: {field}");
        }
        assert!(section.contains(&format!("URI length (≤ {URI_MAX})")));
        assert!(section.contains(&format!("| {URI_MAX} bytes |")));
    }

    #[test]
    fn an_odd_sequence_is_never_read() {
        let dir = tempfile::tempdir().unwrap();
        let mut board = Scoreboard::create(&dir.path().join("sb"), 1).unwrap();
        let slot = board.allocate().unwrap();
        board
            .bytes_mut(HEADER_SIZE, 8)
            .copy_from_slice(&1u64.to_le_bytes());
        assert_eq!(board.read(slot), None);
    }
}
