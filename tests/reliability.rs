//! What a page or a hostile client can do to the pool, and what the master
//! does about it: a page that crashes its worker over and over, descriptors
//! the master inherited, the privacy of the runtime files, and a flood of
//! bad FastCGI streams in the log. Real daemon, real Julia workers.

mod common;

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::fcgi::{self, Request};
use common::{page, Daemon, Options};

const HELLO: &str = r#"print("Content-Type: text/plain\r\n\r\nhello")"#;

/// Sends one request to a page that kills its worker; returns when the
/// connection is gone (the worker died with it).
fn crash(d: &Daemon, crash_page: &std::path::Path) {
    let mut s = fcgi::connect(&d.addr);
    s.write_all(&Request::get(crash_page, "").encode()).unwrap();
    // Nothing comes back: the worker dies before it answers.
    while fcgi::read_record(&mut *s).is_some() {}
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The issue's probe: a page that crashes its worker, hit every 2 s for
/// 60 s, while another client asks for hello.jl all along. The crashed
/// worker is replaced at once every time (no back-off, which is for
/// workers that cannot start), so hello.jl is always served by the other
/// slot: p99 under 100 ms, none over 1 s.
///
/// The daemon runs on the pool sysimage (tests/common/sysimage.rs), as a
/// pool does once its image is built: a replacement is ready in a fraction
/// of a second. From source one takes 3-5 s on a busy 2-core machine, more
/// than the 2 s between crashes, so a crash would find the other slot
/// alone and take it down too (p99 8.1 s so). `JF_CRASH_EVERY_MS` and
/// `JF_CRASH_COUNT` change the probe by hand.
#[test]
fn a_page_that_crashes_its_worker_does_not_hold_up_the_other_slot() {
    let d = common::sysimage::fixture().daemon_on_image(2, "");
    let hello = page(d.dir.path(), "hello.jl", HELLO);
    let crash_page = page(d.dir.path(), "crash.jl", "ccall(:abort, Cvoid, ())");
    assert_eq!(fcgi::get(&d.addr, &hello, "").body_text(), "hello");

    // How long one replacement takes here (said, not a bar).
    let mark = d.log_len();
    let t0 = Instant::now();
    crash(&d, &crash_page);
    d.wait_for_log_after(mark, "worker ready", Duration::from_secs(120));
    let replacement = t0.elapsed();
    let env = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
    let every = Duration::from_millis(env("JF_CRASH_EVERY_MS").unwrap_or(2000));
    let count = env("JF_CRASH_COUNT").unwrap_or(30) as u32;
    eprintln!(
        "replacement took {:.0} ms; crashing a worker every {:.0} ms, {count} times",
        millis(replacement),
        millis(every)
    );
    let mark = d.log_len();
    let stop = Arc::new(AtomicBool::new(false));
    let client = {
        let (addr, hello, stop) = (d.addr.clone(), hello.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut latencies = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let body = fcgi::get(&addr, &hello, "").body_text();
                latencies.push((t.elapsed(), t));
                assert_eq!(body, "hello");
                std::thread::sleep(Duration::from_millis(10));
            }
            latencies
        })
    };
    let start = Instant::now();
    let start_wall = std::time::SystemTime::now();
    for i in 0..count {
        let at = start + every * i;
        std::thread::sleep(at.saturating_duration_since(Instant::now()));
        crash(&d, &crash_page);
    }
    // The last replacement warms up while hello.jl goes on.
    let warm = Instant::now();
    while d.log()[mark..]
        .iter()
        .filter(|l| l.contains("worker ready"))
        .count()
        < count as usize
    {
        assert!(
            warm.elapsed() < Duration::from_secs(120),
            "{}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    let mut timed = client.join().unwrap();
    timed.sort();
    // The slowest, and when they were asked: how long after a crash.
    let slowest: Vec<String> = timed
        .iter()
        .rev()
        .take(5)
        .map(|(took, at)| {
            let since = at.saturating_duration_since(start);
            let after_crash =
                Duration::from_nanos((since.as_nanos() % every.as_nanos().max(1)) as u64);
            let wall = (start_wall + since)
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            let day = wall.as_secs() % 86400;
            format!(
                "{:.1} ms at {:.3} s ({:.0} ms after a crash, {:02}:{:02}:{:02}.{:03}Z)",
                millis(*took),
                since.as_secs_f64(),
                millis(after_crash),
                day / 3600,
                day / 60 % 60,
                day % 60,
                wall.subsec_millis()
            )
        })
        .collect();
    eprintln!("slowest: {slowest:?}");
    let latencies: Vec<Duration> = timed.iter().map(|(took, _)| *took).collect();
    let p99 = latencies[latencies.len() * 99 / 100];
    let max = *latencies.last().unwrap();
    let log = d.log()[mark..].to_vec();
    let deaths: Vec<&String> = log.iter().filter(|l| l.contains("worker died")).collect();
    eprintln!(
        "hello.jl: {} requests, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; {} deaths",
        latencies.len(),
        millis(latencies[latencies.len() / 2]),
        millis(p99),
        millis(max),
        deaths.len()
    );
    assert_eq!(deaths.len(), count as usize, "{log:#?}");
    for line in &deaths {
        assert!(line.contains("SIGABRT"), "{line}");
        assert!(
            line.contains("; replacing it"),
            "a ready worker's death is replaced at once: {line}"
        );
    }
    assert!(p99 < Duration::from_millis(100), "p99 {p99:?}");
    assert!(max < Duration::from_secs(1), "max {max:?}");
    assert_eq!(d.worker_pids().len(), 2);
}

/// Whether `fd` of process `pid` is close-on-exec, from its fdinfo.
fn close_on_exec(pid: i32, fd: i32) -> bool {
    let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).unwrap();
    let flags = info
        .lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .map(|f| u32::from_str_radix(f.trim(), 8).unwrap())
        .unwrap();
    flags & libc::O_CLOEXEC as u32 != 0
}

