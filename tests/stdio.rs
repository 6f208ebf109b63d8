//! Pages are real Julia programs (issue 11): fds 0-2 are real for the length
//! of a request, so a CGI library that redirects stdout, child processes and
//! C stdio work, through nginx and directly over FastCGI, with a cold and a
//! warm worker; nothing leaks from one request to the next (descriptors
//! counted in /proc); a pool project's local package is precompiled on
//! first use by the service user.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::fcgi::{self, Addr, Request};
use common::web::{curl, start_nginx};
use common::{bin, julia, page, repo, worker_file, Daemon, Options};

/// A CGI library as page authors use them: stdout captured in a pipe from
/// the start, headers and a Content-Length printed from an `atexit` hook.
/// It parses urlencoded and multipart bodies and describes them.
const CGI_LIBRARY: &str = r#"
using SHA
const ORIGINAL = stdout
rd, wr = redirect_stdout()
atexit() do
    redirect_stdout(ORIGINAL)
    close(wr)
    body = read(rd)
    close(rd)
    print("Content-Type: text/plain; charset=utf-8\r\nContent-Length: ", length(body), "\r\n\r\n")
    write(stdout, body)
end
body = read(stdin)
ctype = get(ENV, "CONTENT_TYPE", "")
println("method: ", ENV["REQUEST_METHOD"], "; query: ", get(ENV, "QUERY_STRING", ""))
if startswith(ctype, "multipart/form-data")
    boundary = "--" * split(ctype, "boundary=")[2]
    text = String(copy(body))
    for part in split(text, boundary)[2:end-1]
        head, data = split(part, "\r\n\r\n"; limit=2)
        data = chop(data, tail=2)                      # the CRLF before the boundary
        name = match(r"name=\"([^\"]*)\"", head)[1]
        file = match(r"filename=\"([^\"]*)\"", head)
        bytes = codeunits(data)
        println(name, ": ", file === nothing ? "" : "file $(file[1]) ", length(bytes),
                " bytes, sha256 ", bytes2hex(sha256(bytes)))
    end
else
    for pair in split(String(body), '&'; keepempty=false)
        k, v = split(pair, '='; limit=2)
        println(k, ": ", length(v), " bytes")
    end
end
"#;

const CHILDREN: &str = r#"
print("Content-Type: text/plain\r\n\r\n")
println("one")
run(`echo two`)
run(pipeline(`echo three`, stdout=stdout))
println("four")
ccall(:puts, Cint, (Cstring,), "five")
Libc.flush_cstdio()
print("six\n")
run(pipeline(`wc -c`, stdin=stdin, stdout=stdout))
print(stderr, "stderr of children.jl\n")
"#;

const LEFT_REDIRECTED: &str = r#"
print("Content-Type: text/plain\r\n\r\nvisible\n")
rd, wr = redirect_stdout()
println("lost in a pipe")
"#;

const CLOSED: &str = r#"
print("Content-Type: text/plain\r\n\r\ncomplete\n")
close(stdout)
"#;

fn pages(dir: &Path) {
    page(dir, "cgilib.jl", CGI_LIBRARY);
    page(dir, "children.jl", CHILDREN);
    page(dir, "left.jl", LEFT_REDIRECTED);
    page(dir, "closed.jl", CLOSED);
}

fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

fn only_worker(d: &Daemon) -> i32 {
    let pids = d.worker_pids();
    assert_eq!(pids.len(), 1, "one worker expected: {pids:?}");
    pids[0]
}

/// A multipart body with a binary file under a UTF-8 name and a text field.
fn multipart() -> (String, Vec<u8>, Vec<u8>) {
    let boundary = "----julia-fcgi-test-7d2f";
    let file: Vec<u8> = (0..70_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let mut body = Vec::new();
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"upload\"; \
             filename=\"Grüße ✓.bin\"\r\nContent-Type: application/octet-stream\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(&file);
    body.extend_from_slice(
        format!(
            "\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhi\r\n\
             --{boundary}--\r\n"
        )
        .as_bytes(),
    );
    (
        format!("multipart/form-data; boundary={boundary}"),
        body,
        file,
    )
}

fn sha256_hex(bytes: &[u8]) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)[..64].to_owned()
}

/// What the CGI-library page must answer for the three bodies.
struct Expected {
    get: String,
    urlencoded: String,
    multipart: String,
}

