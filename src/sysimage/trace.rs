//! A real worker, started the way the master starts one (listening socket
//! on fd 0, control channel, scoreboard slot), warmed up, sent a few real
//! requests over its socket, then stopped. A build runs one from source
//! with `--trace-compile` to record what serving compiles, and one on the
//! new image to see it start and serve before the image is installed.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::client::{self, Request};
use crate::scoreboard::Scoreboard;

/// How a test worker went.
#[derive(Debug)]
pub struct WorkerRun {
    /// From spawn to `READY`.
    pub ready_after: Duration,
    /// What each page answered (STDOUT), in the order of [`PAGES`].
    pub answers: Vec<String>,
}

/// The pages, and a piece of what each must answer.
const PAGES: &[(&str, &str, &str)] = &[
    (
        "cgi.jl",
        "println(\"Content-Type: text/plain\\n\")\nprintln(\"cgi \", get(ENV, \"QUERY_STRING\", \"\"))\n",
        "cgi a=1",
    ),
    (
        "handler.jl",
        "const N = Ref(0)\nhandle() = print(\"Content-Type: text/plain\\r\\n\\r\\nhandler \", N[] += 1)\n",
        "handler 1",
    ),
    (
        "post.jl",
        "b = read(stdin, String)\nprint(\"Content-Type: text/plain\\r\\n\\r\\npost \", length(b))\n",
        "post 5",
    ),
    (
        "throws.jl",
        "error(\"thrown on purpose\")\n",
        "500",
    ),
];

/// Starts `julia ARGS… worker_file` in `dir` with the worker environment
/// `env`, waits for `READY` (at most `timeout`), sends each of [`PAGES`]
/// (on one kept connection) and stops it. `starting` hears the worker's
/// `STARTING` messages. Fails with the reason and the worker's last output.
pub fn run_worker(
    julia: &Path,
    julia_args: &[OsString],
    worker_file: &Path,
    env: &[(OsString, OsString)],
    dir: &Path,
    timeout: Duration,
    starting: &mut dyn FnMut(&str),
) -> Result<WorkerRun, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for (name, text, _) in PAGES {
        std::fs::write(dir.join(name), text).map_err(|e| format!("{name}: {e}"))?;
    }
    let socket = dir.join("worker.sock");
    let _ = std::fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket).map_err(|e| format!("{}: {e}", socket.display()))?;
    let board = Scoreboard::create(&dir.join("scoreboard"), 1).map_err(|e| e.to_string())?;
    let log = dir.join("worker.log");
    let mut worker = Worker::spawn(julia, julia_args, worker_file, env, listener, &board, &log)
        .map_err(|e| format!("cannot start {}: {e}", julia.display()))?;
    let result = worker.serve(dir, &socket, timeout, starting);
    worker.stop();
    result.map_err(|why| format!("{why}\n{}", tail(&log, 30)))
}

struct Worker {
    child: Child,
    control: BufReader<UnixStream>,
    started: Instant,
}