/// What each descriptor of `pid` points to.
fn descriptors(pid: i32) -> Vec<(i32, String)> {
    let mut fds: Vec<(i32, String)> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .map(|e| {
            let fd = e.file_name().to_string_lossy().parse().unwrap();
            let target = std::fs::read_link(e.path()).unwrap_or_default();
            (fd, target.display().to_string())
        })
        .collect();
    fds.sort();
    fds
}

/// The daemon is started the way a careless shell or supervisor starts
/// things, with a file open at fd 10 and a pipe at fd 251: neither reaches
/// a worker, nor a program a page runs (which gets exactly 0, 1 and 2); the
/// master keeps them, close-on-exec.
#[test]
fn inherited_descriptors_reach_neither_workers_nor_page_children() {
    let scratch = tempfile::tempdir().unwrap();
    let secret = scratch.path().join("inherited.txt");
    std::fs::write(&secret, "not for workers").unwrap();
    let file = std::fs::File::open(&secret).unwrap();
    let mut pipe = [0; 2];
    // SAFETY: plain descriptor calls in this test's own process (nextest
    // runs each test in a process of its own); dup2 leaves the copies
    // inheritable, which is the point.
    unsafe {
        assert_eq!(libc::pipe(pipe.as_mut_ptr()), 0);
        assert_eq!(libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&file), 10), 10);
        assert_eq!(libc::dup2(pipe[1], 251), 251);
        libc::close(pipe[0]);
        libc::close(pipe[1]);
    }
    let pipe_target = std::fs::read_link("/proc/self/fd/251")
        .unwrap()
        .display()
        .to_string();
    let inherited = [secret.display().to_string(), pipe_target.clone()];

    let d = Daemon::start(Options {
        workers: 2,
        ..Options::default()
    });
    let master = descriptors(d.pid());
    for (fd, target) in [(10, &inherited[0]), (251, &inherited[1])] {
        assert!(master.contains(&(fd, target.clone())), "{master:?}");
        assert!(close_on_exec(d.pid(), fd), "master fd {fd} is inheritable");
    }
    let workers = d.worker_pids();
    assert_eq!(workers.len(), 2);
    for pid in &workers {
        let fds = descriptors(*pid);
        for (fd, target) in &fds {
            assert!(
                !inherited.contains(target),
                "worker {pid} has fd {fd} -> {target}: {fds:?}"
            );
        }
    }

    // A program a page starts: its descriptors, listed by the page itself
    // while it runs.
    let p = page(
        d.dir.path(),
        "spawn.jl",
        r#"p = run(`sleep 30`, wait=false)
# Between fork and exec the child still has every descriptor (close-on-exec
# ones close at exec): look once it runs `sleep`.
for _ in 1:500
    occursin("sleep", try readlink("/proc/$(getpid(p))/exe") catch; "" end) && break
    sleep(0.01)
end
fds = sort(parse.(Int, readdir("/proc/$(getpid(p))/fd")))
kill(p)
print("Content-Type: text/plain\r\n\r\n", join(fds, ","))"#,
    );
    let response = fcgi::get(&d.addr, &p, "");
    assert_eq!(response.status(), 200, "{}", d.log_text());
    assert_eq!(response.body_text(), "0,1,2", "a page's child process");
}

