//! Pages as their authors see them: CGI environment, headers, errors,
//! caching and handler pages, against real Julia workers.

mod common;

use std::time::Duration;

use common::fcgi::{self, Request};
use common::{page, Daemon, Options};

#[test]
fn cgi_environment_is_exactly_the_request() {
    let d = Daemon::start(Options::default());
    let dump = page(
        d.dir.path(),
        "env.jl",
        r#"
        print("Content-Type: text/plain\r\n\r\n")
        for k in sort(collect(keys(ENV)))
            println(k, "=", ENV[k])
        end
        println("cwd=", pwd())
        println("body=", String(read(stdin)))
        "#,
    );
    let mut first = Request::post(&dump, "text/plain", b"first body".to_vec());
    first.param("X_ONLY_FIRST", "1");
    let body = fcgi::request(&d.addr, &first).body_text();
    assert!(body.contains("X_ONLY_FIRST=1"), "{body}");
    assert!(body.contains("REQUEST_METHOD=POST"), "{body}");
    assert!(body.contains("body=first body"), "{body}");
    // The worker's own environment is not visible to pages.
    assert!(!body.contains("JULIA_FCGI_"), "{body}");
    assert!(!body.contains("HOME="), "{body}");
    let cwd = std::fs::canonicalize(d.dir.path()).unwrap();
    assert!(body.contains(&format!("cwd={}", cwd.display())), "{body}");

    let second = fcgi::get(&d.addr, &dump, "a=b").body_text();
    assert!(
        !second.contains("X_ONLY_FIRST"),
        "leaked from the previous request: {second}"
    );
    assert!(second.contains("QUERY_STRING=a=b"), "{second}");
    assert!(second.contains("body=\n"), "{second}");
}

#[test]
fn workers_get_one_thread_unless_the_operator_asks_for_more() {
    let one = Daemon::start(Options::default());
    let two = Daemon::start(Options {
        env: vec![("JULIA_NUM_THREADS".into(), "2".into())],
        ..Options::default()
    });
    for (d, n) in [(&one, "1"), (&two, "2")] {
        let threads = page(
            d.dir.path(),
            "threads.jl",
            r#"print("Content-Type: text/plain\r\n\r\n", Threads.nthreads())"#,
        );
        assert_eq!(fcgi::get(&d.addr, &threads, "").body_text(), n);
    }
    for pid in one.worker_pids() {
        let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
        let env = String::from_utf8_lossy(&env);
        assert!(
            env.split('\0').any(|kv| kv == "JULIA_NUM_THREADS=1"),
            "worker {pid} environment: {env}"
        );
    }
}

#[test]
fn headers_status_and_default_content_type() {
    let d = Daemon::start(Options::default());
    let missing = page(
        d.dir.path(),
        "nf.jl",
        r#"print("Status: 404 Not Found\r\nContent-Type: text/plain\r\nX-Extra: yes\r\n\r\ngone")"#,
    );
    let resp = fcgi::get(&d.addr, &missing, "");
    assert_eq!(resp.status(), 404);
    assert_eq!(resp.header("X-Extra").as_deref(), Some("yes"));
    assert_eq!(resp.body_text(), "gone");

    let bare = page(
        d.dir.path(),
        "bare.jl",
        "println(\"X-A: 1\")\nprintln()\nprint(\"<p>hi</p>\")",
    );
    let resp = fcgi::get(&d.addr, &bare, "");
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.header("Content-Type").as_deref(),
        Some("text/html; charset=utf-8")
    );
    assert_eq!(resp.body_text(), "<p>hi</p>");

    // atexit hooks registered by the page run at the end of the request,
    // with their output still part of the response (CGI.jl-style flushing).
    let hooks = page(
        d.dir.path(),
        "hooks.jl",
        r#"atexit(() -> print(" and the hook")); print("Content-Type: text/plain\r\n\r\npage")"#,
    );
    assert_eq!(
        fcgi::get(&d.addr, &hooks, "").body_text(),
        "page and the hook"
    );
    // …once per request, not accumulated.
    assert_eq!(
        fcgi::get(&d.addr, &hooks, "").body_text(),
        "page and the hook"
    );
}

#[test]
fn missing_forbidden_and_outside_document_roots() {
    let root = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let d = Daemon::start(Options {
        config: Some(format!(
            "document_roots = [{:?}]\nlimit_extensions = [\".jl\", \".jlp\"]\n",
            root.path().display().to_string()
        )),
        ..Options::default()
    });
    let ok = page(
        root.path(),
        "ok.jl",
        r#"print("Content-Type: text/plain\r\n\r\nok")"#,
    );
    assert_eq!(fcgi::get(&d.addr, &ok, "").body_text(), "ok");
    let alt = page(
        root.path(),
        "alt.jlp",
        r#"print("Content-Type: text/plain\r\n\r\nalt")"#,
    );
    assert_eq!(fcgi::get(&d.addr, &alt, "").body_text(), "alt");

    // No SCRIPT_FILENAME, or no such file: 404.
    let mut req = Request::get(&ok, "");
    req.params.retain(|(k, _)| k != "SCRIPT_FILENAME");
    assert_eq!(fcgi::request(&d.addr, &req).status(), 404);
    let resp = fcgi::get(&d.addr, &root.path().join("nope.jl"), "");
    assert_eq!(resp.status(), 404);
    assert!(
        !resp.stderr.is_empty(),
        "nginx's error log should learn why"
    );

    // A directory, a wrong extension: 403.
    std::fs::create_dir(root.path().join("dir.jl")).unwrap();
    assert_eq!(
        fcgi::get(&d.addr, &root.path().join("dir.jl"), "").status(),
        403
    );
    let txt = page(root.path(), "secret.txt", "print(1)");
    assert_eq!(fcgi::get(&d.addr, &txt, "").status(), 403);

    // Outside the document root, directly, through `..` and through a symlink.
    let evil = page(
        outside.path(),
        "evil.jl",
        r#"print("Content-Type: text/plain\r\n\r\nevil")"#,
    );
    assert_eq!(fcgi::get(&d.addr, &evil, "").status(), 403);
    let dotdot = root.path().join("..").join(
        outside
            .path()
            .strip_prefix(root.path().parent().unwrap())
            .unwrap_or(outside.path()),
    );
    assert_eq!(
        fcgi::get(&d.addr, &dotdot.join("evil.jl"), "").status(),
        403
    );
    let link = root.path().join("link.jl");
    std::os::unix::fs::symlink(&evil, &link).unwrap();
    assert_eq!(fcgi::get(&d.addr, &link, "").status(), 403);
}