impl Worker {
    fn spawn(
        julia: &Path,
        julia_args: &[OsString],
        worker_file: &Path,
        env: &[(OsString, OsString)],
        listener: UnixListener,
        board: &Scoreboard,
        log: &Path,
    ) -> std::io::Result<Worker> {
        let (ours, theirs) = UnixStream::pair()?;
        let their_fd = theirs.as_raw_fd();
        let board_fd = board.file().as_raw_fd();
        let out = std::fs::File::create(log)?;
        let mut command = Command::new(julia);
        command
            .args(julia_args)
            .args(["--startup-file=no", "--history-file=no", "--color=no"])
            .arg(worker_file)
            .env_clear()
            .envs(worker_env(env))
            .env("JULIA_FCGI_WORKER", "1")
            .env("JULIA_FCGI_CONTROL_FD", their_fd.to_string())
            .env("JULIA_FCGI_SCOREBOARD_FD", board_fd.to_string())
            .env("JULIA_FCGI_SCOREBOARD_SLOT", "0")
            .current_dir("/")
            .stdin(Stdio::from(OwnedFd::from(listener)))
            .stdout(Stdio::from(out.try_clone()?))
            .stderr(Stdio::from(out));
        // SAFETY: fcntl only, between fork and exec: the worker inherits its
        // end of the control channel and the scoreboard, as from the master.
        unsafe {
            command.pre_exec(move || {
                for fd in [their_fd, board_fd] {
                    if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let started = Instant::now();
        let child = command.spawn()?;
        drop(theirs);
        ours.set_read_timeout(Some(Duration::from_millis(500)))?;
        Ok(Worker {
            child,
            control: BufReader::new(ours),
            started,
        })
    }

    fn serve(
        &mut self,
        dir: &Path,
        socket: &Path,
        timeout: Duration,
        starting: &mut dyn FnMut(&str),
    ) -> Result<WorkerRun, String> {
        let ready_after = self.await_ready(timeout, starting)?;
        let requests: Vec<Request> = PAGES
            .iter()
            .map(|(name, _, _)| request(&dir.join(name)))
            .collect();
        let mut stream = UnixStream::connect(socket)
            .map_err(|e| format!("cannot connect to the worker: {e}"))?;
        let answers = client::exchange(&mut stream, &requests)
            .map_err(|e| format!("the worker did not answer: {e}"))?;
        let answers: Vec<String> = answers
            .iter()
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        for ((name, _, expected), answer) in PAGES.iter().zip(&answers) {
            if !answer.contains(expected) {
                return Err(format!(
                    "{name} answered {answer:?}, expected {expected:?} in it"
                ));
            }
        }
        Ok(WorkerRun {
            ready_after,
            answers,
        })
    }

    fn await_ready(
        &mut self,
        timeout: Duration,
        starting: &mut dyn FnMut(&str),
    ) -> Result<Duration, String> {
        let mut line = String::new();
        loop {
            if self.started.elapsed() > timeout {
                return Err(format!(
                    "the worker was not ready after {} s",
                    timeout.as_secs()
                ));
            }
            line.clear();
            match self.control.read_line(&mut line) {
                Ok(0) => {
                    let status = self.child.wait().map_err(|e| e.to_string())?;
                    return Err(format!("the worker ended before it was ready ({status})"));
                }
                Ok(_) => {
                    let line = line.trim_end();
                    if line == "READY" {
                        return Ok(self.started.elapsed());
                    }
                    if let Some(what) = line.strip_prefix("STARTING\t") {
                        starting(what);
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(format!("control channel: {e}")),
            }
        }
    }

    /// STOP, as the master says it, then a kill if it lingers.
    fn stop(&mut self) {
        let _ = self.control.get_mut().write_all(b"STOP\n");
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The pool's worker environment, with what the test pages need: any
/// document root and `.jl` pages, and the access log on, so that its code
/// is compiled too.
fn worker_env(env: &[(OsString, OsString)]) -> Vec<(OsString, OsString)> {
    const OURS: [(&str, &str); 3] = [
        ("JULIA_FCGI_DOC_ROOTS", ""),
        ("JULIA_FCGI_EXTENSIONS", ".jl"),
        ("JULIA_FCGI_ACCESS_LOG", "1"),
    ];
    let mut out: Vec<(OsString, OsString)> = env
        .iter()
        .filter(|(k, _)| !OURS.iter().any(|(name, _)| k == name))
        .cloned()
        .collect();
    out.extend(OURS.iter().map(|(k, v)| (k.into(), v.into())));
    out
}

fn request(page: &Path) -> Request<'static> {
    let path = page.display().to_string();
    let name = format!(
        "/{}",
        page.file_name().unwrap_or_default().to_string_lossy()
    );
    let post = name == "/post.jl";
    let mut params = vec![
        ("GATEWAY_INTERFACE", "CGI/1.1".to_owned()),
        (
            "REQUEST_METHOD",
            if post { "POST" } else { "GET" }.to_owned(),
        ),
        ("SCRIPT_FILENAME", path),
        ("SCRIPT_NAME", name.clone()),
        ("QUERY_STRING", "a=1".to_owned()),
        ("REQUEST_URI", format!("{name}?a=1")),
        ("SERVER_PROTOCOL", "HTTP/1.1".to_owned()),
        ("REMOTE_ADDR", "127.0.0.1".to_owned()),
        ("SERVER_NAME", "localhost".to_owned()),
        ("SERVER_PORT", "80".to_owned()),
        ("HTTP_HOST", "localhost".to_owned()),
    ];
    if post {
        params.push(("CONTENT_TYPE", "text/plain".to_owned()));
        params.push(("CONTENT_LENGTH", "5".to_owned()));
    }
    Request {
        params,
        body: if post { b"hello" } else { b"" },
    }
}

/// The last `n` lines of a file, to explain a failure.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A scratch directory for one run, removed with it.
pub struct Scratch(pub PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