/// The scoreboard holds every request's URI and query string, and the
/// status socket shows them: both are private to the service user (and its
/// group, for the socket), even with a umask of 0.
#[test]
fn the_scoreboard_and_the_status_socket_are_private_whatever_the_umask() {
    // SAFETY: umask in this test's own process; the daemon inherits it.
    unsafe {
        libc::umask(0);
    }
    let d = Daemon::start(Options::default());
    let mode = |name: &str| {
        let path = d.dir.path().join(name);
        let meta = std::fs::metadata(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o7777
    };
    assert_eq!(mode("scoreboard"), 0o600, "scoreboard");
    let status = mode("status.sock");
    assert!(
        status == 0o600 || status == 0o660,
        "status.sock is {status:o}"
    );
    // The page's view through the scoreboard works all the same.
    let p = page(d.dir.path(), "hello.jl", HELLO);
    assert_eq!(fcgi::get(&d.addr, &p, "").body_text(), "hello");
}

/// A hostile client sends hundreds of bad FastCGI streams (a version byte
/// of 7): each is a warning from a worker, but the log shows the first few
/// and then how many more there were, instead of one line per stream; a
/// different kind of entry during the flood still shows.
#[test]
fn a_flood_of_bad_streams_is_logged_as_a_burst_and_a_count() {
    const STREAMS: usize = 300;
    let d = Daemon::start(Options {
        workers: 2,
        ..Options::default()
    });
    let thrower = page(d.dir.path(), "throw.jl", "error(\"boom during the flood\")");
    let mark = d.log_len();
    let started = Instant::now();
    for _ in 0..STREAMS {
        let mut s = fcgi::connect(&d.addr);
        s.write_all(&[7, 1, 0, 1, 0, 0, 0, 0]).unwrap();
        // Until the worker hangs up: every stream is read, none is queued.
        let mut buf = [0u8; 64];
        while matches!(std::io::Read::read(&mut s, &mut buf), Ok(n) if n > 0) {}
    }
    let flood = started.elapsed();
    assert_eq!(fcgi::get(&d.addr, &thrower, "").status(), 500);
    d.wait_for_log_after(mark, "boom during the flood", Duration::from_secs(10));

    let summary = d.wait_for_log_after(
        mark,
        "more like it in the last 10 s",
        Duration::from_secs(30),
    );
    let suppressed: usize = summary
        .split("… and ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {summary:?}"));
    let log = d.log()[mark..].to_vec();
    let shown = log
        .iter()
        .filter(|l| l.contains("closing FastCGI connection: not a FastCGI"))
        .count();
    eprintln!(
        "{STREAMS} bad streams in {:.0} ms: {shown} warnings logged, then {summary:?}",
        millis(flood)
    );
    assert!(
        summary.contains("closing FastCGI connection: …"),
        "{summary}"
    );
    assert!(shown <= 10, "{shown} warnings logged:\n{log:#?}");
    assert_eq!(shown + suppressed, STREAMS, "{log:#?}");
}

/// Pages run as the master's user (under systemd both are `User=`), and a
/// process may ptrace or read `/proc/PID/environ`, `mem` and `fd` of any
/// process of its own user that is dumpable. The master makes itself
/// non-dumpable: a page cannot look inside it. (A page can still signal it;
/// the README says why that is accepted and what isolating it would cost.)
#[test]
fn pages_cannot_inspect_the_master_they_share_a_user_with() {
    use std::os::unix::process::CommandExt;
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    let dir = tempfile::tempdir().unwrap();
    nix::unistd::chown(dir.path(), Some(nobody.uid), Some(nobody.gid)).unwrap();
    let sock = dir.path().join("fcgi.sock");
    let mut cmd = std::process::Command::new(common::bin());
    cmd.arg("-l")
        .arg(&sock)
        .arg("-b")
        .arg(common::julia())
        .arg("-v")
        .arg(common::worker_file())
        .arg("-h")
        .arg(dir.path())
        .arg("--runtime-dir")
        .arg(dir.path())
        .uid(nobody.uid.as_raw())
        .gid(nobody.gid.as_raw());
    let page_dir = dir.path().to_owned();
    let d = Daemon::spawn(cmd, common::Addr::Unix(sock), dir);
    d.wait_for_log("ready:", common::READY_TIMEOUT);
    let p = page(
        &page_dir,
        "peek.jl",
        r#"m = ccall(:getppid, Cint, ())
environ = try read("/proc/$m/environ", String); "read" catch; "denied" end
signal = ccall(:kill, Cint, (Cint, Cint), m, 0) == 0 ? "allowed" : "denied"
print("Content-Type: text/plain\r\n\r\n", "environ=", environ, " signal=", signal)"#,
    );
    let body = fcgi::get(&d.addr, &p, "").body_text();
    eprintln!("a page's view of its master: {body}");
    assert!(body.starts_with("environ=denied"), "{body}");
}