#[test]
fn a_throwing_page_is_a_500_and_the_worker_lives() {
    let d = Daemon::start(Options::default());
    let pids = d.worker_pids();
    let bad = page(
        d.dir.path(),
        "bad.jl",
        "function inner()\n    error(\"page failed on purpose\")\nend\nprint(\"Content-Type: text/plain\\r\\n\\r\\npartial\")\ninner()\n",
    );
    let mut req = Request::get(&bad, "x=1");
    req.param("REQUEST_URI", "/bad.jl?x=1");
    let resp = fcgi::request(&d.addr, &req);
    assert_eq!(resp.status(), 500);
    let body = resp.body_text();
    assert!(
        !body.contains("page failed on purpose"),
        "details leaked: {body}"
    );
    assert!(
        !body.contains("partial"),
        "the failed page's output must not be sent"
    );
    // One log entry with the exception, the URI and a backtrace with file:line.
    // The entry's last line carries its fields.
    d.wait_for_log("request_uri=\"/bad.jl?x=1\"", Duration::from_secs(10));
    let line = d.log_entry("page failed on purpose").unwrap();
    assert!(line.contains("/bad.jl?x=1"), "{line}");
    assert!(
        line.contains("bad.jl:2"),
        "backtrace with file:line expected: {line}"
    );

    // A syntax error is a 500 too.
    let broken = page(d.dir.path(), "broken.jl", "print(\"x\"\nfunction (");
    assert_eq!(fcgi::get(&d.addr, &broken, "").status(), 500);

    let ok = page(
        d.dir.path(),
        "ok.jl",
        r#"print("Content-Type: text/plain\r\n\r\nfine")"#,
    );
    assert_eq!(fcgi::get(&d.addr, &ok, "").body_text(), "fine");
    assert_eq!(d.worker_pids(), pids);
}

#[test]
fn development_mode_shows_the_exception() {
    let d = Daemon::start(Options {
        config: Some("development = true\n".into()),
        ..Options::default()
    });
    let bad = page(d.dir.path(), "bad.jl", "error(\"visible in development\")");
    let resp = fcgi::get(&d.addr, &bad, "");
    assert_eq!(resp.status(), 500);
    assert!(resp.body_text().contains("visible in development"));
}

#[test]
fn edited_pages_are_picked_up_and_handlers_keep_their_state() {
    let d = Daemon::start(Options::default());
    let p = page(
        d.dir.path(),
        "v.jl",
        r#"print("Content-Type: text/plain\r\n\r\nversion 1")"#,
    );
    assert_eq!(fcgi::get(&d.addr, &p, "").body_text(), "version 1");
    assert_eq!(fcgi::get(&d.addr, &p, "").body_text(), "version 1");
    // Same size, new content: the mtime (and inode) tell.
    std::thread::sleep(Duration::from_millis(20));
    page(
        d.dir.path(),
        "v.jl",
        r#"print("Content-Type: text/plain\r\n\r\nversion 2")"#,
    );
    assert_eq!(fcgi::get(&d.addr, &p, "").body_text(), "version 2");

    // A handler page: top level once per worker, handle() per request.
    let h = page(
        d.dir.path(),
        "h.jl",
        r#"
        const LOADS = Ref(0)
        LOADS[] += 1
        const HITS = Ref(0)
        function handle()
            HITS[] += 1
            print("Content-Type: text/plain\r\n\r\n", LOADS[], " ", HITS[], " ", ENV["QUERY_STRING"])
        end
        "#,
    );
    assert_eq!(fcgi::get(&d.addr, &h, "a").body_text(), "1 1 a");
    assert_eq!(fcgi::get(&d.addr, &h, "b").body_text(), "1 2 b");
    assert_eq!(fcgi::get(&d.addr, &h, "c").body_text(), "1 3 c");
}

#[test]
fn a_page_calling_exit_is_answered_and_its_worker_replaced() {
    let d = Daemon::start(Options::default());
    let before = d.worker_pids();
    assert_eq!(before.len(), 1);
    let p = page(
        d.dir.path(),
        "bye.jl",
        r#"print("Content-Type: text/plain\r\n\r\ngoodbye"); exit(3)"#,
    );
    let mark = d.log_len();
    let resp = fcgi::get(&d.addr, &p, "");
    assert_eq!(resp.body_text(), "goodbye");
    let after = d.wait_for_new_workers(1, &before, Duration::from_secs(120));
    d.wait_for_log_after(mark, "worker ready", Duration::from_secs(120));
    let ok = page(
        d.dir.path(),
        "ok.jl",
        r#"print("Content-Type: text/plain\r\n\r\nstill here")"#,
    );
    assert_eq!(fcgi::get(&d.addr, &ok, "").body_text(), "still here");
    assert_ne!(before, after);
    assert!(
        !d.log_text().contains("worker died"),
        "exit() is planned, not a crash:\n{}",
        d.log_text()
    );
}