fn expected(file: &[u8], big: usize) -> Expected {
    Expected {
        get: "method: GET; query: a=1\n".into(),
        urlencoded: format!("method: POST; query: \nfield: {big} bytes\n"),
        multipart: format!(
            "method: POST; query: \nupload: file Grüße ✓.bin {} bytes, sha256 {}\n\
             note: 2 bytes, sha256 {}\n",
            file.len(),
            sha256_hex(file),
            sha256_hex(b"hi")
        ),
    }
}

#[test]
fn a_cgi_library_children_and_c_stdio_work_through_nginx_and_fastcgi() {
    let d = Daemon::start(Options::default());
    pages(d.dir.path());
    let Addr::Unix(sock) = &d.addr else {
        unreachable!()
    };
    let nginx = start_nginx(sock, d.dir.path());
    let worker = only_worker(&d);
    let big = "x".repeat(100_000);
    let urlencoded = format!("field={big}");
    let (ctype, body, file) = multipart();
    let want = expected(&file, big.len());
    let mut fds_after_first_round = 0;
    for round in ["cold", "warm"] {
        // Through nginx.
        let r = curl(nginx.port, "/cgilib.jl?a=1", &[]);
        assert_eq!((r.status, r.text()), (200, want.get.clone()), "{round}");
        let r = curl(nginx.port, "/cgilib.jl", &["--data-binary", &urlencoded]);
        assert_eq!(
            (r.status, r.text()),
            (200, want.urlencoded.clone()),
            "{round}"
        );
        let upload = d.dir.path().join("upload.bin");
        std::fs::write(&upload, &body).unwrap();
        let r = curl(
            nginx.port,
            "/cgilib.jl",
            &[
                "-H",
                &format!("Content-Type: {ctype}"),
                "--data-binary",
                &format!("@{}", upload.display()),
            ],
        );
        assert_eq!(
            (r.status, r.text()),
            (200, want.multipart.clone()),
            "{round}"
        );
        let r = curl(nginx.port, "/children.jl", &["--data-binary", "12345"]);
        assert_eq!(r.text(), "one\ntwo\nthree\nfour\nfive\nsix\n5\n", "{round}");
        assert_eq!(curl(nginx.port, "/left.jl", &[]).text(), "visible\n");
        assert_eq!(curl(nginx.port, "/closed.jl", &[]).text(), "complete\n");

        // Directly over FastCGI, with the headers checked.
        let cgilib = d.dir.path().join("cgilib.jl");
        let r = fcgi::request(&d.addr, &Request::get(&cgilib, "a=1"));
        assert_eq!(r.status(), 200);
        assert_eq!(r.header("Content-Length"), Some(want.get.len().to_string()));
        assert_eq!(r.body_text(), want.get);
        let post = Request::post(&cgilib, &ctype, body.clone());
        assert_eq!(fcgi::request(&d.addr, &post).body_text(), want.multipart);
        let children = d.dir.path().join("children.jl");
        let post = Request::post(&children, "text/plain", b"123".to_vec());
        assert_eq!(
            fcgi::request(&d.addr, &post).body_text(),
            "one\ntwo\nthree\nfour\nfive\nsix\n3\n"
        );
        let left = d.dir.path().join("left.jl");
        assert_eq!(fcgi::get(&d.addr, &left, "").body_text(), "visible\n");
        // A pipe left as stdout is collected when the worker is idle.
        std::thread::sleep(Duration::from_millis(300));
        let fds = fd_count(worker);
        if round == "cold" {
            fds_after_first_round = fds;
        } else {
            assert_eq!(fds, fds_after_first_round, "descriptors leaked in a round");
        }
    }
    assert!(
        d.log_text().contains("stderr of children.jl")
            && d.log_text().contains("request_uri=\"/children.jl\""),
        "a page's stderr is logged with its request:\n{}",
        d.log_text()
    );
    assert_eq!(only_worker(&d), worker, "no worker was replaced");
    assert!(!nginx.errors().contains("upstream"), "{}", nginx.errors());
}

/// 10,000 requests of pages that redirect, leave redirected, close and hand
/// their stdin and stdout to children: the worker's descriptors stay as
/// they were.
#[test]
fn ten_thousand_requests_leak_no_descriptor() {
    let d = Daemon::start(Options::default());
    pages(d.dir.path());
    let worker = only_worker(&d);
    let dir = d.dir.path().to_owned();
    let scripts: Vec<PathBuf> = ["cgilib.jl", "left.jl", "closed.jl", "children.jl"]
        .iter()
        .map(|p| dir.join(p))
        .collect();
    // Warm every page up, then count.
    for s in &scripts {
        fcgi::get(&d.addr, s, "");
    }
    std::thread::sleep(Duration::from_millis(300));
    let before = fd_count(worker);
    let mut children_pages = 0;
    for i in 0..10_000 {
        // The child-starting page costs milliseconds: one in ten.
        let s = if i % 10 == 9 {
            children_pages += 1;
            &scripts[3]
        } else {
            &scripts[i % 3]
        };
        let r = fcgi::get(&d.addr, s, "");
        assert_eq!(r.status(), 200, "request {i}: {}", r.body_text());
    }
    std::thread::sleep(Duration::from_millis(300));
    fcgi::get(&d.addr, &scripts[0], "");
    std::thread::sleep(Duration::from_millis(300));
    let after = fd_count(worker);
    eprintln!("worker fds: {before} before, {after} after 10,000 requests ({children_pages} with children)");
    assert_eq!(after, before);
    assert_eq!(only_worker(&d), worker);
}

/// A pool project's local package, used by a page: precompiled on the
/// first request by the service user into the depot, loaded from there by
/// the next worker; `preload` loads it before the worker is ready.
#[test]
fn a_pool_project_package_is_precompiled_by_the_service_user() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root, to run the workers as www-data");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let project = dir.path().join("project");
    common::copy_dir(&repo().join("examples/project"), &project);
    let depot = dir.path().join("depot");
    std::fs::create_dir(&depot).unwrap();
    let www_data = nix::unistd::User::from_name("www-data").unwrap().unwrap();
    nix::unistd::chown(&depot, Some(www_data.uid), Some(www_data.gid)).unwrap();
    let config = format!(
        "project = \"{}\"\ndepot = \"{}\"\n",
        project.display(),
        depot.display()
    );

    let start = |extra: &str| {
        let path = dir.path().join(format!("julia-fcgi{extra}.toml"));
        std::fs::write(&path, format!("{config}{extra}")).unwrap();
        let socket = dir.path().join(format!("fcgi{}.sock", extra.len()));
        let mut cmd = Command::new(bin());
        cmd.arg("-l")
            .arg(&socket)
            .args(["-b"])
            .arg(julia())
            .arg("-v")
            .arg(worker_file())
            .args(["-u", "www-data", "--socket-mode", "0600", "-c"])
            .arg(&path)
            .arg("--runtime-dir")
            .arg(dir.path().join(format!("run{}", extra.len())))
            .env_remove("JULIA_DEPOT_PATH")
            .env_remove("JULIA_PROJECT");
        let d = Daemon::spawn(cmd, Addr::Unix(socket), tempfile::tempdir().unwrap());
        d.wait_for_log("ready:", common::READY_TIMEOUT);
        d
    };

    let greet = project.join("greet.jl");
    {
        let d = start("");
        for (round, name) in [("cold", "Ada"), ("warm", "Grace")] {
            let r = fcgi::get(&d.addr, &greet, name);
            assert_eq!(
                r.status(),
                200,
                "{round}: {}\n{}",
                r.body_text(),
                d.log_text()
            );
            assert!(
                r.body_text().contains(&format!("Hello, {name}!")),
                "{round}: {}",
                r.body_text()
            );
        }
    }
    // Precompiled by the first request, as the service user, into the depot.
    let cache = common::files_under(&depot.join("compiled"))
        .into_iter()
        .find(|p| p.extension().is_some_and(|e| e == "ji"))
        .expect("a precompiled Greeting");
    assert!(cache.to_string_lossy().contains("Greeting"), "{cache:?}");
    assert_eq!(
        std::fs::metadata(&cache).unwrap().uid(),
        www_data.uid.as_raw()
    );

    // preload: loaded (from that cache) before the worker is ready.
    let d = start("preload = [\"Greeting\"]\n");
    d.wait_for_log("package Greeting loaded", Duration::from_secs(5));
    let r = fcgi::get(&d.addr, &greet, "Hopper");
    assert!(
        r.body_text().contains("Hello, Hopper!"),
        "{}",
        r.body_text()
    );
}
